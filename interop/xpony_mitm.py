#!/usr/bin/env python3
"""A man in the middle for the XPONY interop tests (interop/test_xpony.py): it sits between
an SMTP client (blackpony deliver) and a server (blackpony inbound), relays the plaintext
negotiation line by line, tampers with it as its mode says, and relays raw bytes from the
point where the session is encrypted (after STARTTLS's 220, or after XPONY's message 3).

    xpony_mitm.py --listen ADDR:PORT --upstream ADDR:PORT --mode-file FILE

The mode is read from FILE (one word) at every new connection, so a test can let a first
contact through (`pass`) and attack the next one:

pass             relay unchanged (still line by line up to the switch)
strip-xpony      remove the XPONY line from the server's EHLO reply (a downgrade)
strip-starttls   remove the STARTTLS line from the server's EHLO reply, keep XPONY (the
                 prologue the client hashes then differs from the server's)
inject-334       append `250 injected\\r\\n` to the server's `334 …` line, in the same write
                 (response injection towards the client)
inject-xpony     append `MAIL FROM:<evil@x>\\r\\n` to the client's XPONY line, in the same
                 write (command injection towards the server)

Every action is logged on stdout as `session N mode=M: …` (flushed at once), so a test can
check that the attack really happened. After an XPONY switch the proxy also reads the frame
lengths (proto-spec §5.1: u16be L, then L octets; it cannot decrypt them) and logs, when the
session ends, `frames c->s=L@K,… s->c=L,…`: each client frame's length L and the number K of
server frames relayed before it had arrived (a client's CLOSE after the server's 221 arrives
after the server's last-but-one frame). Prints `listening on ADDR:PORT` when ready.
"""

from __future__ import annotations

import argparse
import itertools
import socket
import socketserver
import sys
import threading

COUNTER = itertools.count(1)
LOCK = threading.Lock()
MODES = ("pass", "strip-xpony", "strip-starttls", "inject-334", "inject-xpony")
INJECTED_REPLY = b"250 injected\r\n"
INJECTED_COMMAND = b"MAIL FROM:<evil@x>\r\n"


def log(msg: str) -> None:
    with LOCK:
        print(msg, flush=True)


