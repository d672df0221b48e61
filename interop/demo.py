"""Try blackpony inbound: a private Postfix on loopback (PROXY v2), blackpony in front of it,
one message sent with swaks --tls through blackpony, and what came out the other side.

    python3 -m interop.demo [--bin target/release/blackpony] [--keep]

(scripts/demo.sh installs the dependencies, builds the release binary and runs this.)
Everything it starts is stopped when it ends, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys

from .clients import swaks, transcript
from .peers import (CLIENT_IP, Blackpony, Postfix, blackpony_received, make_temp_dir,
                    postfix_queue_id, require_tool)


def section(title: str):
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def _exit_on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", help="blackpony binary (default: $BLACKPONY_BIN or "
                    "target/release/blackpony)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if args.bin:
        os.environ["BLACKPONY_BIN"] = os.path.abspath(args.bin)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    for tool in ("postfix", "swaks", "script"):
        require_tool(tool)

    base = make_temp_dir("blackpony-demo-")
    (base / "postfix").mkdir()
    pf = Postfix(base / "postfix", proxy=True)
    bp = None
    to = "someone@example.test"
    try:
        section("private Postfix (smtpd_upstream_proxy_protocol = haproxy)")
        pf.start()
        print(f"postfix -c {pf.config_dir}: listening on 127.0.0.1:{pf.port}, "
              f"mail into {pf.maildir}")

        section("blackpony inbound")
        bp = Blackpony(base, backend=f"127.0.0.1:{pf.port}", identity="proxy-v2",
                       args=["--hostname", "mx.demo.test"], name="blackpony").start()
        print("$ " + " ".join(bp.command()))

        section(f"swaks --tls from {CLIENT_IP} through blackpony")
        res = swaks(bp.port, to, "--tls", "--helo", "client.demo.test",
                    body="Hello from the blackpony demo.")
        print(transcript(res))
        if res.returncode != 0:
            print("swaks failed", file=sys.stderr)
            return 1

        [(path, msg)] = pf.wait_messages(to, timeout=30)
        pf.wait_queue_empty()

        section("blackpony log")
        print(bp.log_text().rstrip())

        section("Postfix maillog (the client Postfix saw)")
        qid = postfix_queue_id(msg)
        for line in pf.log_text().splitlines():
            if (qid and qid in line) or "connect from" in line:
                print(line)

        section("delivered message")
        keep_note = "" if args.keep else " (removed when the demo ends; --keep keeps it)"
        print(f"mailbox file: {path}{keep_note}")
        print("top header lines:")
        trace = blackpony_received(msg)
        for line in msg.split(b"\n\n", 1)[0].split(b"\n")[:12]:
            print("  " + line.decode(errors="replace"))
        print("\nblackpony's trace header:\n  " + (trace.decode() if trace else "MISSING"))
        return 0 if trace else 1
    finally:
        if bp is not None:
            bp.stop()
        pf.stop()
        if args.keep:
            print(f"\nkept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
        print("\nstopped blackpony and the private Postfix.")


if __name__ == "__main__":
    sys.exit(main())
