"""MX session reuse in the LMTP modes (`blackpony outbound --protocol lmtp`, the mode the
README recommends for Postfix, and `blackpony lmtp`), against the private Postfix MX of the
fake internet (interop/peers.py FakeInternet, described in interop/test_outbound.py).

Like Postfix's own connection cache and blackpony's SMTP proxy mode: a delivery to a domain
that had one within 2 s goes over the same MX session (RSET, then the next transaction), the
MX sees one connection for N messages, every recipient still gets the MX's own reply, and a
kept session that the MX closed meanwhile is found at its RSET and replaced by a new one, with
every message delivered exactly once.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import time

from interop.clients import PipeLMTP, dot_stuff, token
from interop.conftest import owned_dir
from interop.peers import REFUSED_LOCALPART, REFUSED_REPLY, blackpony_bin, wait_for
from interop.test_outbound import SENDER, arrived, crlf, make_message

def connects(postfix) -> int:
    return postfix.log_text().count(": connect from ")


def lmtp_send(bp, rcpts: list[str], message: bytes) -> list[tuple[int, str]]:
    """One LMTP transaction on a new connection to blackpony; the replies after DATA, one
    per recipient the RCPT stage accepted (RFC 2033 §4.2)."""
    with smtplib.LMTP(bp.host, bp.port, local_hostname="client.test", timeout=60) as c:
        assert c.ehlo()[0] == 250
        assert c.mail(SENDER)[0] == 250
        for r in rcpts:
            assert c.rcpt(r)[0] == 250, r
        first = c.data(crlf(message))
        replies = [first] + [c.getreply() for _ in rcpts[1:]]
    return [(code, text.decode(errors="replace")) for code, text in replies]


def disconnect_line(postfix, after: int) -> str:
    """The disconnect line of the one session that connected after `after` connects."""
    def line():
        chunks = postfix.log_text().split(": connect from ")
        mine = chunks[after + 1:]
        if len(mine) != 1:
            return None
        m = re.search(r"disconnect from \S+ .*", mine[0])
        return m.group(0) if m else None
    return wait_for(line, 15, "the MX session's disconnect line (after QUIT, 2 s idle)")


def test_outbound_lmtp_one_mx_session_for_many_messages(internet, outbound_tcp):
    """Five messages from five LMTP connections: one MX connection, four RSETs, one QUIT
    (after the 2 s idle time), each message stored once with its own queue id."""
    bp = outbound_tcp
    tok = token()
    time.sleep(2.5)  # sessions kept by earlier tests have ended
    before = connects(internet.postfix)
    rcpts = [f"lreuse{i}-{tok}@plain.test" for i in range(5)]
    bodies = []
    for i, rcpt in enumerate(rcpts):
        message, body = make_message(f"{tok}{i}", [rcpt])
        bodies.append(body)
        [(code, text)] = lmtp_send(bp, [rcpt], message)
        assert code == 250, (code, text, bp.log_text()[-2000:])
    for rcpt, body in zip(rcpts, bodies):
        arrived(internet.postfix, rcpt, body)
    line = disconnect_line(internet.postfix, before)
    assert connects(internet.postfix) - before == 1, internet.postfix.log_text()[-3000:]
    assert " mail=5 " in line and " rset=4 " in line and " quit=1 " in line, line
    for rcpt in rcpts:
        assert len(internet.postfix.messages(rcpt)) == 1, rcpt


def test_reused_session_gives_each_recipient_its_own_reply(internet, outbound_tcp):
    """On a kept session, a transaction with a recipient the MX refuses: the LMTP client
    gets 250 for the others and the MX's own 550 for that one, in RCPT order."""
    bp = outbound_tcp
    tok = token()
    time.sleep(2.5)
    before = connects(internet.postfix)
    warm = f"lwarm-{tok}@plain.test"
    message, body = make_message(f"{tok}w", [warm])
    assert lmtp_send(bp, [warm], message)[0][0] == 250
    a, refused, b = (f"la-{tok}@plain.test", f"{REFUSED_LOCALPART}-{tok}@plain.test",
                     f"lb-{tok}@plain.test")
    message, body2 = make_message(tok, [a, refused, b])
    replies = lmtp_send(bp, [a, refused, b], message)
    context = f"\nreplies {replies}\nblackpony log:\n{bp.log_text()[-3000:]}"
    assert [c for c, _ in replies] == [250, 550, 250], context
    # Postfix's words around the policy's: "5.7.1 <rcpt>: Recipient address rejected: …".
    assert replies[1][1].startswith(f"5.7.1 <{refused}>: "), context
    assert replies[1][1].endswith(REFUSED_REPLY.split(" ", 2)[2]), context
    arrived(internet.postfix, warm, body)
    arrived(internet.postfix, a, body2)
    arrived(internet.postfix, b, body2)
    assert internet.postfix.messages(refused) == []
    line = disconnect_line(internet.postfix, before)
    assert connects(internet.postfix) - before == 1, internet.postfix.log_text()[-3000:]
    assert " mail=2 " in line and " rset=1 " in line, line
    # blackpony's log: one line per recipient, the refusal with the MX's words.
    log = bp.log_text()
    assert re.search(rf"to=<{re.escape(refused)}> .* status=bounced \(550 5\.7\.1 ", log), log


