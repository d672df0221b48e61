#!/usr/bin/env python3
"""A tiny UCSPI SMTP server for `blackpony inbound --identity exec` tests.

It speaks SMTP on stdin/stdout like qmail-smtpd under tcpserver: greeting, EHLO/HELO, MAIL,
RCPT, DATA (dot-unstuffed), RSET, NOOP, QUIT. Each process records its UCSPI environment in
<dir>/session-<pid>.json, and each message in <dir>/msg-<pid>-<n>.json together with that
environment. <dir> is argv[1], or $UCSPI_BACKEND_DIR.
"""

import json
import os
import sys
import time

ENV_KEYS = ("PROTO", "TCPREMOTEIP", "TCPREMOTEPORT", "TCPLOCALIP", "TCPLOCALPORT",
            "TCPLOCALHOST", "TCPREMOTEHOST", "SSL_PROTOCOL", "SSL_CIPHER", "BLACKPONY_TLS")


def main() -> int:
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("UCSPI_BACKEND_DIR")
    if not out_dir:
        sys.stderr.write("ucspi_backend: give the output directory as argv[1] "
                         "or UCSPI_BACKEND_DIR\n")
        return 111
    os.makedirs(out_dir, exist_ok=True)
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    pid = os.getpid()
    write_json(os.path.join(out_dir, f"session-{pid}.json"), {"pid": pid, "env": env})

    rd = sys.stdin.buffer
    wr = sys.stdout.buffer

    def reply(text: str):
        wr.write(text.encode() + b"\r\n")
        wr.flush()

    reply("220 ucspi.test ESMTP interop-ucspi-backend")
    helo = None
    mail_from = None
    rcpts: list[str] = []
    count = 0
    while True:
        line = rd.readline(4096)
        if not line:
            return 0
        cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
        verb = cmd.split(" ", 1)[0].upper()
        arg = cmd[len(verb):].strip()
        if verb == "EHLO":
            helo = arg
            reply("250-ucspi.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10240000")
        elif verb == "HELO":
            helo = arg
            reply("250 ucspi.test")
        elif verb == "MAIL":
            if helo is None:
                reply("503 5.5.1 Error: send HELO/EHLO first")
            else:
                mail_from = arg
                rcpts = []
                reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            if mail_from is None:
                reply("503 5.5.1 Error: need MAIL command")
            else:
                rcpts.append(arg)
                reply("250 2.1.5 Ok")
        elif verb == "DATA":
            if not rcpts:
                reply("503 5.5.1 Error: need RCPT command")
                continue
            reply("354 End data with <CR><LF>.<CR><LF>")
            body = bytearray()
            while True:
                dl = rd.readline(1 << 20)
                if not dl:
                    return 0
                if dl in (b".\r\n", b".\n"):
                    break
                if dl.startswith(b"."):
                    dl = dl[1:]
                body += dl
            count += 1
            write_json(os.path.join(out_dir, f"msg-{pid}-{count}.json"), {
                "pid": pid, "env": env, "helo": helo, "mail_from": mail_from,
                "rcpts": rcpts, "data": body.decode("utf-8", "replace"), "time": time.time(),
            })
            mail_from = None
            rcpts = []
            reply(f"250 2.0.0 Ok: queued as U{pid}N{count}")
        elif verb == "RSET":
            mail_from = None
            rcpts = []
            reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            reply("221 2.0.0 Bye")
            return 0
        else:
            reply("502 5.5.2 Error: command not recognized")


def write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.rename(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
