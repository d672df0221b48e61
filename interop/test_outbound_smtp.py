"""`blackpony outbound --protocol smtp`: an SMTP server for an MTA's relayhost/smarthost that
proxies each transaction to the recipient domain's MX on the fake internet (interop/peers.py
FakeInternet, described in interop/test_outbound.py). Every RCPT, DATA and end of data is
answered with the remote MX's own reply (or a synthesized 4xx/5xx when DNS or the connection
fails); a recipient of a second domain in one transaction gets 452 4.5.3.

Clients: Python's smtplib and swaks (TCP and the Unix-socket listener), a raw pipelining
client, a real Postfix with `relayhost = [127.0.0.1]:PORT`, and Exim with a manualroute
router + smtp transport to 127.0.0.1::PORT.
"""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import time

import pytest

from interop.clients import RawSMTP, dot_stuff, swaks, token, transcript
from interop.peers import (NET_ADDR, REFUSED_LOCALPART, PeerError, header_block,
                           postfix_queue_id, require_tool, wait_for)
from interop.test_outbound import SENDER, arrived, body_of, crlf, make_message

ONE_DOMAIN = "4.5.3 One destination domain per transaction"
RELAY_SENDER = "relay@sender.test"
# What smtp-sink -r RCPT (mx.tempfail.test) answers to RCPT, after its 450.
SINK_REFUSAL = b"4.3.0 Error: command failed"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def bp_lines(bp, rcpt: str) -> list[str]:
    return [l for l in bp.log_text().splitlines() if f"to=<{rcpt}>" in l]


def bp_line(bp, rcpt: str, timeout: float = 10) -> str:
    """blackpony's one log line for rcpt (waits for it)."""
    lines = wait_for(lambda: bp_lines(bp, rcpt), timeout,
                     f"a blackpony log line for {rcpt}; log:\n{bp.log_text()}")
    assert len(lines) == 1, f"expected ONE log line for {rcpt}, got {lines!r}"
    return lines[0]


def check_sent_line(bp, internet, rcpt: str, host: str, addr: str, tls: bool,
                    final: str) -> str:
    """The log line of a recipient that was delivered: relay, TLS facts, the remote's reply."""
    line = bp_line(bp, rcpt)
    relay = f" relay={host}[{addr}]:{internet.smtp_port} "
    assert relay in line, f"expected {relay!r} in {line!r}"
    if tls:
        assert re.search(r" tls=TLSv1\.3/\S+ ", line), f"expected tls=TLSv1.3/… in {line!r}"
        assert " verified=no" in line and " level=encrypted " in line, line
    else:
        assert " tls=none " in line and " level=plaintext " in line, line
    assert f" dsn=2.0.0 status=sent ({final})" in line, (
        f"expected the MX's final reply {final!r} in {line!r}")
    return line


def queue_id_of(reply_text: str) -> str:
    m = re.search(r"queued as ([0-9A-Za-z]+)", reply_text)
    assert m, f"no 'queued as ID' in the end-of-data reply {reply_text!r}"
    return m.group(1)


def check_stored(internet, rcpt: str, body: bytes, queue_id: str, tls: bool) -> bytes:
    """The message reached the MX Postfix once, byte-identical, and it is the transaction
    whose end-of-data reply the client got (same queue id)."""
    stored = arrived(internet.postfix, rcpt, body)
    assert postfix_queue_id(stored) == queue_id, (
        f"{rcpt}: the MX stored queue id {postfix_queue_id(stored)!r}, the client was told "
        f"{queue_id!r}\n{header_block(stored).decode(errors='replace')}")
    headers = header_block(stored)
    if tls:
        assert b"with ESMTPS" in headers and b"(using TLSv1.3 with cipher" in headers, headers
    else:
        assert b"with ESMTP id" in headers and b"ESMTPS" not in headers, headers
    return stored


def not_delivered(internet, bp, rcpt: str):
    assert not internet.postfix.messages(rcpt), f"{rcpt} must not have been delivered"
    assert not [l for l in bp_lines(bp, rcpt) if " status=sent " in l], (
        f"blackpony logged {rcpt} as sent: {bp_lines(bp, rcpt)}")


def text(reply: tuple[int, bytes]) -> str:
    return reply[1].decode(errors="replace")


