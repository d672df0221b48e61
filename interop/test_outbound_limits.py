"""`blackpony outbound` on the listener harness: its bound on message memory
(--max-message-memory) and its connection limit on a Unix socket, against the fake internet
(interop/peers.py FakeInternet, its recording MX mx.record.test).

- A message being received holds memory; another MTA connection that declares (SIZE=, RFC
  1870) more than is left gets 452 4.3.1 at RCPT and sends nothing; once the first message
  is delivered (its memory given back) the same message goes through.
- Deliveries are logged under the session that carried them (`session=ID to=<…> …`).
- On a Unix socket the same connection limit applies: 421 4.3.2, then closed.

(The memory bound in the middle of a message, 421 4.3.1, and the drain are in
tests/it/outbound.rs; the drain against a slow MX in test_outbound_drain.py.)
"""

from __future__ import annotations

import smtplib
import socket
import time

import pytest

from interop.clients import RawSMTP, reset_after_ehlo, token
from interop.conftest import owned_dir
from interop.peers import BlackponyOutbound, wait_for
from interop.test_outbound import SENDER

FULL = (452, b"4.3.1 Insufficient system storage, try again later")


def own_outbound(internet, workdir, protocol: str, *extra: str, unix: bool = False
                 ) -> BlackponyOutbound:
    name = f"limits-{protocol}-{token()}"
    state = owned_dir(workdir / f"state-{name}")
    bp = BlackponyOutbound(workdir / "logs", args=internet.outbound_args(state, *extra),
                           name=name, protocol=protocol,
                           unix_path=workdir / f"{name}.sock" if unix else None)
    return bp.start()


def lines(n: int) -> bytes:
    """n octets of message body, in lines of 100."""
    return b"".join(b"x" * 98 + b"\r\n" for _ in range(n // 100))


def test_a_declared_size_over_the_memory_left_is_452_until_memory_frees(internet, workdir):
    bp = own_outbound(internet, workdir, "smtp", "--max-message-memory", "100000")
    mx = internet.record
    tok = token()
    first, second = f"mem1-{tok}@record.test", f"mem2-{tok}@record.test"
    before = len(mx.messages())
    a = RawSMTP(bp.host, bp.port, source=None, timeout=30)
    b = None
    try:
        # A is in the middle of a message of 60 000 octets (the MX said 354 and waits).
        assert a.reply().code == 220
        assert a.cmd("EHLO mta.test").code == 250
        assert a.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert a.cmd(f"RCPT TO:<{first}>").code == 250
        assert a.cmd("DATA").code == 354
        a.send(f"Subject: memory {tok}\r\n\r\n".encode() + lines(60_000))
        time.sleep(0.5)
        # B declares 50 000 octets (smtplib sends SIZE= when offered): 40 000 are left.
        message = f"Subject: second {tok}\r\n\r\n".encode() + lines(50_000)
        b = smtplib.SMTP(bp.host, bp.port, timeout=30)
        b.ehlo("mta.test")
        assert b.has_extn("size"), b.esmtp_features
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            b.sendmail(SENDER, [second], message)
        assert refused.value.recipients == {second: FULL}, (refused.value, bp.log_text())
        bp.wait_log(r"session=\S+ refused=message-memory size=\d+ in-flight=\d+ "
                    r"max-message-memory=100000")
        # A's message ends and goes to the MX; its memory is given back.
        a.send(b".\r\n")
        r = a.reply()
        assert r is not None and r.code == 250, (r, bp.log_text())
        # Now B's fits.
        assert b.sendmail(SENDER, [second], message) == {}, bp.log_text()
        got = wait_for(lambda: [m for m in mx.messages()[before:]
                                if f"<{first}>" in m["rcpts"] or f"<{second}>" in m["rcpts"]]
                       if len(mx.messages()) - before >= 2 else None,
                       10, "both messages at the MX")
        assert sorted(len([m for m in got if f"<{r}>" in m["rcpts"]])
                      for r in (first, second)) == [1, 1], got
        # Each delivery is logged under the session that carried it. The
        # log is written by a thread of its own (a session never waits for
        # it), so the second line may follow the MX's count by a moment.
        log = wait_for(lambda: (lambda t: t if all(f"to=<{r}>" in t for r in (first, second))
                                else None)(bp.log_text()),
                       10, "both deliveries in the log")
        for rcpt in (first, second):
            sent = [l for l in log.splitlines() if f"to=<{rcpt}>" in l]
            assert len(sent) == 1 and " status=sent " in sent[0], log
            assert f": session=" in sent[0] and f" to=<{rcpt}>" in sent[0], sent[0]
    finally:
        a.sock.close()
        if b is not None:
            b.close()
        bp.stop()


def test_connection_limit_on_a_unix_socket(internet, workdir):
    bp = own_outbound(internet, workdir, "lmtp", "--max-connections", "1", unix=True)
    held = []

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(str(bp.unix_path))
        return s

    def first_line(s: socket.socket) -> bytes:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data

    def greeted():
        s = connect()
        if first_line(s).startswith(b"220 "):
            held.append(s)
            return True
        s.close()
        return None
    try:
        # (The start-up probe's session may still be ending: a slot frees within moments.)
        wait_for(greeted, 10, "a greeting below the limit")
        over = connect()
        assert first_line(over) == b"421 4.3.2 Too many connections, try again later\r\n"
        assert over.recv(4096) == b"", "the refused connection must be closed"
        over.close()
        bp.wait_log(r"refused=too-many-connections max-connections=1")
        bp.wait_log(r"session=\S+ connect client=local protocol=lmtp")
        held.pop().close()
        wait_for(greeted, 10, "a greeting once the slot was free")
        bp.wait_log(r"session=\S+ disconnect client=local end=client-closed ")
    finally:
        for s in held:
            s.close()
        bp.stop()


def test_a_reset_connection_is_logged_with_its_cause(internet, workdir):
    bp = own_outbound(internet, workdir, "smtp")
    try:
        reset_after_ehlo(bp.host, bp.port)
        bp.wait_log(r'session=\S+ client-error="connection reset by peer"')
        bp.wait_log(r"session=\S+ disconnect client=\S+ end=client-lost ")
    finally:
        bp.stop()
