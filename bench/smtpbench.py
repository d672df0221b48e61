#!/usr/bin/env python3
"""Helpers for bench/inbound.sh and bench/outbound.sh (standard library
only; the load generator is smtpload.c).

  smtpbench.py ports N
      Print N free TCP ports on 127.0.0.1 (all bound at once, then released).

  smtpbench.py oneshot --n 200 --message FILE [--expect-stdout 2.0.0] -- CMD...
      Run CMD N times one after the other, each with FILE on stdin; print
      one JSON line: wall time, messages/s, the CPU time (user + system)
      the children used (getrusage), failures (exit status other than 0,
      or stdout not starting with the expected text) and the first few.

  smtpbench.py relay --sink-log FILE --expect N [--pids P,...] -- CMD...
      Run CMD (a load generator feeding an MTA) and wait until the
      smtp-sink whose `-c` output goes to FILE has counted N more messages;
      print one JSON line: seconds from the start of CMD until then, msgs/s,
      messages smtp-sink counted, CMD's exit status and output, CPU per
      message of PIDS and of the whole machine meanwhile.

  smtpbench.py sink-count [--sessions] FILE
      Print the message (or session) counter of an `smtp-sink -c` log.
      smtp-sink counts a session when it ends.

  smtpbench.py idle --addr 127.0.0.1:PORT --n 2000 --pids PID[,PID...] [--starttls]
      Sum VmRSS of PIDS, open N client connections that each read the 220
      greeting and then stay idle, wait, sum VmRSS again, check the
      connections are still open, print one JSON line, close them. With
      --starttls each connection first says EHLO, STARTTLS, completes the
      TLS handshake (no certificate check) and says EHLO again.
"""

import argparse
import json
import os
import re
import resource
import socket
import ssl
import subprocess
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


def starttls(c, tls):
    """EHLO, STARTTLS, the handshake, EHLO again; returns the TLS socket."""
    c.s.sendall(b"EHLO idle.test\r\n")
    code, lines = c.reply()
    if code != 250 or not any(l[4:].upper().startswith(b"STARTTLS") for l in lines):
        raise SmtpError("EHLO without STARTTLS: %r" % lines[:1])
    c.s.sendall(b"STARTTLS\r\n")
    code, lines = c.reply()
    if code != 220:
        raise SmtpError("STARTTLS %r" % lines[:1])
    s = tls.wrap_socket(c.s, server_hostname="bench.test")
    t = Conn(s)
    s.sendall(b"EHLO idle.test\r\n")
    code, lines = t.reply()
    if code != 250:
        raise SmtpError("EHLO after STARTTLS %r" % lines[:1])
    return s


def cmd_idle(a):
    tls = None
    if a.starttls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
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
            if tls is not None:
                s = starttls(c, tls)
            conns.append(s)
        except (OSError, SmtpError, ssl.SSLError) as e:
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
            # (a TLS socket cannot peek: peek at the TCP socket under it)
            raw = socket.socket(fileno=os.dup(s.fileno())) if tls else s
            try:
                d = raw.recv(200, socket.MSG_PEEK)
            finally:
                if tls:
                    raw.close()
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