class UnixSMTP(smtplib.SMTP):
    """smtplib.SMTP over a Unix-domain stream socket (smtplib.LMTP can, SMTP cannot)."""

    def __init__(self, path: str, **kw):
        self._unix_path = path
        super().__init__(**kw)
        self.connect(path)

    def connect(self, host="localhost", port=0, source_address=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._unix_path)
        self.file = None
        code, msg = self.getreply()
        return code, msg


# --------------------------------------------------------------------------------------
# 1. smtplib, a raw pipelining client and swaks straight to blackpony
# --------------------------------------------------------------------------------------

def test_smtplib_transactions(internet, outbound_smtp_tcp):
    bp = outbound_smtp_tcp
    tok = token()
    ok1, ok2 = f"ok1-{tok}@tls.test", f"ok2-{tok}@tls.test"
    refused = f"{REFUSED_LOCALPART}-{tok}@tls.test"
    other = f"other-{tok}@plain.test"
    later = f"later-{tok}@tempfail.test"
    null = f"null-{tok}@nullmx.test"
    none = f"none-{tok}@nosuch.test"
    message, body = make_message(tok, [ok1, ok2, other])
    context = lambda: f"\nblackpony log:\n{bp.log_text()}\nMX maillog tail:\n" \
                      f"{internet.postfix.log_tail(20)}"

    with smtplib.SMTP(bp.host, bp.port, local_hostname="client.test", timeout=60) as s:
        code, _ = s.ehlo()
        assert code == 250
        for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes"):
            assert s.has_extn(ext), f"EHLO does not offer {ext}: {s.esmtp_features}"
        assert not s.has_extn("starttls"), s.esmtp_features

        # Transaction 1: two recipients at the TLS Postfix, one it refuses, one elsewhere.
        assert s.mail(SENDER)[0] == 250
        for r in (ok1, ok2):
            reply = s.rcpt(r)
            assert reply[0] == 250 and text(reply).startswith("2.1.5 "), (r, reply, context())
        reply = s.rcpt(refused)
        # The MX's own refusal, word for word (check_recipient_access in peers.py).
        assert reply[0] == 550, (reply, context())
        assert text(reply) == (f"5.7.1 <{refused}>: Recipient address rejected: refused by "
                               "the interop MX policy"), (reply, context())
        reply = s.rcpt(other)
        assert reply[0] == 452 and text(reply).startswith(ONE_DOMAIN), (reply, context())
        code, final = s.data(crlf(message))
        final = final.decode(errors="replace")
        assert code == 250 and final.startswith("2.0.0 Ok: queued as "), (code, final, context())
        qid = queue_id_of(final)

        # Transaction 2: smtp-sink answers 450 to RCPT; the client sees that 450.
        assert s.mail(SENDER)[0] == 250
        reply = s.rcpt(later)
        assert reply == (450, SINK_REFUSAL), (reply, context())
        assert s.rset()[0] == 250

        # Transaction 3: DNS failures synthesized by blackpony.
        assert s.mail(SENDER)[0] == 250
        reply = s.rcpt(null)
        assert reply[0] == 556 and text(reply).startswith("5.1.10 "), (reply, context())
        reply = s.rcpt(none)
        assert reply[0] == 550 and re.match(r"5\.1\.2 ", text(reply)), (reply, context())
        assert s.rset()[0] == 250

        # Transaction 4: the recipient that got 452, now on its own (plaintext MX).
        assert s.mail(SENDER)[0] == 250
        reply = s.rcpt(other)
        assert reply[0] == 250, (reply, context())
        code, final2 = s.data(crlf(message))
        final2 = final2.decode(errors="replace")
        assert code == 250 and final2.startswith("2.0.0 Ok: queued as "), (code, final2,
                                                                           context())
        qid2 = queue_id_of(final2)
        assert qid2 != qid

    # Both recipients of transaction 1 arrived once, byte for byte, as one MX transaction.
    for r in (ok1, ok2):
        check_stored(internet, r, body, qid, tls=True)
        check_sent_line(bp, internet, r, "mx.tls.test", NET_ADDR["tls"], True,
                        f"250 {final}")
    check_stored(internet, other, body, qid2, tls=False)
    check_sent_line(bp, internet, other, "mx.plain.test", NET_ADDR["plain"], False,
                    f"250 {final2}")
    for r in (refused, later, null, none):
        not_delivered(internet, bp, r)


