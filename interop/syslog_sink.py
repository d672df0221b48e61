"""A syslog socket for a test MTA that can only log through syslog(3) (sendmail): a Unix
datagram socket at --socket, every record appended as one line to --out. The MTA runs in a
mount namespace whose /dev/log points here (interop/sendmail_mta.py)."""

from __future__ import annotations

import argparse
import os
import socket


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(args.socket)
    # The MTA's delivery agents run as other users (sendmail's mailers as `mail`).
    os.chmod(args.socket, 0o666)
    print(f"listening on {args.socket}", flush=True)
    with open(args.out, "ab", buffering=0) as out:
        while True:
            record = s.recv(65536)
            out.write(record.rstrip(b"\0\r\n").replace(b"\n", b" ") + b"\n")


if __name__ == "__main__":
    main()
