"""blackpony's outbound side (`deliver`, `lmtp`, `outbound --protocol lmtp`) against a fake
internet on loopback (interop/peers.py FakeInternet): dnsmasq serving MX records for *.test,
each MX host on its own 127.0.10.x address and all on one SMTP port chosen at run time
(blackpony's --smtp-port):

  tls.test        MX mx.tls.test      -> private Postfix, STARTTLS (self-signed certificate)
  plain.test      MX mx.plain.test    -> the same Postfix, a listener without TLS
  implicit.test   no MX, an A record  -> the same Postfix (implicit MX)
  backup.test     MX 10 mx1 (nothing listens), MX 20 mx2 -> the same Postfix
  verified.test   MX mx.verified.test -> the same Postfix, STARTTLS, certificate from a test CA
  wrongname.test  MX mx.wrongname.test -> the same, certificate for other.test (same CA)
  tempfail.test   MX mx.tempfail.test -> smtp-sink -r RCPT (450 to every RCPT)
  brokentls.test  MX -> fake_mx.py broken-tls (220 to STARTTLS, then garbage)
  inject.test     MX -> fake_mx.py inject (220 + injected 250 lines, then real TLS)
  nullmx.test     null MX (RFC 7505)
  nosuch.test     does not exist (NXDOMAIN)

Then real MTAs use blackpony as their transport: a second private Postfix (pipe(8) with
`deliver`, lmtp:inet: and lmtp:unix: to `outbound`) and Exim (lmtp transport with `command`
and with `socket`).
"""

from __future__ import annotations

import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from interop.clients import PipeLMTP, dot_stuff, token
from interop.conftest import (SENDER_LMTP_INET, SENDER_LMTP_UNIX, SENDER_PIPE, owned_dir)
from interop.peers import (NET_ADDR, PeerError, blackpony_bin, header_block, require_tool, run_deliver,
                           wait_for)

SENDER = "sender@client.test"

# What must arrive byte for byte: dot lines (stuffed on the wire, unstuffed by the MX), a
# lone ".", trailing white space, a tab, a "From " line, and a line of 998 characters (the
# longest RFC 5321 allows).
BODY = (
    b"Token TOKEN: this body must arrive byte for byte.\n"
    b"\n"
    b".a line that starts with a dot\n"
    b"..two dots\n"
    b".\n"
    b"a line with trailing spaces   \n"
    b"\ttab-indented line\n"
    b"From the start of a line\n"
    + b"L" * 998 + b"\n"
    + b"last line\n"
)


def make_message(tok: str, to: list[str]) -> tuple[bytes, bytes]:
    """(whole message with LF line ends, its body)."""
    headers = (f"From: Interop <{SENDER}>\nTo: {', '.join(to)}\n"
               f"Subject: blackpony outbound {tok}\nMessage-ID: <{tok}@client.test>\n"
               "MIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n")
    body = BODY.replace(b"TOKEN", tok.encode())
    return headers.encode() + b"\n" + body, body


def body_of(stored: bytes) -> bytes:
    end = stored.find(b"\n\n")
    assert end >= 0, f"no header/body separator in {stored[:300]!r}"
    return stored[end + 2:]