def test_mx_session_reused_between_transactions(internet, outbound_smtp_tcp):
    """Like Postfix's connection cache: transactions to one domain in quick succession share
    one MX session (RSET between them), even from different MTA connections; the MX's log
    shows one connect for three messages, each delivered with its own queue id."""
    bp = outbound_smtp_tcp
    tok = token()
    rcpts = [f"reuse{i}-{tok}@plain.test" for i in range(3)]
    time.sleep(2.5)  # idle sessions of earlier tests have expired
    before = internet.postfix.log_text().count(": connect from ")
    ids = []
    for i, rcpt in enumerate(rcpts):
        message, _ = make_message(f"{tok}{i}", [rcpt])
        # A new MTA connection for the last one: the cache is the process's, not the
        # connection's.
        with smtplib.SMTP(bp.host, bp.port, local_hostname="client.test", timeout=60) as s:
            s.ehlo()
            assert s.mail(SENDER)[0] == 250
            reply = s.rcpt(rcpt)
            assert reply[0] == 250, (reply, bp.log_text()[-2000:])
            code, final = s.data(crlf(message))
            assert code == 250, (code, final, bp.log_text()[-2000:])
            ids.append(queue_id_of(final.decode()))
    for i, rcpt in enumerate(rcpts):
        internet.postfix.wait_messages(rcpt, timeout=30)
    assert len(set(ids)) == 3, ids
    log = internet.postfix.log_text()
    assert log.count(": connect from ") - before == 1, log[-3000:]
    # The idle session is closed with QUIT after 2 s: then smtpd logs its commands.
    disconnect = wait_for(
        lambda: re.search(r"disconnect from .* rset=2 .*quit=1",
                          internet.postfix.log_text().split(": connect from ")[-1]),
        15, "the MX session's disconnect line with two RSETs and a QUIT")
    assert " mail=3 " in disconnect.group(0), disconnect.group(0)


def test_raw_pipelined_replies_in_order(internet, outbound_smtp_tcp):
    """A client that pipelines (as Postfix and Exim do) gets one reply per command, in order,
    each from the right place: RCPTs and DATA from the MX, 452 for the second domain."""
    bp = outbound_smtp_tcp
    tok = token()
    a, b = f"pa-{tok}@tls.test", f"pb-{tok}@tls.test"
    other = f"pother-{tok}@plain.test"
    null = f"pnull-{tok}@nullmx.test"
    later = f"plater-{tok}@tempfail.test"
    message, body = make_message(tok, [a, b])
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        ehlo = c.cmd("EHLO client.test")
        assert ehlo.code == 250 and b"PIPELINING" in ehlo.text.encode(), ehlo
        c.send((f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{a}>\r\nRCPT TO:<{other}>\r\n"
                f"RCPT TO:<{b}>\r\nDATA\r\n").encode())
        replies = [c.reply() for _ in range(5)]
        got = [r.code if r else None for r in replies]
        assert got == [250, 250, 452, 250, 354], f"{replies}\nlog:\n{bp.log_text()}"
        assert replies[2].text.startswith(f"452 {ONE_DOMAIN}"), replies[2]
        c.send(dot_stuff(message))
        final = c.reply()
        assert final is not None and final.code == 250, f"{final}\nlog:\n{bp.log_text()}"
        qid = queue_id_of(final.text)
        # A second pipelined group: a null MX, a 450, DATA with no accepted recipient.
        c.send((f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{null}>\r\nRCPT TO:<{later}>\r\n"
                "DATA\r\nRSET\r\nQUIT\r\n").encode())
        replies = [c.reply() for _ in range(6)]
        got = [r.code if r else None for r in replies]
        assert got == [250, 556, 450, 554, 250, 221], f"{replies}\nlog:\n{bp.log_text()}"
    for r in (a, b):
        check_stored(internet, r, body, qid, tls=True)
        check_sent_line(bp, internet, r, "mx.tls.test", NET_ADDR["tls"], True,
                        final.text)
    for r in (other, null, later):
        not_delivered(internet, bp, r)