# ---------------------------------------------------------------- cpu

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pid_ticks(pids):
    """user + system CPU ticks of PIDS so far (all threads, dead ones too)."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def proc_table():
    """{pid: (name, start time, own ticks, reaped children's ticks,
    read()/write() calls)} of every
    process now. A process that ends during a run loses its own figures,
    but its parent's reaped-children ticks gain its CPU when the parent
    waits for it (Postfix's master reaps its daemons), so the breakdown
    credits that CPU to the parent's name + "(children)"."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open("/proc/%d/stat" % pid) as f:
                raw = f.read()
            name = raw[raw.index("(") + 1:raw.rindex(")")]
            fields = raw.rsplit(")", 1)[1].split()
            ticks = int(fields[11]) + int(fields[12])
            cticks = int(fields[13]) + int(fields[14])
            start = int(fields[19])
            calls = 0
            with open("/proc/%d/io" % pid) as f:
                for line in f:
                    if line.startswith(("syscr:", "syscw:")):
                        calls += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
        table[pid] = (name, start, ticks, cticks, calls)
    return table


def breakdown(t0, t1, n):
    """CPU (us) and read()/write() calls per message, by program name,
    between two proc_table() snapshots; the busiest first. The call count
    is the kernel's syscr + syscw: read/write/readv/writev/sendfile on any
    file or socket, but not send/recv/sendmsg/recvmsg (blackpony's socket
    calls), so compare it between rows for one program only."""
    by = {}
    for pid, (name, start, ticks, cticks, calls) in t1.items():
        _, start0, ticks0, cticks0, calls0 = t0.get(pid, (name, start, 0, 0, 0))
        if start0 != start:   # the pid was reused
            ticks0, cticks0, calls0 = 0, 0, 0
        if name.startswith("kworker/"):   # renamed with its current work item
            name = "kworker"
        row = by.setdefault(name, [0, 0])
        row[0] += ticks - ticks0
        row[1] += calls - calls0
        if cticks > cticks0:
            by.setdefault(name + "(children)", [0, 0])[0] += cticks - cticks0
    rows = [(name, round(t * 1e6 / CLK_TCK / n), round(c / n, 1))
            for name, (t, c) in by.items() if t > 0 or c > 0]
    rows.sort(key=lambda r: -r[1])
    return [r for r in rows if r[1] > 0 or r[2] >= 1][:12]


def machine_ticks():
    """(busy, total) CPU ticks of the whole machine so far."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


# ---------------------------------------------------------------- oneshot

def cmd_oneshot(a):
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    expect = a.expect_stdout.encode() if a.expect_stdout else None
    failures = []
    ok = 0
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    for i in range(a.n):
        with open(a.message, "rb") as msg:
            try:
                p = subprocess.run(cmd, stdin=msg, capture_output=True, timeout=a.timeout)
                rc, out, err = p.returncode, p.stdout, p.stderr
            except subprocess.TimeoutExpired as e:
                rc, out, err = "timeout %gs" % a.timeout, e.stdout or b"", e.stderr or b""
        if rc == 0 and (expect is None or out.startswith(expect)):
            ok += 1
        else:
            failures.append({"n": i + 1, "exit": rc,
                             "stdout": out[:300].decode(errors="replace"),
                             "stderr": err[-600:].decode(errors="replace")})
    t1 = time.monotonic()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({
        "n": a.n, "ok": ok, "failed": len(failures),
        "secs": round(t1 - t0, 3),
        "rate": round(a.n / (t1 - t0), 1),
        "ms_per_msg": round((t1 - t0) * 1000 / a.n, 2),
        "cpu_us_per_msg": round(cpu * 1e6 / a.n),
        "first_failures": failures[:3],
    }))
    return 0 if not failures else 1


# ---------------------------------------------------------------- relay

COUNTERS_RE = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")


def sink_counters(path):
    """The last (sessions, messages) counters smtp-sink -c wrote to path."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 400))
            tail = f.read()
    except OSError:
        return 0, 0
    found = COUNTERS_RE.findall(tail)
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


def sink_count(path):
    """The last `mesg=N` counter smtp-sink -c wrote to path (0 if none yet)."""
    return sink_counters(path)[1]


def cmd_sink_count(a):
    sess, mesg = sink_counters(a.log)
    print(sess if a.sessions else mesg)


def cmd_relay(a):
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    pids = [int(p) for p in a.pids.split(",") if p]
    # Start from a quiet sink: its counter must not be moving.
    before = sink_count(a.sink_log)
    for _ in range(40):
        time.sleep(0.05)
        c = sink_count(a.sink_log)
        if c == before:
            break
        before = c
    p0 = proc_table() if a.breakdown else None
    c0 = pid_ticks(pids)
    m0 = machine_ticks()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    deadline = t0 + a.timeout
    got = 0
    t1 = None
    while True:
        got = sink_count(a.sink_log) - before
        now = time.monotonic()
        if got >= a.expect:
            t1 = now
            break
        if now > deadline:
            break
        time.sleep(0.01)
    c1 = pid_ticks(pids)
    m1 = machine_ticks()
    p1 = proc_table() if a.breakdown else None
    try:
        out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        rc = p.returncode
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
        rc = "timeout"
    secs = (t1 or time.monotonic()) - t0
    print(json.dumps({
        "expect": a.expect, "got": got, "complete": t1 is not None,
        "secs": round(secs, 3),
        "rate": round(a.expect / secs, 1) if t1 else 0,
        "source_exit": rc, "source_output": out[-300:].decode(errors="replace"),
        "pid_us_per_msg": round((c1 - c0) * 1e6 / CLK_TCK / a.expect),
        "machine_us_per_msg": round((m1[0] - m0[0]) * 1e6 / CLK_TCK / a.expect),
        "machine_busy_pct": round(100 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1])),
        "by_program": breakdown(p0, p1, a.expect) if a.breakdown else [],
    }))
    return 0 if t1 is not None and rc == 0 else 1


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
    si.add_argument("--starttls", action="store_true")
    so = sub.add_parser("oneshot")
    so.add_argument("--n", type=int, required=True)
    so.add_argument("--message", required=True)
    so.add_argument("--expect-stdout", default="")
    so.add_argument("--timeout", type=float, default=30)
    so.add_argument("command", nargs=argparse.REMAINDER)
    sr = sub.add_parser("relay")
    sr.add_argument("--sink-log", required=True)
    sr.add_argument("--expect", type=int, required=True)
    sr.add_argument("--pids", default="")
    sr.add_argument("--timeout", type=float, default=120)
    sr.add_argument("--breakdown", action="store_true",
                    help="also print CPU and syscalls per message by program")
    sr.add_argument("command", nargs=argparse.REMAINDER)
    sc = sub.add_parser("sink-count")
    sc.add_argument("--sessions", action="store_true")
    sc.add_argument("log")
    a = p.parse_args()
    return {"ports": cmd_ports, "idle": cmd_idle, "oneshot": cmd_oneshot,
            "relay": cmd_relay, "sink-count": cmd_sink_count}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