def crlf(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def deliver(net, state: Path, rcpts: list[str], message: bytes, *extra: str,
            sender: str = SENDER) -> subprocess.CompletedProcess:
    return run_deliver(net.outbound_args(state, *extra) + ["-f", sender, "--", *rcpts],
                       message)


def show(res: subprocess.CompletedProcess) -> str:
    return (f"\n$ {' '.join(map(str, res.args))}\nexit {res.returncode}\n"
            f"stdout: {res.stdout.decode(errors='replace')}"
            f"stderr: {res.stderr.decode(errors='replace')}")


def status_line(res: subprocess.CompletedProcess) -> str:
    """blackpony deliver prints exactly one status line on stdout."""
    lines = res.stdout.decode(errors="replace").splitlines()
    assert len(lines) == 1, f"expected ONE status line on stdout, got {lines!r}" + show(res)
    return lines[0]


def log_line(res: subprocess.CompletedProcess, rcpt: str) -> str:
    lines = [l for l in res.stderr.decode(errors="replace").splitlines()
             if f"to=<{rcpt}>" in l]
    assert len(lines) == 1, f"expected one log line for {rcpt}, got {lines!r}" + show(res)
    return lines[0]


def arrived(pf, rcpt: str, body: bytes, timeout: float = 30) -> bytes:
    """Exactly one message for rcpt in the MX Postfix's Maildir, with the body unchanged."""
    pf.wait_messages(rcpt, timeout=timeout)
    got = pf.messages(rcpt)
    assert len(got) == 1, f"{len(got)} messages for {rcpt}: {[str(p) for p, _ in got]}"
    [(path, stored)] = got
    assert body_of(stored) == body, (
        f"body of {path} differs from what was sent:\n--- sent\n{body!r}\n--- stored\n"
        f"{body_of(stored)!r}")
    return stored


# --------------------------------------------------------------------------------------
# 1. blackpony deliver, one domain at a time
# --------------------------------------------------------------------------------------

# domain -> (MX host that must take the mail, its address, TLS expected)
DELIVERED = {
    "tls.test": ("mx.tls.test", NET_ADDR["tls"], True),
    "plain.test": ("mx.plain.test", NET_ADDR["plain"], False),
    "implicit.test": ("implicit.test", NET_ADDR["implicit"], False),
    "backup.test": ("mx2.backup.test", NET_ADDR["backup"], False),
}


@pytest.mark.parametrize("domain", list(DELIVERED))
def test_deliver_arrives_byte_identical(internet, workdir, domain):
    host, addr, tls = DELIVERED[domain]
    tok = token()
    rcpt = f"d-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message)
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
    line = log_line(res, rcpt)
    relay = f"relay={host}[{addr}]:{internet.smtp_port} "
    assert relay in line, f"expected {relay!r} in {line!r}"
    assert " dsn=2.0.0 status=sent (250 " in line, line
    stored = arrived(internet.postfix, rcpt, body)
    headers = header_block(stored)
    if tls:
        assert re.search(r" tls=TLSv1\.3/\S+ ", line), line
        assert " verified=no" in line and " level=encrypted " in line, line
        # The MX's own trace header agrees (smtpd_tls_received_header = yes).
        assert b"with ESMTPS" in headers and b"(using TLSv1.3 with cipher" in headers, headers
    else:
        assert " tls=none " in line and " level=plaintext " in line, line
        assert b"with ESMTP id" in headers and b"ESMTPS" not in headers, headers
    if domain == "backup.test":
        # The first MX (preference 10, nothing listening) was tried and skipped.
        dead = f"mx1.backup.test[{NET_ADDR['dead']}]:{internet.smtp_port} failed"
        assert dead in res.stderr.decode(), show(res)


def test_deliver_status_line_first_when_stderr_is_stdout(internet, workdir):
    """pipe(8) reads stdout and stderr as one stream and takes a leading enhanced status
    code as the verdict: the status line must come before any log line, even when log lines
    were written first (here the dead first MX of backup.test)."""
    tok = token()
    rcpt = f"merged-{tok}@backup.test"
    message, body = make_message(tok, [rcpt])
    state = owned_dir(workdir / f"state-{tok}")
    res = subprocess.run([blackpony_bin(), "deliver", *internet.outbound_args(state),
                          "-f", SENDER, "--", rcpt], input=message, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, timeout=60)
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, out
    lines = out.splitlines()
    assert lines and lines[0] == "2.0.0 delivered to 1 recipient", out
    assert any("mx1.backup.test" in l and "failed" in l for l in lines[1:]), out
    arrived(internet.postfix, rcpt, body)


# domain -> (exit status, status line prefix, remote/synthesized code, log status)
FAILED = {
    "tempfail.test": (75, "4.", "450", "deferred"),
    "nullmx.test": (68, "5.1.10 ", "556", "bounced"),
    "nosuch.test": (68, "5.1.2 ", "550", "bounced"),
    # Malformed address literals (RFC 5321 §4.1.3): a syntax error, not a host to look up.
    "[999.1.1.1]": (67, "5.1.3 ", "501", "bounced"),
    "[IPv6:zz]": (67, "5.1.3 ", "501", "bounced"),
    "[X-Foo:bar]": (67, "5.1.3 ", "501", "bounced"),
}


@pytest.mark.parametrize("domain", list(FAILED))
def test_deliver_failures_exit_status(internet, workdir, domain):
    want_exit, prefix, code, status = FAILED[domain]
    tok = token()
    rcpt = f"f-{tok}@{domain}"
    message, _ = make_message(tok, [rcpt])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message)
    assert res.returncode == want_exit, show(res)
    line = status_line(res)
    assert line.startswith(prefix), f"status line {line!r}, expected it to start {prefix!r}"
    assert rcpt in line and f": {code} " in line, line
    log = log_line(res, rcpt)
    assert f" status={status} ({code} " in log, log
    if domain == "tempfail.test":
        assert f"relay=mx.tempfail.test[{NET_ADDR['tempfail']}]" in log, log