@pytest.mark.parametrize("first", ["tempfail", "refused"])
def test_refused_first_rcpt_does_not_bind_the_transaction(internet, outbound_smtp_tcp, first):
    """The MX refused the transaction's first recipient (450 from the sink, 550 from the
    Postfix policy): no recipient is accepted, so a RCPT for another domain must be tried
    there, not answered 452. Real MTAs cannot get such a recipient through otherwise: Exim
    treats a 452 with no 2xx/5xx before it as a plain deferral, and Postfix, which sorts
    recipients by domain and retries them together, meets the same 452 on every queue run for
    as long as the first domain keeps refusing (tests 2 and 3 below)."""
    bp = outbound_smtp_tcp
    tok = token()
    refused = {"tempfail": f"bind-{tok}@tempfail.test",
               "refused": f"{REFUSED_LOCALPART}-bind-{tok}@tls.test"}[first]
    ok = f"bind-ok-{tok}@plain.test"
    message, body = make_message(tok, [ok])
    with smtplib.SMTP(bp.host, bp.port, local_hostname="client.test", timeout=60) as s:
        assert s.ehlo()[0] == 250
        assert s.mail(SENDER)[0] == 250
        reply = s.rcpt(refused)
        assert reply[0] == {"tempfail": 450, "refused": 550}[first], (reply, bp.log_text())
        reply = s.rcpt(ok)
        assert reply[0] == 250, (
            f"RCPT TO:<{ok}> after the MX refused <{refused}> (nothing accepted in this "
            f"transaction): got {reply}, expected the plain.test MX's 250"
            f"\nblackpony log:\n{bp.log_text()}")
        code, final = s.data(crlf(message))
        final = final.decode(errors="replace")
        assert code == 250, (code, final)
    check_stored(internet, ok, body, queue_id_of(final), tls=False)
    not_delivered(internet, bp, refused)


def test_swaks(internet, outbound_smtp_tcp, workdir):
    bp = outbound_smtp_tcp
    tok = token()
    ok1, ok2 = f"sw1-{tok}@tls.test", f"sw2-{tok}@tls.test"
    message, body = make_message(tok, [ok1, ok2])
    data = workdir / f"swaks-{tok}.eml"
    # swaks ends the data with CRLF before the final dot even when the data already ends in
    # a line end (it sends "last\r\n\r\n.\r\n" for "last\n"): give it the message without
    # its last line end.
    assert message.endswith(b"\n")
    data.write_bytes(message[:-1])
    res = swaks(bp.port, f"{ok1},{ok2}", "--pipeline", "--data", f"@{data}")
    out = transcript(res)
    assert res.returncode == 0, out + f"\nblackpony log:\n{bp.log_text()}"
    m = re.search(r"<-  250 (2\.0\.0 Ok: queued as ([0-9A-Za-z]+))", out)
    assert m, out
    final, qid = m.group(1), m.group(2)
    for r in (ok1, ok2):
        check_stored(internet, r, body, qid, tls=True)
        check_sent_line(bp, internet, r, "mx.tls.test", NET_ADDR["tls"], True, f"250 {final}")

    # Failures reach swaks as the replies to RCPT.
    for rcpt, code, exit_code in ((f"sw-later-{tok}@tempfail.test", "450 ", 24),
                                  (f"sw-null-{tok}@nullmx.test", "556 5.1.10 ", 24),
                                  (f"sw-none-{tok}@nosuch.test", "550 5.1.2 ", 24)):
        res = swaks(bp.port, rcpt)
        out = transcript(res)
        assert res.returncode == exit_code, out
        assert f"<** {code}" in out, out
        not_delivered(internet, bp, rcpt)


# --------------------------------------------------------------------------------------
# 2. A real Postfix with relayhost = [127.0.0.1]:PORT
# --------------------------------------------------------------------------------------
#
# What Postfix 3.7 does with `452 4.5.3` to RCPT (observed here): it does NOT open a new
# transaction in the same delivery. It logs the recipient `status=deferred (... 452 4.5.3 ...)`
# and sends it again on the next queue run, in a new transaction (minimal_backoff_time,
# 300 s by default; `postqueue -f` stands in for that run below). Its qmgr sorts a message's
# recipients by domain, so in one delivery the first domain in that order gets through.

