"""`blackpony outbound` under SIGTERM and at its connection limit, against the fake internet
(interop/peers.py FakeInternet) and its slow MX (mx.slow.test, fake_mx.py slow: the 250 to
the end of data comes SLOW_MX_DELAY seconds late).

- A transaction whose message reached the MX when SIGTERM comes is finished: the MTA gets
  the MX's 250 and blackpony logs status=sent, then exits (never a failure reported for a
  message the remote accepted: the MTA would send it again).
- A transaction the MTA is still sending when SIGTERM comes is answered 421 4.3.2 and the
  MX never sees its end of data (the MTA's retry is no duplicate).
- --max-connections N: connection N+1 is greeted `421 4.3.2` and closed; a freed slot
  serves again.

Each test runs its own `blackpony outbound` (the module-wide ones must not be stopped).
"""

from __future__ import annotations

import smtplib
import threading
import time

import pytest

from interop.clients import RawSMTP, token
from interop.conftest import owned_dir
from interop.peers import SLOW_MX_DELAY, BlackponyOutbound, wait_for
from interop.test_outbound import SENDER, crlf, make_message


def own_outbound(internet, workdir, protocol: str, *extra: str) -> BlackponyOutbound:
    name = f"drain-{protocol}-{token()}"
    state = owned_dir(workdir / f"state-{name}")
    bp = BlackponyOutbound(workdir / "logs", args=internet.outbound_args(state, *extra),
                           name=name, protocol=protocol)
    return bp.start()


def new_records(fake, before: int, pred) -> list[dict]:
    return [m for m in fake.messages()[before:] if pred(m)]


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_sigterm_finishes_a_transaction_the_mx_has(internet, workdir, protocol):
    bp = own_outbound(internet, workdir, protocol)
    try:
        slow = internet.slow
        tok = token()
        rcpt = f"drain-{tok}@slow.test"
        message, _ = make_message(tok, [rcpt])
        before = len(slow.messages())
        result: dict = {}

        def mta():
            cls = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
            try:
                c = cls(bp.host, bp.port, timeout=60)
                result["refused"] = c.sendmail(SENDER, [rcpt], crlf(message))
                result["at"] = time.monotonic()
            except Exception as e:  # the assertion below shows it
                result["error"] = repr(e)
                return
            try:
                # The answer to QUIT may be the drain's 421: fine, the message is done.
                c.quit()
            except smtplib.SMTPException:
                c.close()
        t = threading.Thread(target=mta, daemon=True)
        t.start()
        # The MX has the whole message and sits on its reply.
        wait_for(lambda: new_records(slow, before, lambda m: f"<{rcpt}>" in m["rcpts"]), 20,
                 f"the slow MX to get the message for {rcpt}")
        term_at = time.monotonic()
        rc = bp.terminate(timeout=SLOW_MX_DELAY + 20)
        exited_at = time.monotonic()
        t.join(10)
        log = bp.log_text()
        assert "error" not in result and result.get("refused") == {}, (result, log)
        # It waited for the MX's reply, passed it on, and only then exited.
        assert result["at"] <= exited_at, (result, exited_at)
        assert exited_at - term_at >= SLOW_MX_DELAY / 2, (term_at, exited_at, log)
        assert rc == 0, log
        sent = [l for l in log.splitlines() if f"to=<{rcpt}>" in l]
        assert len(sent) == 1 and " status=sent (250 2.0.0 Ok: queued as FAKE" in sent[0], log
        [rec] = new_records(slow, before, lambda m: f"<{rcpt}>" in m["rcpts"])
        assert rec["replied"] is True, rec
        assert "shutdown: drained" in log, log
    finally:
        bp.stop()


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_sigterm_during_the_mtas_data_is_421_before_end_of_data(internet, workdir, protocol):
    bp = own_outbound(internet, workdir, protocol)
    try:
        slow = internet.slow
        tok = token()
        rcpt = f"cut-{tok}@slow.test"
        sessions, messages = len(slow.sessions()), len(slow.messages())
        c = RawSMTP(bp.host, bp.port, source=None, timeout=30)
        assert c.reply().code == 220
        assert c.cmd(f"{'LHLO' if protocol == 'lmtp' else 'EHLO'} client.test").code == 250
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        assert c.cmd(f"RCPT TO:<{rcpt}>").code == 250
        assert c.cmd("DATA").code == 354
        c.send(f"Subject: cut {tok}\r\n\r\nthe first half of the message\r\n".encode())
        time.sleep(0.5)
        rc = bp.terminate(timeout=15)
        reply = c.reply()
        assert reply is not None and reply.code == 421, reply
        assert reply.lines[-1].startswith(b"421 4.3.2 "), reply
        assert rc == 0, bp.log_text()
        if protocol == "smtp":
            # The MX was in DATA (the proxy passes DATA on) and lost the connection.
            ended = wait_for(lambda: [s for s in slow.sessions()[sessions:] if s["end"]] or None,
                             10, "the MX session to end")
            assert ended[0]["end"] == "client closed during DATA", ended
        time.sleep(0.5)
        assert len(slow.messages()) == messages, slow.messages()[messages:]
        assert f"to=<{rcpt}>" not in bp.log_text() or " status=sent" not in bp.log_text()
    finally:
        bp.stop()


def test_connection_limit(internet, workdir):
    bp = own_outbound(internet, workdir, "lmtp", "--max-connections", "2")
    clients = []

    def greeted():
        c = RawSMTP(bp.host, bp.port, source=None, timeout=10)
        r = c.reply()
        if r is not None and r.code == 220:
            clients.append(c)
            return True
        c.sock.close()
        return None
    try:
        # (The start-up probe's session may still be ending: a slot frees within moments.)
        for _ in range(2):
            wait_for(greeted, 10, "a greeting below the limit")
        over = RawSMTP(bp.host, bp.port, source=None, timeout=10)
        reply = over.reply()
        assert reply is not None and reply.lines == [b"421 4.3.2 Too many connections, try again later"], reply
        assert over.reply() is None, "the refused connection must be closed"
        # (The log is written by a background thread: wait for the line.)
        bp.wait_log(r"refused=too-many-connections max-connections=2")
        clients.pop().sock.close()
        # The freed slot serves again.
        wait_for(greeted, 10, "a greeting once a slot was free")
    finally:
        for c in clients:
            c.sock.close()
        bp.stop()
