#!/usr/bin/env python3
"""Helpers for bench/inbound.sh (standard library only; the load generator
is smtpload.c).

  smtpbench.py ports N
      Print N free TCP ports on 127.0.0.1 (all bound at once, then released).

  smtpbench.py idle --addr 127.0.0.1:PORT --n 2000 --pids PID[,PID...]
      Sum VmRSS of PIDS, open N client connections that each read the 220
      greeting and then stay idle, wait, sum VmRSS again, check the
      connections are still open, print one JSON line, close them.
"""

import argparse
import json
import socket
import sys
import time

CRLF = b"\r\n"


# ---------------------------------------------------------------- ports

def cmd_ports(a):
    socks = []
    for _ in range(a.n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


# ---------------------------------------------------------------- replies

class SmtpError(Exception):
    pass


class Conn:
    """Reads SMTP replies from a blocking socket."""

    def __init__(self, sock):
        self.s = sock
        self.buf = b""

    def reply(self):
        """Read one (possibly multi-line) reply: (code, [lines])."""
        lines = []
        start = 0
        while True:
            i = self.buf.find(CRLF, start)
            if i < 0:
                d = self.s.recv(65536)
                if not d:
                    raise SmtpError("connection closed by server")
                self.buf += d
                continue
            line = self.buf[start:i]
            start = i + 2
            lines.append(line)
            if line[3:4] != b"-":
                self.buf = self.buf[start:]
                try:
                    code = int(line[:3])
                except ValueError:
                    raise SmtpError("bad reply %r" % line)
                return code, lines


# ---------------------------------------------------------------- idle

def rss_kib(pids):
    total = 0
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def cmd_idle(a):
    host, _, port = a.addr.rpartition(":")
    addr = (host, int(port))
    pids = [int(p) for p in a.pids.split(",") if p]
    time.sleep(a.settle)
    before = rss_kib(pids)
    conns = []
    failed = []
    deadline = time.monotonic() + a.timeout
    for i in range(a.n):
        if time.monotonic() > deadline:
            failed.append("timeout after %d connections" % i)
            break
        try:
            s = socket.create_connection(addr, timeout=10)
            c = Conn(s)
            code, lines = c.reply()
            if code != 220:
                failed.append("greeting %r" % lines[:1])
                s.close()
                continue
            conns.append(s)
        except (OSError, SmtpError) as e:
            failed.append("%s: %s" % (type(e).__name__, e))
            if len(failed) > 20:
                break
    time.sleep(a.settle)
    after = rss_kib(pids)
    # Still open and silent? (A 421 or a close means the server gave up.)
    alive = 0
    for s in conns:
        s.setblocking(False)
        try:
            d = s.recv(200, socket.MSG_PEEK)
            if d and len(failed) < 20:
                failed.append("idle connection got %r" % d[:60])
        except BlockingIOError:
            alive += 1
        except OSError as e:
            if len(failed) < 20:
                failed.append("%s: %s" % (type(e).__name__, e))
    print(json.dumps({
        "opened": len(conns),
        "alive": alive,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_conn": round((after - before) / len(conns), 2) if conns else None,
        "errors": len(failed),
        "first_errors": failed[:3],
    }))
    for s in conns:
        s.close()
    return 0 if not failed and alive == a.n else 1


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("ports")
    sp.add_argument("n", type=int)
    si = sub.add_parser("idle")
    si.add_argument("--addr", required=True)
    si.add_argument("--n", type=int, default=2000)
    si.add_argument("--pids", required=True)
    si.add_argument("--settle", type=float, default=1.0)
    si.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()
    return {"ports": cmd_ports, "idle": cmd_idle}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