def test_deliver_two_domains_one_message(internet, workdir):
    """One message to two working domains: both delivered once, exit 0."""
    tok = token()
    rcpts = [f"a-{tok}@tls.test", f"b-{tok}@plain.test"]
    message, body = make_message(tok, rcpts)
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), rcpts, message)
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 2 recipients", show(res)
    for r in rcpts:
        assert " status=sent " in log_line(res, r)
        arrived(internet.postfix, r, body)


def test_deliver_domains_side_by_side(internet, workdir):
    """The domains of one message are delivered at the same time, not one after another:
    gate1.test and gate2.test share fake_mx.py gated, which answers MAIL only once a second
    session has sent MAIL too (10 s at most). Delivered one after the other, the gate would
    time out; side by side, both sessions pass it."""
    tok = token()
    rcpts = [f"a-{tok}@gate1.test", f"b-{tok}@gate2.test"]
    message, _ = make_message(tok, rcpts)
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), rcpts, message)
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 2 recipients", show(res)

    def gated_sessions():
        mine = [s for s in internet.gated.sessions()
                if any(tok in c["line"] for c in s["commands"])]
        return mine if len(mine) == 2 else None
    sessions = wait_for(gated_sessions, 10, "two sessions recorded by the gated fake MX")
    assert [s.get("gate") for s in sessions] == ["opened", "opened"], sessions


def test_deliver_folds_over_long_lines(internet, workdir):
    """A body line over 998 octets (RFC 5321 §4.5.3.1.6) is broken with CRLF + space, as
    Postfix's smtp_line_length_limit does: the MX stores no line over the limit and
    nothing but the inserted line breaks differs."""
    tok = token()
    rcpt = f"long-{tok}@tls.test"
    long_line = b"".join(b"%04d " % i for i in range(600))  # 3000 octets
    message = (f"From: <{SENDER}>\nTo: <{rcpt}>\nSubject: long {tok}\n\n").encode() \
        + b"before\n" + long_line + b"\nafter\n"
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message)
    assert res.returncode == 0, show(res)
    internet.postfix.wait_messages(rcpt, timeout=30)
    [(_, stored)] = internet.postfix.messages(rcpt)
    stored = body_of(stored)
    assert max(len(l) for l in stored.split(b"\n")) <= 998, [len(l) for l in stored.split(b"\n")]
    assert stored.replace(b"\n ", b"") == b"before\n" + long_line + b"\nafter\n", stored[:200]


def test_deliver_downgrades_8bit_without_8bitmime(internet, workdir):
    """RFC 6152 §3: mx.seven.test (the Postfix, 8BITMIME not offered) gets an 8-bit MIME
    message as quoted-printable, without BODY=8BITMIME; decoded, the text is unchanged."""
    import email
    import email.policy
    tok = token()
    rcpt = f"seven-{tok}@seven.test"
    text = f"Token {tok}: caf\u00e9, na\u00efve, \u00fcber \u2014 8-bit text\n"
    message = (f"From: <{SENDER}>\nTo: <{rcpt}>\nSubject: 8bit {tok}\nMIME-Version: 1.0\n"
               "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
               + text).encode()
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message)
    assert res.returncode == 0, show(res)
    internet.postfix.wait_messages(rcpt, timeout=30)
    [(_, stored)] = internet.postfix.messages(rcpt)
    assert all(b < 0x80 for b in body_of(stored)), body_of(stored)
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable", stored[:600]
    assert parsed.get_content() == text, parsed.get_content()