def submit_to_relay(pf, sender: str, rcpts: list[str], message: bytes):
    res = subprocess.run([require_tool("sendmail"), "-C", str(pf.config_dir), "-i",
                          "-f", sender, "--", *rcpts], input=message,
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res


def final_statuses(pf, rcpts: list[str], want_sent: list[str], runs: int = 2
                   ) -> dict[str, list[tuple[str, str]]]:
    """Wait for a first status of every recipient; then, while a recipient of want_sent is
    not sent, run the queue again (`postqueue -f`), at most `runs` times. Every status
    logged per recipient, in order."""
    for r in rcpts:
        try:
            pf.wait_delivery_status(r, timeout=60)
        except PeerError:
            pass
    for _ in range(runs):
        if all(any(st == "sent" for st, _ in pf.statuses(r)) for r in want_sent):
            break
        before = {r: len(pf.statuses(r)) for r in rcpts}
        res = pf.flush()
        assert res.returncode == 0, res
        # The retry logs one more status for each recipient still in the queue.
        waiting = [r for r in rcpts if pf.statuses(r) and pf.statuses(r)[-1][0] == "deferred"]
        try:
            wait_for(lambda: all(len(pf.statuses(r)) > before[r] for r in waiting), 30,
                     f"a new delivery attempt for {waiting}")
        except PeerError:
            break
    return {r: pf.statuses(r) for r in rcpts}


def show_statuses(statuses: dict) -> str:
    return "\n".join(f"{r}:\n" + "\n".join(f"    {l}" for _, l in lines)
                     for r, lines in statuses.items())


def test_postfix_relayhost_three_domains(pf_relay, outbound_smtp_tcp, internet):
    """One message to the TLS Postfix domain, the 450 sink domain and a null-MX domain:
    sent, deferred (the sink's 450), bounced (556 5.1.10), all with relay= blackpony. The
    recipient that gets 452 4.5.3 must get through in a later transaction: Postfix sends it
    again on its next queue run (see above), so the queue is run up to twice."""
    bp = outbound_smtp_tcp
    tok = token()
    ok = f"pf-ok-{tok}@tls.test"
    later = f"pf-later-{tok}@tempfail.test"
    null = f"pf-null-{tok}@nullmx.test"
    rcpts = [ok, later, null]
    message, body = make_message(tok, rcpts)
    submit_to_relay(pf_relay, RELAY_SENDER, rcpts, message)
    statuses = final_statuses(pf_relay, rcpts, want_sent=[ok])
    relay = f"relay={bp.host}[{bp.host}]:{bp.port},"
    context = (f"\nstatus lines of the sending Postfix:\n{show_statuses(statuses)}\n"
               f"blackpony log:\n{bp.log_text()}")
    expected = {ok: ("sent", " dsn=2.0.0, ", "(250 2.0.0 Ok: queued as "),
                later: ("deferred", " dsn=4.", " said: 450 "),
                null: ("bounced", " dsn=5.1.10, ", " said: 556 5.1.10 ")}
    for rcpt, (want, dsn, said) in expected.items():
        assert statuses[rcpt], f"{rcpt}: no status line at all" + context
        final, line = statuses[rcpt][-1]
        assert final == want, f"{rcpt}: last status={final}, expected {want}\n{line}" + context
        assert relay in line, f"{rcpt}: expected {relay!r}\n{line}" + context
        assert dsn in line and said in line, f"{rcpt}: expected {dsn!r}, {said!r}\n{line}" + context
    # The 450 is the sink's own reply (smtp-sink -r: "450 4.3.0 Error: command failed").
    assert "said: 450 4.3.0 Error: command failed" in statuses[later][-1][1], context
    qid = queue_id_of(statuses[ok][-1][1])
    check_stored(internet, ok, body, qid, tls=True)
    check_sent_line(bp, internet, ok, "mx.tls.test", NET_ADDR["tls"], True,
                    f"250 2.0.0 Ok: queued as {qid}")
    not_delivered(internet, bp, later)
    not_delivered(internet, bp, null)


def test_postfix_relayhost_452_next_queue_run(pf_relay, outbound_smtp_tcp, internet):
    """Three domains that all accept: Postfix delivers the rest of the 452'd recipients on
    later queue runs, the two recipients of one domain together in one MX transaction."""
    bp = outbound_smtp_tcp
    tok = token()
    a, b1, b2 = f"nq-a-{tok}@plain.test", f"nq-b1-{tok}@tls.test", f"nq-b2-{tok}@tls.test"
    c = f"nq-c-{tok}@implicit.test"
    rcpts = [a, b1, b2, c]
    message, body = make_message(tok, rcpts)
    submit_to_relay(pf_relay, RELAY_SENDER, rcpts, message)
    statuses = final_statuses(pf_relay, rcpts, want_sent=rcpts, runs=3)
    context = (f"\nstatus lines of the sending Postfix:\n{show_statuses(statuses)}\n"
               f"blackpony log:\n{bp.log_text()}")
    for r in rcpts:
        assert statuses[r] and statuses[r][-1][0] == "sent", f"{r} not sent" + context
        for st, line in statuses[r][:-1]:
            # Before that: only the 452 that sent it to a later transaction.
            assert st == "deferred" and "said: 452 4.5.3 One destination domain" in line, (
                f"{r}: {line}" + context)
    # First delivery: exactly one domain got through (Postfix does not open a new
    # transaction for the 452'd recipients in the same delivery).
    first_sent = {r.split("@")[1] for r in rcpts if statuses[r][0][0] == "sent"}
    assert len(first_sent) == 1, f"first delivery sent to {first_sent}" + context
    qids = {r: queue_id_of(statuses[r][-1][1]) for r in rcpts}
    assert qids[b1] == qids[b2] and len({qids[a], qids[b1], qids[c]}) == 3, qids
    for r in rcpts:
        check_stored(internet, r, body, qids[r], tls=r.endswith("@tls.test"))


def test_postfix_one_recipient_per_delivery(pf_relay, outbound_smtp_tcp, internet):
    """With `<transport>_destination_recipient_limit = 1` Postfix never meets the 452: every
    recipient is its own transaction, and the three outcomes come in one queue run."""
    from interop.conftest import SENDER_RELAY_SINGLE
    bp = outbound_smtp_tcp
    tok = token()
    ok = f"one-ok-{tok}@tls.test"
    later = f"one-later-{tok}@tempfail.test"
    null = f"one-null-{tok}@nullmx.test"
    rcpts = [ok, later, null]
    message, body = make_message(tok, rcpts)
    submit_to_relay(pf_relay, SENDER_RELAY_SINGLE, rcpts, message)
    lines = {r: pf_relay.wait_delivery_status(r, timeout=60) for r in rcpts}
    context = f"\n{lines}\nblackpony log:\n{bp.log_text()}"
    relay = f"relay={bp.host}[{bp.host}]:{bp.port},"
    for rcpt, want, said in ((ok, "sent", "(250 2.0.0 Ok: queued as "),
                             (later, "deferred", " said: 450 "),
                             (null, "bounced", " said: 556 5.1.10 ")):
        status, line = lines[rcpt]
        assert status == want and relay in line and said in line, f"{rcpt}: {line}" + context
        assert " postfix/bpsingle/smtp[" in line, f"{rcpt}: not the bpsingle transport: {line}"
    check_stored(internet, ok, body, queue_id_of(lines[ok][1]), tls=True)


# --------------------------------------------------------------------------------------
# 3. Exim with a manualroute router and the smtp transport to 127.0.0.1::PORT
# --------------------------------------------------------------------------------------
#
# Exim 4.96 (transports/smtp.c, sync_responses): a 452 to RCPT after at least one 2xx or 5xx
# RCPT reply in the same transaction means "too many recipients": the address is kept and
# sent in a new MAIL transaction on the same connection, in the same delivery. A 452 with
# no 2xx/5xx before it in the transaction is an ordinary temporary failure (==, retry later).

EXIM_MARK = {"sent": "=>", "deferred": "==", "bounced": "**"}


def exim_run(ex, bp, rcpts: list[str], message: bytes) -> str:
    """Submit from smtp@sender.test, wait for a result per recipient; the failure context."""
    res = ex.submit("smtp@sender.test", rcpts, message)
    try:
        wait_for(lambda: all(ex.result(r) for r in rcpts), 30,
                 f"Exim's mainlog to show a result for each of {rcpts}")
        timed_out = None
    except PeerError as e:
        timed_out = e
    context = (f"\n$ exim ... exit {res.returncode}\n{res.stdout!r}\n{res.stderr!r}\n"
               f"exim mainlog:\n{ex.mainlog()}\npaniclog:\n{ex.paniclog()}\n"
               f"blackpony log:\n{bp.log_text()}")
    assert timed_out is None, f"{timed_out}" + context
    return context


def test_exim_smarthost_three_domains(exim_smarthost, outbound_smtp_tcp, internet):
    ex, bp = exim_smarthost, outbound_smtp_tcp
    tok = token()
    ok = f"ex-ok-{tok}@tls.test"
    later = f"ex-later-{tok}@tempfail.test"
    null = f"ex-null-{tok}@nullmx.test"
    rcpts = [ok, later, null]
    message, body = make_message(tok, rcpts)
    context = exim_run(ex, bp, rcpts, message)
    expected = {ok: ("sent", 'C="250 2.0.0 Ok: queued as '),
                later: ("deferred", ": 450 4.3.0 Error: command failed"),
                null: ("bounced", ": 556 5.1.10 ")}
    host = f"H={bp.host} [{bp.host}]"
    for rcpt, (want, said) in expected.items():
        mark, line = ex.result(rcpt)
        assert mark == EXIM_MARK[want], f"{rcpt}: {line}\nexpected {EXIM_MARK[want]}" + context
        assert host in line and said in line, f"{rcpt}: expected {host!r}, {said!r}" + context
    _, line = ex.result(ok)
    qid = queue_id_of(line)
    check_stored(internet, ok, body, qid, tls=True)
    check_sent_line(bp, internet, ok, "mx.tls.test", NET_ADDR["tls"], True,
                    f"250 2.0.0 Ok: queued as {qid}")
    not_delivered(internet, bp, later)
    not_delivered(internet, bp, null)


def test_exim_452_new_transaction_same_delivery(exim_smarthost, outbound_smtp_tcp, internet):
    """Two domains that accept: one Exim delivery, two transactions through blackpony, both
    delivered (=>), each with its own MX queue id."""
    ex, bp = exim_smarthost, outbound_smtp_tcp
    tok = token()
    a, b = f"ex2-a-{tok}@tls.test", f"ex2-b-{tok}@plain.test"
    message, body = make_message(tok, [a, b])
    context = exim_run(ex, bp, [a, b], message)
    qids = {}
    for r in (a, b):
        mark, line = ex.result(r)
        assert mark == "=>", f"{r}: {line}" + context
        qids[r] = queue_id_of(line)
    assert qids[a] != qids[b], context
    check_stored(internet, a, body, qids[a], tls=True)
    check_stored(internet, b, body, qids[b], tls=False)


# --------------------------------------------------------------------------------------
# 4. The Unix-socket listener
# --------------------------------------------------------------------------------------

def test_unix_socket_smtplib(internet, outbound_smtp_unix):
    bp = outbound_smtp_unix
    tok = token()
    ok = f"ux-{tok}@tls.test"
    null = f"ux-null-{tok}@nullmx.test"
    message, body = make_message(tok, [ok])
    with UnixSMTP(str(bp.unix_path), local_hostname="client.test", timeout=60) as s:
        assert s.ehlo()[0] == 250
        assert s.mail(SENDER)[0] == 250
        reply = s.rcpt(ok)
        assert reply[0] == 250, (reply, bp.log_text())
        reply = s.rcpt(null)
        assert reply[0] == 452 and text(reply).startswith(ONE_DOMAIN), reply
        code, final = s.data(crlf(message))
        final = final.decode(errors="replace")
        assert code == 250, (code, final, bp.log_text())
        qid = queue_id_of(final)
        assert s.mail(SENDER)[0] == 250
        reply = s.rcpt(null)
        assert reply[0] == 556 and text(reply).startswith("5.1.10 "), reply
    check_stored(internet, ok, body, qid, tls=True)
    check_sent_line(bp, internet, ok, "mx.tls.test", NET_ADDR["tls"], True, f"250 {final}")


def test_unix_socket_swaks(internet, outbound_smtp_unix):
    bp = outbound_smtp_unix
    tok = token()
    ok = f"uxsw-{tok}@tls.test"
    res = subprocess.run([require_tool("swaks"), "--socket", str(bp.unix_path),
                          "--from", SENDER, "--to", ok, "--helo", "client.test",
                          "--body", f"token {tok}", "--timeout", "20"],
                         capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    out = transcript(res)
    assert res.returncode == 0, out + f"\nblackpony log:\n{bp.log_text()}"
    m = re.search(r"<-  250 (2\.0\.0 Ok: queued as ([0-9A-Za-z]+))", out)
    assert m, out
    internet.postfix.wait_messages(ok)
    [(_, stored)] = internet.postfix.messages(ok)
    assert postfix_queue_id(stored) == m.group(2)
    assert f"token {tok}".encode() in body_of(stored)
    check_sent_line(bp, internet, ok, "mx.tls.test", NET_ADDR["tls"], True,
                    f"250 {m.group(1)}")


# --------------------------------------------------------------------------------------
# NUL octets: the proxy never lets a message with NUL reach the end of data at the MX
# --------------------------------------------------------------------------------------

def test_proxy_refuses_nul_without_end_of_data(internet, outbound_smtp_tcp):
    from interop.test_outbound import NUL_BODIES, nul_message
    bp = outbound_smtp_tcp
    mx = internet.record
    tok = token()
    rcpt = f"nul-{tok}@record.test"
    sessions, messages = len(mx.sessions()), len(mx.messages())
    with smtplib.SMTP(bp.host, bp.port, timeout=60) as c:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail(RELAY_SENDER, [rcpt], nul_message(tok, rcpt, NUL_BODIES["before-dot"]))
        assert refused.value.smtp_code == 554, refused.value
        assert refused.value.smtp_error == b"5.6.0 Message contains NUL characters"
        # The MTA's session goes on.
        assert c.noop()[0] == 250
    # The MX said 354 and then lost the connection: no message, no end of data.
    new = wait_for(lambda: [s for s in mx.sessions()[sessions:] if s["end"]] or None, 10,
                   f"the MX session of {rcpt} to end")
    assert new[0]["end"] == "client closed during DATA", new
    assert [c["line"].split(" ")[0] for c in new[0]["commands"]][-1] == "DATA", new
    assert len(mx.messages()) == messages, mx.messages()[messages:]
    line = bp_line(bp, rcpt)
    assert " status=bounced (554 5.6.0 Message contains NUL characters)" in line, line


# --------------------------------------------------------------------------------------
# The proxy applies the rules of every mode (README "What every mode does"): lines over
# 998 octets folded, the MTA's SIZE= passed on (and checked against the MX's limit)
# --------------------------------------------------------------------------------------

def test_proxy_folds_long_lines_and_sends_size(internet, outbound_smtp_tcp):
    bp = outbound_smtp_tcp
    mx = internet.record
    tok = token()
    rcpt = f"long-{tok}@record.test"
    long_line = ("W" * 1500 + " " + "x" * 1500).encode()
    message = (f"From: <{RELAY_SENDER}>\r\nTo: <{rcpt}>\r\nSubject: long {tok}\r\n\r\n"
               ).encode() + long_line + b"\r\nlast line\r\n"
    before = len(mx.messages())
    with smtplib.SMTP(bp.host, bp.port, timeout=60) as c:
        c.ehlo("mta.test")
        assert c.has_extn("size"), c.esmtp_features
        # smtplib declares the size itself when the server offers SIZE.
        assert c.sendmail(RELAY_SENDER, [rcpt], message) == {}
    [got] = [m for m in mx.messages()[before:] if f"<{rcpt}>" in m["rcpts"]]
    assert re.search(rf"^MAIL FROM:<{re.escape(RELAY_SENDER)}> SIZE={len(message)}( |$)",
                     got["mail"], re.I), got["mail"]
    data = got["data"].encode("latin-1")
    lines = data.split(b"\r\n")
    assert max(len(l) for l in lines) <= 998, [len(l) for l in lines]
    # Folded with CRLF + space: unfolding gives the line back.
    assert long_line in data.replace(b"\r\n ", b""), data[:200]


def test_proxy_refuses_a_declared_size_over_the_mx_limit(internet, outbound_smtp_tcp):
    """mx.record.test offers SIZE 10240000: a bigger declared size is refused before MAIL
    reaches it, with the limit in the text."""
    bp = outbound_smtp_tcp
    mx = internet.record
    tok = token()
    rcpt = f"big-{tok}@record.test"
    sessions = len(mx.sessions())
    c = RawSMTP(bp.host, bp.port, source=None, timeout=30)
    try:
        assert c.reply().code == 220
        assert c.cmd("EHLO mta.test").code == 250
        assert c.cmd(f"MAIL FROM:<{RELAY_SENDER}> SIZE=20000000").code == 250
        reply = c.cmd(f"RCPT TO:<{rcpt}>")
        assert reply.code == 552 and b"5.3.4 " in reply.lines[-1] and b"10240000" in reply.lines[-1], reply
        c.cmd("QUIT")
    finally:
        c.sock.close()
    mails = [cmd for s in mx.sessions()[sessions:] for cmd in s["commands"]
             if cmd["line"].upper().startswith("MAIL")]
    assert not mails, mails
