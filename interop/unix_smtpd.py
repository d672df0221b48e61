#!/usr/bin/python3
"""An SMTP server on a Unix socket, for `blackpony inbound --backend unix:PATH`: aiosmtpd
(Debian's python3-aiosmtpd, hence /usr/bin/python3), every message it accepts written to
OUT/msg-<n>.eml as received (trace headers included), answered `250 2.0.0 Ok: queued as
UNIX<n>`. Prints `listening on PATH` when ready; stops on SIGTERM.

    /usr/bin/python3 interop/unix_smtpd.py --socket PATH --dir OUT
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
import threading

from aiosmtpd.controller import UnixSocketController

COUNTER = itertools.count(1)


class Store:
    def __init__(self, out: str):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        n = next(COUNTER)
        path = os.path.join(self.out, f"msg-{n}.eml")
        with open(path + ".tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        os.replace(path + ".tmp", path)
        return f"250 2.0.0 Ok: queued as UNIX{n}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--dir", required=True)
    opts = ap.parse_args()
    os.makedirs(opts.dir, exist_ok=True)
    controller = UnixSocketController(Store(opts.dir), unix_socket=opts.socket)
    controller.start()
    print(f"listening on {opts.socket}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