def test_deliver_partial_tempfail_exits_75(internet, workdir):
    """One recipient delivered, one deferred: the MTA must retry (75), and the status line
    names the deferred one."""
    tok = token()
    ok, later = f"ok-{tok}@tls.test", f"later-{tok}@tempfail.test"
    message, body = make_message(tok, [ok, later])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [ok, later], message)
    assert res.returncode == 75, show(res)
    line = status_line(res)
    assert line.startswith("4.") and later in line, line
    assert " status=sent " in log_line(res, ok)
    assert " status=deferred " in log_line(res, later)
    arrived(internet.postfix, ok, body)


# --------------------------------------------------------------------------------------
# 2. A host that offers STARTTLS and breaks the handshake
# --------------------------------------------------------------------------------------

def new_sessions(fake, before: int, count: int = 1) -> list[dict]:
    """The sessions fake_mx recorded after the first `before` ones (waits for count)."""
    sessions = wait_for(lambda: (lambda s: s if len(s) >= before + count else None)(
        fake.sessions()), 10, f"{count} new session(s) on {fake.name}")
    return sessions[before:]


def verbs(session: dict, tls: bool | None = None) -> list[str]:
    return [c["line"].split(" ", 1)[0].upper() for c in session["commands"]
            if tls is None or c["tls"] == tls]


def test_broken_tls_defers_then_plaintext_after_backoff(internet, workdir):
    fake = internet.broken
    tok = token()
    rcpt = f"b-{tok}@brokentls.test"
    message, body = make_message(tok, [rcpt])
    state = owned_dir(workdir / f"state-{tok}")
    memo = state / "tls-failures" / "mx.brokentls.test"

    # First attempt: STARTTLS offered, handshake broken -> defer with 4.7.5, remember it.
    n = len(fake.sessions())
    res = deliver(internet, state, [rcpt], message)
    assert res.returncode == 75, show(res)
    assert status_line(res).startswith("4.7.5 "), show(res)
    assert memo.is_file(), f"no TLS-failure record {memo}" + show(res)
    [s] = new_sessions(fake, n)
    assert "STARTTLS" in verbs(s) and "MAIL" not in verbs(s), s

    # Within the backoff (default 300 s): TLS again, never plaintext.
    n = len(fake.sessions())
    res = deliver(internet, state, [rcpt], message)
    assert res.returncode == 75 and status_line(res).startswith("4.7.5 "), show(res)
    [s] = new_sessions(fake, n)
    assert "STARTTLS" in verbs(s) and "MAIL" not in verbs(s), s

    # Policy encrypt: even with the backoff over, never plaintext.
    n = len(fake.sessions())
    res = deliver(internet, state, [rcpt], message, "--tls-policy", "encrypt",
                  "--tls-backoff", "0")
    assert res.returncode == 75, show(res)
    assert status_line(res).startswith("4."), show(res)
    for s in new_sessions(fake, n):
        assert "MAIL" not in verbs(s), f"plaintext MAIL under --tls-policy encrypt: {s}"
    assert not [m for m in fake.messages() if f"<{rcpt}>" in m["rcpts"]]

    # Policy may, backoff over: plaintext, no STARTTLS, delivered.
    n = len(fake.sessions())
    res = deliver(internet, state, [rcpt], message, "--tls-backoff", "0")
    assert res.returncode == 0, show(res)
    assert status_line(res).startswith("2.0.0 "), show(res)
    line = log_line(res, rcpt)
    assert " tls=none " in line and " level=plaintext " in line and " status=sent " in line
    [s] = new_sessions(fake, n)
    assert "STARTTLS" not in verbs(s) and "MAIL" in verbs(s), s
    msgs = [m for m in fake.messages() if f"<{rcpt}>" in m["rcpts"]]
    assert len(msgs) == 1, msgs
    assert msgs[0]["tls"] is False
    data = msgs[0]["data"].encode("latin-1").replace(b"\r\n", b"\n")
    assert body_of(data) == body


# --------------------------------------------------------------------------------------
# 3. blackpony lmtp on standard input/output
# --------------------------------------------------------------------------------------