def smtpd_pid_of_last_session(postfix) -> int:
    m = re.findall(r"postfix/smtpd\[(\d+)\]: connect from ", postfix.log_text())
    assert m, postfix.log_tail()
    return int(m[-1])


def test_session_closed_by_the_mx_is_redialled(internet, outbound_tcp):
    """The MX's smtpd serving the kept session dies between two deliveries: the next
    delivery finds the session dead at its RSET, opens a new one and delivers; each message
    is stored exactly once and the LMTP client only ever sees 250."""
    bp = outbound_tcp
    tok = token()
    time.sleep(2.5)
    before = connects(internet.postfix)
    first, second = f"lfirst-{tok}@plain.test", f"lsecond-{tok}@plain.test"
    message, body1 = make_message(f"{tok}1", [first])
    assert lmtp_send(bp, [first], message)[0][0] == 250
    arrived(internet.postfix, first, body1)
    assert connects(internet.postfix) - before == 1
    # The kept session's smtpd goes away (a crash, a restart, an idle timeout that closed
    # without a word): the connection is closed under blackpony's feet.
    pid = smtpd_pid_of_last_session(internet.postfix)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    message, body2 = make_message(f"{tok}2", [second])
    replies = lmtp_send(bp, [second], message)
    assert replies[0][0] == 250, (replies, bp.log_text()[-2000:])
    arrived(internet.postfix, second, body2)
    time.sleep(0.5)
    assert len(internet.postfix.messages(first)) == 1
    assert len(internet.postfix.messages(second)) == 1
    assert connects(internet.postfix) - before == 2, internet.postfix.log_text()[-3000:]
    log = bp.log_text()
    assert re.search(r"kept session unusable \(connection lost at RSET\); opening a new one",
                     log), log[-2000:]
    assert len([l for l in log.splitlines() if f"to=<{second}>" in l]) == 1, log[-2000:]


def test_lmtp_command_reuses_and_quits(internet, workdir):
    """`blackpony lmtp` on standard input/output: three transactions in one LMTP session go
    over one MX session, which is closed with QUIT when the MTA's session ends."""
    tok = token()
    time.sleep(2.5)
    before = connects(internet.postfix)
    state = owned_dir(workdir / f"state-{tok}")
    c = PipeLMTP([blackpony_bin(), "lmtp", *internet.outbound_args(state)])
    rcpts = [f"lstdio{i}-{tok}@plain.test" for i in range(3)]
    bodies = []
    try:
        assert c.reply().code == 220
        assert c.cmd("LHLO client.test").code == 250
        for i, r in enumerate(rcpts):
            message, body = make_message(f"{tok}{i}", [r])
            bodies.append(body)
            assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
            assert c.cmd(f"RCPT TO:<{r}>").code == 250
            assert c.cmd("DATA").code == 354
            c.send(dot_stuff(message))
            reply = c.reply()
            assert reply is not None and reply.code == 250, reply
        assert c.cmd("QUIT").code == 221
    finally:
        code = c.close()
    assert code == 0, c.stderr.decode(errors="replace")
    for r, body in zip(rcpts, bodies):
        arrived(internet.postfix, r, body)
    line = disconnect_line(internet.postfix, before)
    assert connects(internet.postfix) - before == 1, internet.postfix.log_text()[-3000:]
    assert " mail=3 " in line and " rset=2 " in line and " quit=1 " in line, line


def tls_report_sessions(workdir, domain: str) -> list[dict]:
    """The TLS report records (RFC 8460) outbound_tcp has for domain today (UTC)."""
    import datetime
    import json
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    path = workdir / "state-outbound-tcp" / "tlsrpt" / domain / day
    try:
        return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    except FileNotFoundError:
        return []


def test_reused_session_is_one_tls_report_session(internet, outbound_tcp, workdir):
    """RFC 8460 counts negotiated TLS sessions: four messages over one kept MX session (one
    STARTTLS) are one `success` record in the state directory, not four (the decision in
    docs/manual/tlsrpt.md)."""
    bp = outbound_tcp
    tok = token()
    time.sleep(2.5)
    before = connects(internet.postfix)
    records = len(tls_report_sessions(workdir, "tls.test"))
    rcpts = [f"rptreuse{i}-{tok}@tls.test" for i in range(4)]
    for i, rcpt in enumerate(rcpts):
        message, body = make_message(f"{tok}{i}", [rcpt])
        [(code, text)] = lmtp_send(bp, [rcpt], message)
        assert code == 250, (code, text, bp.log_text()[-2000:])
        arrived(internet.postfix, rcpt, body)
    line = disconnect_line(internet.postfix, before)
    assert connects(internet.postfix) - before == 1, internet.postfix.log_text()[-3000:]
    assert " mail=4 " in line and " starttls=1 " in line, line
    new = tls_report_sessions(workdir, "tls.test")[records:]
    assert [(r["policy-type"], r["result"]) for r in new] == [("no-policy-found", "success")], new
