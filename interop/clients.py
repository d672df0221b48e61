"""SMTP clients for the interop tests: swaks, smtp-source, openssl s_client, and a raw
socket client that sends exactly the bytes a test gives it."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import uuid
from typing import Optional

from .peers import CLIENT_IP, MAIL_DOMAIN, require_tool


def token() -> str:
    return uuid.uuid4().hex[:12]


def rcpt(prefix: str, tok: str) -> str:
    """A recipient address unique to one test (all of example.test lands in one Maildir,
    and tests find their messages by Delivered-To)."""
    return f"{prefix}-{tok}@{MAIL_DOMAIN}"


def run(cmd: list[str], timeout: float = 60, input: Optional[bytes] = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=input, capture_output=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)


def swaks(port: int, to: str, *extra: str, sender: str = "a@client.test",
          body: str = "hello", host: str = "127.0.0.1", source: Optional[str] = CLIENT_IP,
          timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [require_tool("swaks"), "--server", host, "--port", str(port),
           "--from", sender, "--to", to, "--body", body, "--timeout", "20",
           "--helo", "client.test"]
    if source:
        cmd += ["--local-interface", source]
    cmd += list(extra)
    return run(cmd, timeout=timeout)


def transcript(res: subprocess.CompletedProcess) -> str:
    return (f"$ {' '.join(map(str, res.args))}\nexit {res.returncode}\n"
            f"{res.stdout.decode(errors='replace')}{res.stderr.decode(errors='replace')}")


class Reply:
    def __init__(self, lines: list[bytes]):
        self.lines = lines
        self.code = int(lines[-1][:3]) if lines and lines[-1][:3].isdigit() else None

    @property
    def text(self) -> str:
        return "\n".join(l.decode(errors="replace") for l in self.lines)

    def __repr__(self):
        return f"Reply({self.text!r})"


class RawSMTP:
    """A raw SMTP client over a socket: send exact bytes, read replies one at a time."""

    def __init__(self, host: str, port: int, source: Optional[str] = CLIENT_IP,
                 timeout: float = 15):
        self.sock = socket.create_connection(
            (host, port), timeout=timeout,
            source_address=(source, 0) if source else None)
        self.buf = b""
        self.eof = False

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def read_line(self) -> Optional[bytes]:
        while b"\n" not in self.buf:
            if not self._fill():
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.rstrip(b"\r")

    def reply(self) -> Optional[Reply]:
        """The next (possibly multi-line) reply, or None at end of stream."""
        lines = []
        while True:
            line = self.read_line()
            if line is None:
                return Reply(lines) if lines else None
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return Reply(lines)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> Optional[Reply]:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply()

    def read_to_eof(self, limit: int = 1 << 20) -> bytes:
        """Everything until the server closes (bounded by the socket timeout)."""
        out = self.buf
        self.buf = b""
        while len(out) < limit:
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, ssl.SSLError):
                chunk = b""
            if not chunk:
                self.eof = True
                break
            out += chunk
        return out

    def starttls(self, server_hostname: str = "mx.interop.test") -> ssl.SSLSocket:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert not self.buf, f"bytes buffered before TLS: {self.buf!r}"
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unverified_tls_context() -> ssl.SSLContext:
    """blackpony's certificate is self-signed: encrypt, do not authenticate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class PipeLMTP:
    """An LMTP client for a server on a child's stdin/stdout (`blackpony lmtp`): send a
    command, read one (possibly multi-line) reply, every read bounded by timeout."""

    def __init__(self, cmd: list[str], timeout: float = 60):
        import queue
        import threading
        self.timeout = timeout
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.lines: "queue.Queue[Optional[bytes]]" = queue.Queue()
        self.stdout_lines: list[bytes] = []   # everything the server wrote on stdout
        self.stderr = b""

        def pump_stdout():
            for line in self.proc.stdout:
                self.stdout_lines.append(line)
                self.lines.put(line.rstrip(b"\r\n"))
            self.lines.put(None)

        def pump_stderr():
            self.stderr = self.proc.stderr.read()
        self._threads = [threading.Thread(target=pump_stdout, daemon=True),
                         threading.Thread(target=pump_stderr, daemon=True)]
        for t in self._threads:
            t.start()

    def reply(self) -> Optional[Reply]:
        import queue
        lines = []
        while True:
            try:
                line = self.lines.get(timeout=self.timeout)
            except queue.Empty:
                raise TimeoutError(f"no reply within {self.timeout}s; got so far {lines}")
            if line is None:
                return Reply(lines) if lines else None
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                return Reply(lines)

    def send(self, data: bytes):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def cmd(self, line: str) -> Optional[Reply]:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def close(self, timeout: float = 30) -> int:
        """Close stdin, wait for the exit status (killing the child if it hangs)."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        for t in self._threads:
            t.join(timeout=10)
        return code


def dot_stuff(message: bytes) -> bytes:
    """A message (any line ends) as SMTP/LMTP DATA: CRLF lines, dot-stuffed, ending in
    CRLF.CRLF."""
    lines = message.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n" for l in lines)
    return out + b".\r\n"


def reset_after_ehlo(host: str, port: int):
    """An SMTP client that says EHLO and MAIL, then resets the connection
    (SO_LINGER 0: the close sends RST), as a crashed or killed peer does."""
    s = socket.create_connection((host, port), timeout=10)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO reset.test\r\n")
        for _ in range(50):
            line = f.readline()
            assert line.startswith(b"250"), line
            if line.startswith(b"250 "):
                break
        s.sendall(b"MAIL FROM:<a@client.test>\r\n")
        assert f.readline().startswith(b"250")
        f.close()
    finally:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