def lmtp_recipients(tok: str) -> list[tuple[str, int, str]]:
    """(recipient, expected reply code, expected enhanced status prefix), in RCPT order."""
    return [
        (f"ok-{tok}@tls.test", 250, "2."),
        (f"later-{tok}@tempfail.test", 450, "4."),
        (f"null-{tok}@nullmx.test", 556, "5.1.10"),
        (f"none-{tok}@nosuch.test", 550, "5.1.2"),
        (f"ok2-{tok}@plain.test", 250, "2."),
    ]


def check_lmtp_replies(replies: list[tuple[int, str]], expected, context: str):
    """replies: (code, text) after DATA, one per recipient, in RCPT order."""
    assert len(replies) == len(expected), f"{len(replies)} replies for {len(expected)}" + context
    for (rcpt, code, esc), (got_code, text) in zip(expected, replies):
        assert got_code == code, f"{rcpt}: got {got_code} {text!r}, expected {code}" + context
        # "4." is a class; "5.1.2" is a whole code (not a prefix of 5.1.20).
        want = re.escape(esc) + ("" if esc.endswith(".") else r"(?![0-9])")
        assert re.match(want, text), (
            f"{rcpt}: {got_code} {text!r}, expected enhanced code {esc}" + context)


def test_lmtp_stdio_one_reply_per_recipient(internet, workdir):
    tok = token()
    expected = lmtp_recipients(tok)
    rcpts = [r for r, _, _ in expected]
    message, body = make_message(tok, rcpts)
    state = owned_dir(workdir / f"state-{tok}")
    c = PipeLMTP([blackpony_bin(), "lmtp", *internet.outbound_args(state)])
    try:
        greeting = c.reply()
        assert greeting is not None and greeting.code == 220, greeting
        assert c.cmd("LHLO client.test").code == 250
        assert c.cmd(f"MAIL FROM:<{SENDER}>").code == 250
        for r in rcpts:
            reply = c.cmd(f"RCPT TO:<{r}>")
            assert reply.code == 250, f"RCPT {r}: {reply!r}"
        assert c.cmd("DATA").code == 354
        c.send(dot_stuff(message))
        replies = [c.reply() for _ in rcpts]
        quit_reply = c.cmd("QUIT")
    finally:
        code = c.close()
    context = (f"\nexit {code}\nstdout: {b''.join(c.stdout_lines)!r}\n"
               f"stderr: {c.stderr.decode(errors='replace')}")
    assert all(r is not None for r in replies), f"missing replies {replies}" + context
    check_lmtp_replies([(r.code, r.lines[-1][4:].decode(errors="replace")) for r in replies],
                       expected, context)
    assert quit_reply is not None and quit_reply.code == 221, context
    # stdout carries the protocol and nothing else (logs go to stderr).
    for line in c.stdout_lines:
        assert re.match(rb"^\d{3}[ -]", line), f"not an LMTP reply on stdout: {line!r}" + context
    assert code == 0, context
    for r, want, _ in expected:
        if want == 250:
            arrived(internet.postfix, r, body)


# --------------------------------------------------------------------------------------
# 4. blackpony outbound --protocol lmtp on TCP and on a Unix socket (smtplib.LMTP)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_outbound_lmtp_server(request, internet, kind):
    bp = request.getfixturevalue(f"outbound_{kind}")
    tok = token()
    expected = lmtp_recipients(tok)
    rcpts = [r for r, _, _ in expected]
    message, body = make_message(tok, rcpts)
    if kind == "tcp":
        lmtp = smtplib.LMTP(bp.host, bp.port, local_hostname="client.test", timeout=60)
    else:
        lmtp = smtplib.LMTP(str(bp.unix_path), local_hostname="client.test", timeout=60)
    try:
        code, _ = lmtp.ehlo()  # LHLO for smtplib.LMTP
        assert code == 250
        assert lmtp.mail(SENDER)[0] == 250
        for r in rcpts:
            assert lmtp.rcpt(r)[0] == 250, r
        # smtplib reads only the first reply after DATA; LMTP sends one per recipient.
        first = lmtp.data(crlf(message))
        replies = [first] + [lmtp.getreply() for _ in rcpts[1:]]
        lmtp.quit()
    finally:
        lmtp.close()
    check_lmtp_replies([(c, t.decode(errors="replace")) for c, t in replies], expected,
                       f"\nblackpony log:\n{bp.log_text()}")
    for r, want, _ in expected:
        if want == 250:
            arrived(internet.postfix, r, body)


