#!/usr/bin/env python3
"""Misbehaving MX hosts for the outbound interop tests (interop/test_outbound.py).

    fake_mx.py --listen ADDR:PORT --mode broken-tls|inject|gated --dir OUT --cert C --key K

broken-tls  EHLO offers STARTTLS; STARTTLS is answered `220` and then garbage that is not a
            TLS ServerHello, and the connection is closed. A client that does not send
            STARTTLS gets an ordinary plaintext SMTP server that accepts mail.
inject      STARTTLS is answered by ONE write holding `220 ready` and an injected
            `250-evil` / `250 PIPELINING` (a man in the middle's response injection), then a
            real TLS handshake follows and the server goes on as an SMTP server inside TLS.
            Inside TLS, MAIL before a fresh EHLO is refused (503): a client that took the
            injected lines for its EHLO reply fails here.
gated       An ordinary SMTP server, except that the reply to MAIL waits (10 s at most)
            until another session sends MAIL too: sessions at MAIL pair up. The session
            record says "gate": "opened" or "timed out": a client that delivers two domains
            served here one after the other times out the gate.
record      An ordinary plaintext SMTP server (no STARTTLS) offering PIPELINING, 8BITMIME and
            SIZE 10240000, recording every command line and message as it came: what a
            client sent (MAIL parameters, folded lines) can be checked.
slow        As record, but the reply to the end of data comes --final-delay seconds late
            (the message record is written when the data is complete, with "replied": false,
            and rewritten with true once the 250 went out).
data-250    As record, but DATA is answered `250 2.0.0 Ok: queued as NOTHING` instead of 354
            (RFC 5321 §4.3.2 allows only 354, 4xx or 5xx there): whatever the client sends
            next is read as commands and recorded, so a client that sent its message anyway
            shows it in the session record's commands.
greet-554   Greets with `554 5.7.1 No SMTP service here` (RFC 5321 §3.1) and then answers
            QUIT with 221 and anything else with 503.

Every session is recorded in OUT/session-<n>.json (commands received, whether TLS was up
for each, how it ended); every accepted message in OUT/msg-<n>.json (envelope, TLS, the
dot-unstuffed data in latin-1). Prints `listening on ADDR:PORT` on stdout when ready.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import socket
import socketserver
import ssl
import sys
import threading
import time

COUNTER = itertools.count(1)
LOCK = threading.Lock()
# gated mode: the session waiting at MAIL for a partner, if any.
GATE = threading.Condition()
GATE_STATE: dict = {"waiter": None}


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def path_of(line: str) -> str:
    """The <path> of a MAIL FROM: or RCPT TO: command, brackets included."""
    m = re.search(r"<[^>]*>", line)
    return m.group(0) if m else line.split(":", 1)[-1].strip()


class Session(socketserver.StreamRequestHandler):
    timeout = 30

    def setup(self):
        super().setup()
        self.opts = self.server.opts  # type: ignore[attr-defined]
        with LOCK:
            self.n = next(COUNTER)
        self.tls = False
        self.mail_line = None
        self.record = {"n": self.n, "mode": self.opts.mode, "commands": [], "end": None}

    # -- I/O -------------------------------------------------------------------------------
    def send(self, data: bytes):
        self.wfile.write(data)
        self.wfile.flush()

    def reply(self, line: str):
        self.send(line.encode() + b"\r\n")

    def readline(self) -> bytes | None:
        line = self.rfile.readline(4096)
        return line or None

    def save(self):
        write_json(os.path.join(self.opts.dir, f"session-{self.n}.json"), self.record)

    # -- SMTP ------------------------------------------------------------------------------
    def handle(self):
        try:
            self.smtp()
        except (OSError, ssl.SSLError) as e:
            self.record["end"] = f"error: {e}"
        finally:
            self.save()

    def wait_at_gate(self):
        """Pairs this session with another one at MAIL (or gives up after 10 s)."""
        with GATE:
            waiter = GATE_STATE["waiter"]
            if waiter is not None:
                waiter["released"] = True
                GATE_STATE["waiter"] = None
                GATE.notify_all()
                self.record["gate"] = "opened"
                return
            me = {"released": False}
            GATE_STATE["waiter"] = me
            ok = GATE.wait_for(lambda: me["released"], timeout=10)
            if not ok:
                GATE_STATE["waiter"] = None
        self.record["gate"] = "opened" if ok else "timed out"

    def smtp(self):
        host = "fake-" + self.opts.mode + ".test"
        if self.opts.mode == "greet-554":
            self.reply("554 5.7.1 No SMTP service here")
            while (raw := self.readline()) is not None:
                line = raw.rstrip(b"\r\n").decode("latin-1")
                self.record["commands"].append({"tls": False, "line": line})
                if line.upper() == "QUIT":
                    self.reply("221 2.0.0 Bye")
                    self.record["end"] = "quit"
                    return
                self.reply("503 5.5.1 Error: no SMTP service")
            self.record["end"] = "client closed"
            return
        self.reply(f"220 {host} ESMTP interop fake MX ({self.opts.mode})")
        ehlo_seen = False
        mail_from = None
        rcpts: list[str] = []
        while True:
            raw = self.readline()
            if raw is None:
                self.record["end"] = "client closed"
                return
            line = raw.rstrip(b"\r\n").decode("latin-1")
            self.record["commands"].append({"tls": self.tls, "line": line})
            verb = line.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                ehlo_seen = True
                mail_from, rcpts = None, []
                if verb == "HELO":
                    self.reply(f"250 {host}")
                    continue
                caps = ["PIPELINING", "8BITMIME", "SIZE 10240000"]
                if not self.tls and self.opts.mode not in ("record", "slow", "data-250"):
                    caps.append("STARTTLS")
                lines = [host] + caps
                self.send(b"".join(
                    f"250{'-' if i < len(lines) - 1 else ' '}{l}\r\n".encode()
                    for i, l in enumerate(lines)))
            elif verb == "STARTTLS" and not self.tls:
                if self.opts.mode == "broken-tls":
                    # Not a ServerHello: a client's handshake must fail on this.
                    self.send(b"220 2.0.0 Ready to start TLS\r\n")
                    self.send(b"this is not TLS at all\r\n\x00\x01\x02garbage\r\n")
                    self.record["end"] = "broke the TLS handshake"
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                # inject: the 220 and the injected replies in one write, then real TLS.
                self.send(b"220 ready\r\n250-evil\r\n250 PIPELINING\r\n")
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(self.opts.cert, self.opts.key)
                tls_sock = ctx.wrap_socket(self.connection, server_side=True)
                self.connection = self.request = tls_sock
                self.rfile = tls_sock.makefile("rb")
                self.wfile = tls_sock.makefile("wb")
                self.tls = True
                self.record["tls_version"] = tls_sock.version()
                ehlo_seen = False
                mail_from, rcpts = None, []
            elif verb == "MAIL":
                if not ehlo_seen:
                    self.reply("503 5.5.1 Error: send EHLO first")
                    continue
                if self.opts.mode == "gated" and "gate" not in self.record:
                    self.wait_at_gate()
                mail_from, rcpts = path_of(line), []
                self.mail_line = line
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                if mail_from is None:
                    self.reply("503 5.5.1 Error: need MAIL command")
                    continue
                rcpts.append(path_of(line))
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                if not rcpts:
                    self.reply("503 5.5.1 Error: need RCPT command")
                    continue
                if self.opts.mode == "data-250":
                    self.reply("250 2.0.0 Ok: queued as NOTHING")
                    mail_from, rcpts = None, []
                    continue
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                data = bytearray()
                while True:
                    chunk = self.readline()
                    if chunk is None:
                        self.record["end"] = "client closed during DATA"
                        return
                    if chunk in (b".\r\n", b".\n"):
                        break
                    if chunk.startswith(b"."):
                        chunk = chunk[1:]
                    data += chunk
                with LOCK:
                    m = next(COUNTER)
                msg = {"session": self.n, "tls": self.tls, "from": mail_from, "rcpts": rcpts,
                       "mail": self.mail_line, "data": data.decode("latin-1")}
                path = os.path.join(self.opts.dir, f"msg-{m}.json")
                if self.opts.mode == "slow":
                    write_json(path, {**msg, "replied": False})
                    time.sleep(self.opts.final_delay)
                    msg["replied"] = True
                write_json(path, msg)
                self.reply(f"250 2.0.0 Ok: queued as FAKE{m}")
                mail_from, rcpts = None, []
            elif verb == "RSET":
                mail_from, rcpts = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == "NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                self.record["end"] = "quit"
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--mode", choices=("broken-tls", "inject", "gated", "record", "slow",
                                           "data-250", "greet-554"),
                    required=True)
    ap.add_argument("--final-delay", type=float, default=5.0,
                    help="slow mode: seconds before the reply to the end of data")
    ap.add_argument("--dir", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    opts = ap.parse_args()
    os.makedirs(opts.dir, exist_ok=True)
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