class Side:
    """One socket with a read buffer: whole lines for the plaintext part."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def readline(self) -> bytes:
        """One line with its LF, or what is left at EOF (b"" when nothing)."""
        while b"\n" not in self.buf:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def reply(self) -> bytes:
        """One (possibly multi-line) SMTP reply, its lines as received."""
        out = b""
        while True:
            line = self.readline()
            out += line
            if not line.endswith(b"\n") or line[3:4] != b"-":
                return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def take_buffer(self) -> bytes:
        data, self.buf = self.buf, b""
        return data


def reply_lines(reply: bytes) -> list[bytes]:
    return [l for l in reply.split(b"\n") if l]


def strip_keyword(reply: bytes, keyword: bytes) -> tuple[bytes, list[bytes]]:
    """The EHLO reply without the lines whose keyword is `keyword`, continuation marks
    (`250-` / `250 `) redone; and the removed lines."""
    lines = [l.rstrip(b"\r") for l in reply_lines(reply)]
    kept, removed = [lines[0]], []
    for l in lines[1:]:
        word = l[4:].split(b" ", 1)[0].upper()
        (removed if word == keyword else kept).append(l)
    out = b""
    for i, l in enumerate(kept):
        mark = b" " if i == len(kept) - 1 else b"-"
        out += l[:3] + mark + l[4:] + b"\r\n"
    return out, removed


class Frames:
    """Frame lengths of one direction of an XPONY channel, as octets pass."""

    def __init__(self):
        self.buf = b""
        self.lengths: list[int] = []
        self.after: list[int] = []   # for each frame: the other direction's count then

    def feed(self, data: bytes, other: "Frames | None" = None) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            n = int.from_bytes(self.buf[:2], "big")
            if len(self.buf) < 2 + n:
                break
            self.buf = self.buf[2 + n:]
            with LOCK:
                self.lengths.append(n)
                self.after.append(len(other.lengths) if other else 0)


def pump(src: socket.socket, dst: socket.socket, seen=None) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
            if seen:
                seen(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class Session(socketserver.BaseRequestHandler):
    def handle(self):
        opts = self.server.opts  # type: ignore[attr-defined]
        with LOCK:
            self.n = next(COUNTER)
        try:
            with open(opts.mode_file) as f:
                self.mode = f.read().strip()
        except OSError:
            self.mode = "pass"
        if self.mode not in MODES:
            self.mode = "pass"
        self.log(f"connect from {self.client_address[0]}")
        self.request.settimeout(60)
        host, port = opts.upstream.rsplit(":", 1)
        try:
            up = socket.create_connection((host, int(port)), timeout=60)
        except OSError as e:
            self.log(f"cannot reach upstream: {e}")
            return
        client, server = Side(self.request), Side(up)
        self.c2s, self.s2c = Frames(), Frames()
        self.xpony = False
        try:
            raw = self.negotiate(client, server)
            if raw:
                self.log("relaying raw bytes")
                leftover = server.take_buffer()
                if leftover:
                    client.send(leftover)
                c2s = s2c = None
                if self.xpony:
                    self.s2c.feed(leftover)
                    c2s = lambda d: self.c2s.feed(d, self.s2c)  # noqa: E731
                    s2c = self.s2c.feed
                t = threading.Thread(target=pump, args=(server.sock, client.sock, s2c),
                                     daemon=True)
                t.start()
                pump(client.sock, server.sock, c2s)
                t.join(60)
                if self.xpony:
                    with LOCK:
                        c = ",".join(f"{n}@{k}" for n, k in zip(self.c2s.lengths,
                                                                 self.c2s.after))
                        s = ",".join(str(n) for n in self.s2c.lengths)
                    self.log(f"frames c->s={c} s->c={s}")
        except OSError as e:
            self.log(f"error: {e}")
        finally:
            up.close()
            self.log("closed")

    def log(self, msg: str) -> None:
        log(f"session {self.n} mode={self.mode}: {msg}")

    def negotiate(self, client: Side, server: Side) -> bool:
        """The plaintext part, line by line. True when the rest is to be relayed raw (the
        session switched to TLS or XPONY frames, or left the negotiation), False when a
        side closed."""
        greeting = server.reply()
        if not greeting:
            return False
        client.send(greeting)
        while True:
            line = client.readline()
            if not line:
                self.log("client closed")
                return False
            verb = line.split(b" ", 1)[0].strip().upper()
            if verb == b"EHLO":
                server.send(line)
                reply = server.reply()
                for word, mode in ((b"XPONY", "strip-xpony"), (b"STARTTLS", "strip-starttls")):
                    if self.mode == mode and reply.startswith(b"250"):
                        reply, removed = strip_keyword(reply, word)
                        for r in removed:
                            self.log(f"stripped {r.decode(errors='replace')!r} from the EHLO reply")
                client.send(reply)
                if not reply:
                    return False
            elif verb == b"XPONY":
                if self.mode == "inject-xpony":
                    server.send(line + INJECTED_COMMAND)
                    self.log(f"injected {INJECTED_COMMAND!r} after the client's XPONY line")
                else:
                    server.send(line)
                reply = server.reply()
                if not reply.startswith(b"334 "):
                    self.log(f"server answered XPONY: {reply!r}")
                    client.send(reply)
                    if not reply:
                        return False
                    continue
                if self.mode == "inject-334":
                    client.send(reply + INJECTED_REPLY)
                    self.log(f"injected {INJECTED_REPLY!r} after the server's 334 line")
                else:
                    client.send(reply)
                m3 = client.readline()
                if not m3:
                    self.log("client closed after the 334 without writing anything")
                    return False
                self.log(f"client's line after the 334: {m3.strip()[:24]!r} "
                         f"({len(m3.strip())} octets)")
                # Message 3 and whatever followed it in the client's write (its first
                # frame) go on together, as they came.
                first = client.take_buffer()
                server.send(m3 + first)
                if m3.strip() != b"*":
                    self.xpony = True
                    self.c2s.feed(first, self.s2c)
                if m3.strip() == b"*":
                    self.log("client aborted XPONY")
                    reply = server.reply()
                    client.send(reply)
                    if not reply:
                        return False
                    continue
                self.log("relayed it and what followed; raw from here (frames, if the "
                         "server agrees)")
                return True
            elif verb == b"STARTTLS":
                server.send(line)
                reply = server.reply()
                client.send(reply)
                if reply.startswith(b"220"):
                    self.log("STARTTLS accepted; switched to TLS")
                    return True
                if not reply:
                    return False
            else:
                # Anything else (MAIL in plaintext, QUIT, …): relay the rest as it comes.
                self.log(f"client sent {line.strip()[:40]!r}")
                server.send(line + client.take_buffer())
                return True


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--mode-file", required=True)
    opts = ap.parse_args()
    host, port = opts.listen.rsplit(":", 1)
    server = Server((host, int(port)), Session)
    server.opts = opts  # type: ignore[attr-defined]
    print(f"listening on {host}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