# --------------------------------------------------------------------------------------
# 5. Response injection after STARTTLS
# --------------------------------------------------------------------------------------

def test_response_injection_after_starttls_is_discarded(internet, workdir):
    fake = internet.inject
    tok = token()
    rcpt = f"inj-{tok}@inject.test"
    message, body = make_message(tok, [rcpt])
    n = len(fake.sessions())
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message)
    assert res.returncode == 0, show(res)
    assert status_line(res).startswith("2.0.0 "), show(res)
    err = res.stderr.decode(errors="replace")
    assert re.search(r"mx\.inject\.test\[127\.0\.10\.6\].*response injection", err), show(res)
    line = log_line(res, rcpt)
    assert re.search(r" tls=TLSv1\.3/\S+ ", line) and " level=encrypted " in line, line
    [s] = new_sessions(fake, n)
    # In plaintext: EHLO and STARTTLS only. Inside TLS: a fresh EHLO before anything else
    # (had the injected 250 lines counted as the EHLO reply, MAIL would come first and get
    # 503 from the fake server).
    assert verbs(s, tls=False) == ["EHLO", "STARTTLS"], s
    assert verbs(s, tls=True)[:4] == ["EHLO", "MAIL", "RCPT", "DATA"], s
    assert s.get("tls_version") == "TLSv1.3", s
    msgs = [m for m in fake.messages() if f"<{rcpt}>" in m["rcpts"]]
    assert len(msgs) == 1 and msgs[0]["tls"] is True, msgs
    data = msgs[0]["data"].encode("latin-1").replace(b"\r\n", b"\n")
    assert body_of(data) == body


# --------------------------------------------------------------------------------------
# 6. A real Postfix using blackpony as its transport
# --------------------------------------------------------------------------------------

def mta_recipients(tok: str, via: str) -> dict[str, tuple[str, str, str]]:
    """recipient -> (delivery status, dsn prefix, reply code and enhanced code prefix)."""
    return {
        f"{via}-ok-{tok}@tls.test": ("sent", "2.", "250 2."),
        f"{via}-later-{tok}@tempfail.test": ("deferred", "4.", "450 4."),
        f"{via}-null-{tok}@nullmx.test": ("bounced", "5.1.10", "556 5.1.10 "),
        f"{via}-none-{tok}@nosuch.test": ("bounced", "5.1.2", "550 5.1.2 "),
    }


@pytest.mark.parametrize("via,sender", [("pipe", SENDER_PIPE),
                                        ("lmtp-inet", SENDER_LMTP_INET),
                                        ("lmtp-unix", SENDER_LMTP_UNIX)])
def test_postfix_hands_mail_to_blackpony(pf_sender, outbound_tcp, outbound_unix, internet,
                                        via, sender):
    tok = token()
    expected = mta_recipients(tok, via)
    rcpts = list(expected)
    message, body = make_message(tok, rcpts)
    if via == "pipe":
        # Postfix's own sendmail(1) into the sending instance's queue.
        res = subprocess.run([require_tool("sendmail"), "-C", str(pf_sender.config_dir),
                              "-i", "-f", sender, "--", *rcpts], input=message,
                             capture_output=True, timeout=60)
        assert res.returncode == 0, show(res)
    else:
        with smtplib.SMTP(pf_sender.host, pf_sender.port, local_hostname="client.test",
                          timeout=60) as smtp:
            refused = smtp.sendmail(sender, rcpts, crlf(message))
            assert not refused, refused
    relay = {"pipe": "relay=blackpony,",
             "lmtp-inet": f"relay={outbound_tcp.host}[{outbound_tcp.host}]:{outbound_tcp.port},",
             "lmtp-unix": f"[{outbound_unix.unix_path}],"}[via]
    for rcpt, (want, dsn, code) in expected.items():
        status, line = pf_sender.wait_delivery_status(rcpt, timeout=60)
        assert status == want, f"{rcpt}: status={status}, expected {want}\n{line}"
        assert f" dsn={dsn}" in line, f"{rcpt}: expected dsn={dsn}...\n{line}"
        assert relay in line, f"{rcpt}: expected {relay!r}\n{line}"
        # The reply blackpony got (or made) reaches Postfix's log: pipe(8) shows our status
        # line, lmtp(8) the per-recipient reply.
        text = code if via != "pipe" else f"{dsn}"
        assert text in line.split(" status=", 1)[1], f"{rcpt}: expected {text!r}\n{line}"
    ok = next(r for r, (w, _, _) in expected.items() if w == "sent")
    arrived(internet.postfix, ok, body)


# --------------------------------------------------------------------------------------
# 7. Exim using blackpony
# --------------------------------------------------------------------------------------

EXIM_MARK = {"sent": "=>", "deferred": "==", "bounced": "**"}


@pytest.mark.parametrize("via", ["socket", "command"])
def test_exim_hands_mail_to_blackpony(exim, internet, via):
    """Exim's lmtp transport: `socket` to `blackpony outbound`, `command` running
    `blackpony lmtp` (blackpony's help names both)."""
    tok = token()
    expected = mta_recipients(tok, via)
    rcpts = list(expected)
    message, body = make_message(tok, rcpts)
    res = exim.submit(f"{via}@sender.test", rcpts, message)
    # Exim re-executes itself for delivery (a -C config costs it root, see peers.py), and
    # the result lines may land a moment after the submitting process returned.
    try:
        wait_for(lambda: all(exim.result(r) for r in rcpts), 30,
                 f"Exim's mainlog to show a result for each of {rcpts}")
        timed_out = None
    except PeerError as e:
        timed_out = e
    context = (show(res) + f"\nexim mainlog:\n{exim.mainlog()}\n"
               f"paniclog:\n{exim.paniclog()}")
    assert timed_out is None, f"{timed_out}" + context
    for rcpt, (want, _, code) in expected.items():
        mark, line = exim.result(rcpt)
        assert mark == EXIM_MARK[want], f"{rcpt}: {line}\nexpected {EXIM_MARK[want]}" + context
        # => lines carry the confirmation (C="250 ..."), ==/** lines the LMTP error.
        assert code in line, f"{rcpt}: expected {code!r} in {line}" + context
    ok = next(r for r, (w, _, _) in expected.items() if w == "sent")
    arrived(internet.postfix, ok, body)


# --------------------------------------------------------------------------------------
# 8. Address literals (RFC 5321 §4.1.3): delivered to the address itself, no MX lookup
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def literal_sink(internet, workdir):
    """Postfix's smtp-sink on NET_ADDR["literal"] (no DNS name points there), on the fake
    internet's SMTP port, dumping every transaction with its envelope."""
    from interop.peers import SmtpSink
    dumps = owned_dir(workdir / "literal-sink", "postfix")
    sink = SmtpSink(workdir, NET_ADDR["literal"], internet.smtp_port,
                    hostname="literal-sink.test", dump_dir=dumps)
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


def sink_got(sink, rcpt: str, before: int) -> bytes:
    """The one transaction for rcpt the sink dumped after `before` earlier ones."""
    def found():
        got = [d for d in sink.dumps()[before:]
               if f"X-Rcpt-Args: <{rcpt}>".encode() in d]
        return got or None
    got = wait_for(found, 10, f"a transaction to {rcpt} in {sink.dump_dir}")
    assert len(got) == 1, got
    return got[0]


@pytest.mark.parametrize("literal", [NET_ADDR["literal"], f"IPv6:::ffff:{NET_ADDR['literal']}"])
def test_deliver_to_address_literal(internet, workdir, literal_sink, literal):
    tok = token()
    rcpt = f"bob-{tok}@[{literal}]"
    message, body = make_message(tok, [rcpt])
    before = len(literal_sink.dumps())
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message)
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
    line = log_line(res, rcpt)
    ip = literal.removeprefix("IPv6:")
    relay = f" relay={ip}[{ip}]:{internet.smtp_port} "
    assert relay in line and " dsn=2.0.0 status=sent (250 " in line, line
    dump = sink_got(literal_sink, rcpt, before)
    assert f"Subject: blackpony outbound {tok}".encode() in dump, dump[:2000]
    # No DNS was asked about the literal (an MX or TXT query for it would be a bug).
    assert "[" + literal not in internet.dns.log_text(), internet.dns.log_text()


@pytest.mark.parametrize("mode", ["lmtp", "smtp"])
def test_outbound_modes_deliver_to_address_literal(request, internet, workdir, literal_sink, mode):
    """The LMTP server and the SMTP proxy route a literal the same way as deliver."""
    bp = request.getfixturevalue("outbound_tcp" if mode == "lmtp" else "outbound_smtp_tcp")
    tok = token()
    rcpt = f"bob-{tok}@[{NET_ADDR['literal']}]"
    message, body = make_message(tok, [rcpt])
    before = len(literal_sink.dumps())
    cls = smtplib.LMTP if mode == "lmtp" else smtplib.SMTP
    with cls(bp.host, bp.port, timeout=60) as c:
        refused = c.sendmail(SENDER, [rcpt], crlf(message))
    assert refused == {}, refused
    sink_got(literal_sink, rcpt, before)
    addr = NET_ADDR["literal"]
    wait_for(lambda: f"to=<{rcpt}> relay={addr}[{addr}]:{internet.smtp_port} " in bp.log_text(),
             10, f"the sent line for {rcpt} in\n{bp.log_text()}")


@pytest.mark.parametrize("how", ["flag", "config"])
def test_deliver_refuses_address_literals_when_told(internet, workdir, literal_sink, how):
    tok = token()
    rcpt = f"bob-{tok}@[{NET_ADDR['literal']}]"
    message, _ = make_message(tok, [rcpt])
    before = len(literal_sink.dumps())
    if how == "flag":
        extra = ["--refuse-address-literals"]
    else:
        conf = workdir / f"refuse-{tok}.toml"
        conf.write_text("[outbound]\nrefuse_address_literals = true\n")
        extra = ["--config", str(conf)]
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message, *extra)
    assert res.returncode == 69, show(res)
    line = status_line(res)
    assert line.startswith("5.7.1 ") and ": 550 5.7.1 Delivery to address literal" in line, line
    assert len(literal_sink.dumps()) == before, "the refused literal was delivered to"


# --------------------------------------------------------------------------------------
# 9. A message with NUL octets is never sent (a next hop that drops NULs would read
#    "\r\n\0.\r\n" as an end of data: SMTP smuggling)
# --------------------------------------------------------------------------------------

NUL_BODIES = {
    "before-dot": b"line\r\n\0.\r\nMAIL FROM:<smuggled@evil.test>\r\n",
    "after-dot": b"line\r\n.\0\r\nRCPT TO:<x@evil.test>\r\n",
    "lone": b"a NUL \0 in the middle of a line\r\n",
}


def nul_message(tok: str, rcpt: str, body: bytes) -> bytes:
    return (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: nul {tok}\r\n\r\n").encode() + body


@pytest.mark.parametrize("where", list(NUL_BODIES))
def test_deliver_refuses_nul(internet, workdir, where):
    tok = token()
    rcpt = f"nul-{tok}@record.test"
    sessions = len(internet.record.sessions())
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt],
                  nul_message(tok, rcpt, NUL_BODIES[where]))
    assert res.returncode == 65, show(res)
    line = status_line(res)
    assert line == f"5.6.0 {rcpt}: 554 5.6.0 Message contains NUL characters", line
    assert " relay=none " in log_line(res, rcpt) and " status=bounced " in log_line(res, rcpt)
    # Refused before any connection: the MX never heard of it.
    time.sleep(0.5)
    assert len(internet.record.sessions()) == sessions, internet.record.sessions()[sessions:]


def test_outbound_lmtp_refuses_nul(internet, outbound_tcp):
    bp = outbound_tcp
    tok = token()
    ok, nul = f"ok-{tok}@record.test", f"nul-{tok}@record.test"
    before = len(internet.record.messages())
    with smtplib.LMTP(bp.host, bp.port, timeout=60) as c:
        assert c.sendmail(SENDER, [ok], nul_message(tok, ok, b"clean\r\n")) == {}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            c.sendmail(SENDER, [nul], nul_message(tok, nul, NUL_BODIES["before-dot"]))
    assert refused.value.smtp_code == 554, refused.value
    assert refused.value.smtp_error == b"5.6.0 Message contains NUL characters", refused.value
    got = [m for m in internet.record.messages()[before:]]
    assert [m["rcpts"] for m in got] == [[f"<{ok}>"]], got
