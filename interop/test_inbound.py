"""`blackpony inbound` against real peers: Postfix behind it, swaks / smtplib / openssl /
smtp-source / raw sockets in front of it. Every client sends from 127.0.0.77 unless said
otherwise, so a backend that only saw the sidecar's 127.0.0.1 cannot pass by accident.
"""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interop.clients import (RawSMTP, rcpt, run, swaks, token, transcript,
                             unverified_tls_context)
from interop.conftest import HOSTNAME
from interop.peers import (CLIENT_IP, PeerError, UnixSmtpd, blackpony_received, free_port,
                           postfix_queue_id, require_tool, unfolded_headers, wait_for)

HERE = Path(__file__).resolve().parent

TLS_TRACE = re.compile(
    rb"^Received: from (\S+) \(unknown \[127\.0\.0\.77\]\) by "
    + re.escape(HOSTNAME.encode())
    + rb" \(blackpony\) with ESMTPS \(TLSv1\.3 TLS_[A-Z0-9_]+\); \S.*$")
PLAIN_TRACE = re.compile(
    rb"^Received: from (\S+) \(unknown \[127\.0\.0\.77\]\) by "
    + re.escape(HOSTNAME.encode())
    + rb" \(blackpony\) with ESMTP \(without TLS\); \S.*$")
# A HELO (not EHLO) client: RFC 5321's "with SMTP".
HELO_PLAIN_TRACE = re.compile(PLAIN_TRACE.pattern.replace(rb"with ESMTP", rb"with SMTP"))


def check_delivered(pf, bp, to: str, marker: str, tls: bool, client_ip: str = CLIENT_IP,
                    helo: str | None = "client.test", esmtp: bool = True) -> bytes:
    """The one message for `to` arrived with its body, blackpony's trace header on top, and
    Postfix logged the real client address. Returns the message."""
    pf.wait_messages(to)
    pf.wait_queue_empty()
    got = pf.messages(to)
    assert len(got) == 1, f"{len(got)} messages for {to}: {[str(p) for p, _ in got]}"
    [(path, msg)] = got
    ctx = f"\nmessage {path}:\n{msg.decode(errors='replace')}\nblackpony log:\n{bp.log_text()}"
    assert marker.encode() in msg, "body not intact" + ctx
    trace = blackpony_received(msg)
    assert trace is not None, "no blackpony Received: header" + ctx
    want = TLS_TRACE if tls else (PLAIN_TRACE if esmtp else HELO_PLAIN_TRACE)
    assert want.match(trace), f"trace header {trace!r}, expected {want.pattern!r}" + ctx
    if tls:
        assert b"with ESMTPS (TLSv1.3" in trace
    else:
        assert b"(without TLS)" in trace
    if helo:
        assert trace.startswith(b"Received: from " + helo.encode() + b" "), trace
    # At the top: the first header of the message as blackpony passed it on, i.e. right
    # after the Received header Postfix itself added.
    fields = unfolded_headers(msg)
    received = [i for i, f in enumerate(fields) if f.lower().startswith(b"received:")]
    assert len(received) >= 2, ctx
    assert b"(Postfix)" in fields[received[0]] and fields[received[1]] == trace, ctx
    # Postfix saw the real client, not the sidecar.
    qid = postfix_queue_id(msg)
    assert qid, "no Postfix queue id in the message" + ctx
    client = pf.client_of_queue_id(qid)
    assert client is not None, f"maillog has no '{qid}: client=' line:\n{pf.log_tail(40)}"
    assert client.endswith(f"[{client_ip}]"), (
        f"Postfix logged {qid}: client={client}, expected [{client_ip}]\n{pf.log_tail(40)}")
    assert f"Received: from {helo or ''}".encode() in msg  # Postfix's own trace line
    return msg


# --------------------------------------------------------------------------------------
# swaks through every identity mode that tells Postfix the real client
# --------------------------------------------------------------------------------------

SWAKS_VARIANTS = {
    "plain": [],
    "tls": ["--tls"],
    "pipeline": ["--pipeline"],
    "tls-pipeline": ["--tls", "--pipeline"],
}


@pytest.mark.parametrize("variant", list(SWAKS_VARIANTS))
@pytest.mark.parametrize("mode", ["proxy-v2", "xclient"])
def test_swaks_delivers(mode_blackpony, mode, variant):
    bp, pf = mode_blackpony(mode)
    tok = token()
    to = rcpt(f"swaks-{mode}-{variant}", tok)
    marker = f"body-marker-{tok}"
    res = swaks(bp.port, to, *SWAKS_VARIANTS[variant], body=f"Hello.\n{marker}\nBye.")
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
    out = res.stdout.decode(errors="replace")
    if "--tls" in SWAKS_VARIANTS[variant]:
        assert "TLS started with cipher TLSv1.3" in out, out
    if "--pipeline" in SWAKS_VARIANTS[variant]:
        assert "PIPELINING" in out
    check_delivered(pf, bp, to, marker, tls="--tls" in SWAKS_VARIANTS[variant])


def test_proxy_v1_delivers(mode_blackpony):
    bp, pf = mode_blackpony("proxy-v1")
    for tls in (False, True):
        tok = token()
        to = rcpt("proxy-v1", tok)
        marker = f"v1-marker-{tok}"
        res = swaks(bp.port, to, *(["--tls"] if tls else []), body=marker)
        assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
        check_delivered(pf, bp, to, marker, tls=tls)


@pytest.mark.parametrize("mode", ["xclient", "none", "proxy-v2"])
def test_ehlo_rewritten(mode_blackpony, mode):
    """The xclient Postfix advertises XCLIENT and CHUNKING to 127.0.0.1 (what blackpony is
    in `none` mode); clients of blackpony must see STARTTLS instead, and nothing that lets
    them steer the backend."""
    bp, pf = mode_blackpony(mode)
    if mode != "proxy-v2":
        with RawSMTP(pf.host, pf.port, source="127.0.0.1") as direct:
            assert direct.reply().code == 220
            backend_ehlo = direct.cmd("EHLO client.test").text.upper()
            direct.cmd("QUIT")
        assert "XCLIENT" in backend_ehlo and "CHUNKING" in backend_ehlo, backend_ehlo
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        r = c.cmd("EHLO client.test")
        assert r.code == 250
        caps = [l[4:].split(b" ")[0].upper() for l in r.lines[1:]]
        assert b"STARTTLS" in caps, r
        for bad in (b"XCLIENT", b"XFORWARD", b"CHUNKING"):
            assert bad not in caps, r
        assert c.cmd("STARTTLS").code == 220
        c.starttls()
        r = c.cmd("EHLO client.test")
        caps = [l[4:].split(b" ")[0].upper() for l in r.lines[1:]]
        assert r.code == 250 and b"PIPELINING" in caps, r
        for bad in (b"STARTTLS", b"XCLIENT", b"XFORWARD", b"CHUNKING"):
            assert bad not in caps, r
        assert c.cmd("QUIT").code == 221


# --------------------------------------------------------------------------------------
# Other clients
# --------------------------------------------------------------------------------------

def test_smtplib_starttls_delivers(mode_blackpony):
    bp, pf = mode_blackpony("proxy-v2")
    tok = token()
    to = rcpt("smtplib", tok)
    marker = f"smtplib-marker-{tok}"
    msg = (f"From: a@client.test\r\nTo: {to}\r\nSubject: smtplib {tok}\r\n\r\n"
           f"{marker}\r\n.leading dot line\r\n")
    with smtplib.SMTP(bp.host, bp.port, local_hostname="smtplib.client.test",
                      source_address=(CLIENT_IP, 0), timeout=20) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=unverified_tls_context())
        assert code == 220
        s.ehlo()
        assert not s.has_extn("starttls")
        refused = s.sendmail("a@client.test", [to], msg)
        assert refused == {}
    delivered = check_delivered(pf, bp, to, marker, tls=True, helo="smtplib.client.test")
    assert b"\n.leading dot line\n" in delivered  # dot-stuffing round trip


def test_tls_client_gone_without_close_notify_is_logged_in_mail_words(mode_blackpony):
    """A client that drops its TLS connection mid-session (no close_notify, no QUIT) is a
    truncation, logged in words an operator greps (not rustls' text with its docs URL)."""
    bp, _pf = mode_blackpony("proxy-v2")
    s = smtplib.SMTP(bp.host, bp.port, local_hostname="gone.client.test",
                     source_address=(CLIENT_IP, 0), timeout=20)
    try:
        s.ehlo()
        code, _ = s.starttls(context=unverified_tls_context())
        assert code == 220
        s.ehlo()
        assert s.docmd("MAIL", "FROM:<a@client.test>")[0] == 250
        # detach() leaves the TLS layer without a shutdown: the socket just closes.
        socket.socket(fileno=s.sock.detach()).close()
    finally:
        s.sock = None
    line = bp.wait_log(r".*client-error=.*")
    assert 'client-error="connection closed without TLS close_notify"' in line.group(0), \
        bp.log_text()
    assert "https://" not in bp.log_text(), bp.log_text()
    bp.wait_log(r"end=truncated")


def test_openssl_s_client_starttls(mode_blackpony):
    bp, pf = mode_blackpony("proxy-v2")
    res = run([require_tool("openssl"), "s_client", "-starttls", "smtp", "-connect",
               bp.listen, "-servername", HOSTNAME, "-quiet", "-crlf"],
              input=b"EHLO openssl.client.test\nQUIT\n", timeout=30)
    out = res.stdout.decode(errors="replace")
    err = res.stderr.decode(errors="replace")
    ctx = f"\nstdout:\n{out}\nstderr:\n{err}\nblackpony log:\n{bp.log_text()}"
    # -quiet prints only what came after the handshake: the EHLO reply, then QUIT's.
    assert res.returncode == 0, ctx
    ehlo = [l for l in out.splitlines() if l.startswith("250")]
    assert ehlo and ehlo[-1].startswith("250 "), ctx
    assert any("PIPELINING" in l for l in ehlo), ctx
    assert not any("STARTTLS" in l.upper() for l in ehlo), "STARTTLS offered inside TLS" + ctx
    assert re.search(r"^221 ", out, re.M), ctx
    assert f"CN = {HOSTNAME}" in err, ctx  # the self-signed certificate made for --hostname
    bp.wait_log(r"starttls client=unknown\[127\.0\.0\.1\]:\d+ tls=TLSv1\.3/")


@pytest.mark.parametrize("mode", ["proxy-v2", "xclient"])
def test_helo_only_client_delivers(mode_blackpony, mode):
    bp, pf = mode_blackpony(mode)
    tok = token()
    to = rcpt("helo", tok)
    marker = f"helo-marker-{tok}"
    res = swaks(bp.port, to, "--protocol", "SMTP", body=marker)
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
    assert " -> HELO client.test" in res.stdout.decode(errors="replace")
    check_delivered(pf, bp, to, marker, tls=False, esmtp=False)


def test_smtp_source_burst(mode_blackpony):
    """smtp-source -s 5 -m 50 -l 1024: all 50 messages delivered."""
    bp, pf = mode_blackpony("proxy-v2")
    to = rcpt("burst", token())
    res = run([require_tool("smtp-source"), "-s", "5", "-m", "50", "-l", "1024",
               "-f", "a@client.test", "-t", to, bp.listen], timeout=120)
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()[-4000:]
    msgs = pf.wait_messages(to, count=50, timeout=90)
    pf.wait_queue_empty()
    assert len(pf.messages(to)) == 50, f"{len(msgs)} messages for {to}"
    for _, m in msgs:
        assert blackpony_received(m) is not None
    assert bp.log_text().count("messages=") >= 5


# --------------------------------------------------------------------------------------
# No open relay
# --------------------------------------------------------------------------------------

def try_relay(bp, tok: str):
    """From 127.0.0.77, try to send to a foreign domain. Returns (rcpt reply, data reply)."""
    victim = f"victim-{tok}@foreign.test"
    with smtplib.SMTP(bp.host, bp.port, local_hostname="relay.client.test",
                      source_address=(CLIENT_IP, 0), timeout=20) as s:
        s.ehlo()
        s.mail(f"spammer-{tok}@client.test")
        rcpt_reply = s.rcpt(victim)
        data_reply = None
        if rcpt_reply[0] == 250:
            data_reply = s.data(f"Subject: relay {tok}\r\n\r\nrelay test\r\n".encode())
        return rcpt_reply, data_reply


@pytest.mark.parametrize("mode", ["proxy-v2", "proxy-v1", "xclient"])
def test_open_relay_refused(mode_blackpony, mode):
    bp, pf = mode_blackpony(mode)
    tok = token()
    (code, text), data = try_relay(bp, tok)
    ctx = f"\nrcpt reply {code} {text!r}\npostfix:\n{pf.log_tail(20)}\nblackpony:\n{bp.log_text()[-2000:]}"
    assert code == 554 and b"Relay access denied" in text, ctx
    assert data is None
    line = wait_for(lambda: re.search(
        rf"NOQUEUE: reject: RCPT from [^\[]*\[127\.0\.0\.77\]: 554 .*victim-{tok}@foreign\.test",
        pf.log_text()), 10, "Postfix reject log line")
    assert line


def test_open_relay_with_identity_none_is_accepted(mode_blackpony):
    """`--identity none` tells Postfix nothing, so Postfix sees 127.0.0.1, which its
    mynetworks trusts: the same relay attempt is ACCEPTED. This is why `none` is only for a
    backend configured not to trust the sidecar's address. (Postfix here throws relayed
    mail away via the discard transport; nothing leaves the machine.)"""
    bp, pf = mode_blackpony("none")
    tok = token()
    (code, text), data = try_relay(bp, tok)
    assert code == 250, (code, text)
    assert data is not None and data[0] == 250, data
    m = re.search(rb"queued as ([0-9A-F]+)", data[1])
    assert m, data
    qid = m.group(1).decode()
    client = wait_for(lambda: pf.client_of_queue_id(qid), 10, f"{qid}: client= in maillog")
    assert client.endswith("[127.0.0.1]"), client


# --------------------------------------------------------------------------------------
# Identity commands from the client
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "XCLIENT ADDR=1.2.3.4",
    "XCLIENT ADDR=1.2.3.4 NAME=spoofed.example",
    "XFORWARD ADDR=1.2.3.4",
    "PROXY TCP4 1.2.3.4 127.0.0.1 4444 25",
])
@pytest.mark.parametrize("mode", ["none", "xclient", "proxy-v2"])
def test_client_identity_commands_refused(mode_blackpony, mode, line):
    """A client's XCLIENT/XFORWARD/PROXY line is refused by blackpony itself and never
    reaches Postfix. In `none` mode the backend is the Postfix that trusts XCLIENT and
    XFORWARD from 127.0.0.1 and has heard nothing else from blackpony: had blackpony passed
    the line on, Postfix would have accepted it and logged 1.2.3.4. (Postfix's own refusal
    has the same text as blackpony's, hence the check of blackpony's log.)"""
    bp, pf = mode_blackpony(mode)
    tok = token()
    to = rcpt("xclient-inject", tok)
    marker = f"inject-marker-{tok}"
    verb = line.split()[0]
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        r = c.cmd("EHLO client.test")
        assert r.code == 250, r
        r = c.cmd(line)
        assert r.code == 550 and r.lines[-1].startswith(b"550 5.7.0"), r
        assert b"insufficient authorization" in r.lines[-1], r
        # The session goes on, as the same client.
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd(f"RCPT TO:<{to}>").code == 250
        assert c.cmd("DATA").code == 354
        r = c.cmd(f"Subject: {tok}\r\n\r\n{marker}\r\n.")
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    msg = check_delivered(pf, bp, to, marker, tls=False,
                          client_ip="127.0.0.1" if mode == "none" else CLIENT_IP)
    assert b"1.2.3.4" not in msg and b"spoofed" not in msg
    bp.wait_log(rf"refused=command command={verb}\b")
    log = pf.log_text()
    assert "1.2.3.4" not in log and "spoofed.example" not in log, pf.log_tail(40)


# --------------------------------------------------------------------------------------
# SMTP smuggling
# --------------------------------------------------------------------------------------

SMUGGLE_VARIANTS = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "lf-dot-crlf": b"\n.\r\n",
    "crlf-dot-lf": b"\r\n.\n",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "bare-lf": b"\n",
    "bare-cr": b"\r",
}


def send_and_quit(c, to: str, tok: str, marker: str):
    """MAIL, RCPT, DATA, a small message and QUIT on a session past its EHLO; each accepted."""
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd(f"RCPT TO:<{to}>").code == 250
    assert c.cmd("DATA").code == 354
    assert c.cmd(f"Subject: {tok}\r\n\r\n{marker}\r\n.").code == 250
    assert c.cmd("QUIT").code == 221


def smuggle_payload(tok: str, to: str, smuggled: str, variant: bytes) -> bytes:
    """One message whose body hides a second transaction behind a non-CRLF end-of-data.
    The smuggled message's own CRLF.CRLF is the only real end of data."""
    return (f"From: a@client.test\r\nTo: {to}\r\nSubject: smuggle {tok}\r\n\r\n"
            f"hello {tok}").encode() + variant + (
        f"MAIL FROM:<evil@x>\r\nRCPT TO:<{smuggled}>\r\nDATA\r\n"
        f"Smuggled {tok}\r\n.\r\n").encode()


def smuggle_session(bp, to: str, payload: bytes):
    """EHLO, MAIL, RCPT, DATA, payload. Returns (reply to end of data, connection)."""
    c = RawSMTP(bp.host, bp.port)
    assert c.reply().code == 220
    assert c.cmd("EHLO client.test").code == 250
    assert c.cmd("MAIL FROM:<a@client.test>").code == 250
    assert c.cmd(f"RCPT TO:<{to}>").code == 250
    assert c.cmd("DATA").code == 354
    c.send(payload)
    return c.reply(), c


def settle(pf, before_disconnects: int):
    """Wait until Postfix has finished the session(s) and its queue is empty."""
    wait_for(lambda: pf.log_text().count(" disconnect from ") > before_disconnects, 15,
             f"Postfix to log the end of the session\n{pf.log_tail(20)}")
    pf.wait_queue_empty()
    time.sleep(0.5)
    pf.wait_queue_empty()


@pytest.mark.parametrize("variant", list(SMUGGLE_VARIANTS))
def test_smuggling_normalized(mode_blackpony, variant):
    bp, pf = mode_blackpony("proxy-v2")
    tok = token()
    to = rcpt("smuggle-target", tok)
    smuggled = rcpt("smuggled", tok)
    before = pf.log_text().count(" disconnect from ")
    r, c = smuggle_session(bp, to, smuggle_payload(tok, to, smuggled, SMUGGLE_VARIANTS[variant]))
    with c:
        assert r is not None and r.code == 250, f"{r}\n{bp.log_text()[-2000:]}"
        # Exactly one reply for the one message: the next reply must be QUIT's, not the
        # replies to a smuggled MAIL/RCPT/DATA.
        q = c.cmd("QUIT")
        assert q is not None and q.code == 221, q
    settle(pf, before)
    got = pf.messages(to)
    assert len(got) == 1, f"{len(got)} messages for {to}"
    msg = got[0][1]
    assert f"hello {tok}".encode() in msg and b"MAIL FROM:<evil@x>" in msg, msg
    assert f"Smuggled {tok}".encode() in msg, msg
    assert pf.messages(smuggled) == [], f"smuggled message delivered to {smuggled}"
    assert "from=<evil@x>" not in pf.log_text(), pf.log_tail(30)
    assert blackpony_received(msg) is not None


@pytest.fixture(scope="module")
def bp_reject(_module_blackponies, pf_proxy):
    return _module_blackponies(pf_proxy, "proxy-v2", "--bare-newlines", "reject",
                               name="bp-reject")


def refused_without_end_of_data(bp, pf, prefix: str, variant: bytes, code: bytes,
                                log: str) -> tuple[str, str]:
    """Sends a smuggling message that blackpony must refuse with `code` (e.g. b"550 5.6.11"):
    the connection closes with no reply to a smuggled command, Postfix loses its connection
    in DATA (it never got an end of data), and nothing is delivered. Returns (token, rcpt)."""
    tok = token()
    to = rcpt(f"{prefix}-target", tok)
    smuggled = rcpt(f"{prefix}-smuggled", tok)
    lost = "lost connection after DATA"
    lost_before = pf.log_text().count(lost)
    before = pf.log_text().count(" disconnect from ")
    r, c = smuggle_session(bp, to, smuggle_payload(tok, to, smuggled, variant))
    with c:
        assert r is not None and r.code == 550 and r.lines[-1].startswith(code), (
            f"{r}\n{bp.log_text()[-2000:]}")
        rest = c.read_to_eof()
        assert c.eof, f"connection still open after {code!r}"
        assert b"250" not in rest, rest  # no reply to a smuggled command
    bp.wait_log(log)
    wait_for(lambda: pf.log_text().count(lost) > lost_before, 15,
             f"Postfix to lose the connection in DATA (no end of data)\n{pf.log_tail(20)}")
    settle(pf, before)
    assert pf.messages(to) == [], "message delivered although blackpony refused it"
    assert pf.messages(smuggled) == [], "smuggled message delivered"
    assert "from=<evil@x>" not in pf.log_text()
    return tok, to


@pytest.mark.parametrize("variant", list(SMUGGLE_VARIANTS))
def test_smuggling_rejected(bp_reject, pf_proxy, variant):
    refused_without_end_of_data(bp_reject, pf_proxy, "reject", SMUGGLE_VARIANTS[variant],
                                b"550 5.6.11", r"refused=bare-newline")


# A NUL next to a line end: an MTA that drops NULs sees CRLF.CRLF where blackpony saw none.
NUL_VARIANTS = {
    "crlf-nul-dot-crlf": b"\r\n\0.\r\n",
    "crlf-dot-nul-crlf": b"\r\n.\0\r\n",
    "crlf-nul-dot-cr": b"\r\n\0.\r",
    "crlf-nul-dot-lf": b"\r\n\0.\n",
    "mid-line": b" \0 \r\n",
}


@pytest.mark.parametrize("policy", ["normalize", "reject"])
@pytest.mark.parametrize("variant", list(NUL_VARIANTS))
def test_nul_in_message_refused(mode_blackpony, bp_reject, pf_proxy, policy, variant):
    """A message with a NUL is refused with 550 5.6.0 in every --bare-newlines mode, Postfix
    never gets an end of data; the next message, on a new connection, is delivered."""
    bp = mode_blackpony("proxy-v2")[0] if policy == "normalize" else bp_reject
    pf = pf_proxy
    tok, to = refused_without_end_of_data(bp, pf, "nul", NUL_VARIANTS[variant], b"550 5.6.0",
                                          r"refused=nul count=1 ")
    marker = f"after-nul-{tok}"
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.test").code == 250
        send_and_quit(c, to, tok, marker)
    check_delivered(pf, bp, to, marker, tls=False)


# --------------------------------------------------------------------------------------
# STARTTLS
# --------------------------------------------------------------------------------------

def test_starttls_injection_refused(mode_blackpony):
    bp, pf = mode_blackpony("proxy-v2")
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.test").code == 250
        c.send(b"STARTTLS\r\nMAIL FROM:<x@y>\r\n")
        rest = c.read_to_eof()
    assert c.eof, "connection not closed"
    codes = [l[:3] for l in rest.split(b"\r\n") if l]
    assert b"554" in codes, rest
    assert b"220" not in codes, f"TLS offered despite injected plaintext: {rest!r}"
    assert rest.startswith(b"554 5.5.1"), rest
    bp.wait_log(r"refused=starttls-injection")


def postfix_sessions(pf, before: int, count: int) -> list[str]:
    """The command counts Postfix logs at the end of `count` sessions of the client
    (127.0.0.77) after the first `before` disconnects of any client (`ehlo=1 mail=1
    rcpt=0/1 ... commands=3/4`: a / marks refusals)."""
    def ended():
        lines = [l for l in pf.log_text().splitlines() if " disconnect from " in l][before:]
        mine = [l for l in lines if f" disconnect from unknown[{CLIENT_IP}] " in l]
        return mine if len(mine) >= count else None
    lines = wait_for(ended, 15, f"{count} Postfix session(s) to end\n{pf.log_tail(20)}")
    return [l.split(" disconnect from ", 1)[1].split(" ", 1)[1] for l in lines]


@pytest.mark.parametrize("mode", ["proxy-v2", "xclient"])
def test_starttls_state_is_the_sidecars(mode_blackpony, mode):
    """RFC 3207 §4.2 kept by blackpony, whatever Postfix would take: STARTTLS inside a mail
    transaction is refused (503 5.5.1, still plaintext); after STARTTLS, RCPT/MAIL/DATA
    before a new EHLO get blackpony's 503 5.5.1 Send EHLO first and never reach Postfix
    (its own session counts show no refused and no extra command); after EHLO the message
    is delivered."""
    bp, pf = mode_blackpony(mode)
    tok = token()
    to = rcpt("tls-state", tok)
    marker = f"tls-state-{tok}"
    before = pf.log_text().count(" disconnect from ")
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<before-tls@client.test>").code == 250
        r = c.cmd("STARTTLS")
        assert r.code == 503 and r.lines[-1].startswith(
            b"503 5.5.1 Error: MAIL transaction in progress"), r
        # Still plaintext and serving.
        assert c.cmd("RSET").code == 250
        assert c.cmd("STARTTLS").code == 220
        c.starttls()
        for cmd in (f"RCPT TO:<{to}>", "MAIL FROM:<a@client.test>", "DATA"):
            r = c.cmd(cmd)
            assert r.code == 503 and r.lines[-1] == b"503 5.5.1 Send EHLO first", (cmd, r)
        assert c.cmd("EHLO client.test").code == 250
        send_and_quit(c, to, tok, marker)
    check_delivered(pf, bp, to, marker, tls=True)
    # proxy-v2: a new backend connection after TLS; xclient: RSET on the same one.
    counts = postfix_sessions(pf, before, 2 if mode == "proxy-v2" else 1)
    ctx = f"Postfix session counts: {counts}\n{pf.log_tail(20)}"
    # (Postfix counts its own XCLIENT, answered with a new greeting, as 0/1.)
    refused = re.findall(r"\b(?:ehlo|mail|rcpt|data|rset|noop|quit)=\d+/\d+", " ".join(counts))
    assert not refused, f"Postfix refused {refused}: " + ctx
    def total(command: str) -> int:
        return sum(int(n) for n in re.findall(rf"\b{command}=(\d+)\b", " ".join(counts)))
    assert (total("rcpt"), total("data")) == (1, 1), ctx
    assert total("mail") == 2, ctx  # before TLS, and after the new EHLO


def test_require_tls(start_blackpony, pf_proxy):
    bp = start_blackpony(pf_proxy, "proxy-v2", "--require-tls", name="bp-require-tls")
    pf = pf_proxy
    # QUIT works before TLS.
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        assert c.cmd("QUIT").code == 221
    tok = token()
    to = rcpt("require-tls", tok)
    marker = f"require-tls-{tok}"
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        r = c.cmd("EHLO client.test")
        assert r.code == 250 and any(b"STARTTLS" in l for l in r.lines), r
        for cmd in ("MAIL FROM:<a@client.test>", f"RCPT TO:<{to}>", "DATA"):
            r = c.cmd(cmd)
            assert r.code == 530 and r.lines[-1].startswith(
                b"530 5.7.0 Must issue a STARTTLS command first"), (cmd, r)
        assert c.cmd("NOOP").code == 250
        assert c.cmd("RSET").code == 250
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("STARTTLS").code == 220
        c.starttls()
        assert c.cmd("EHLO client.test").code == 250
        send_and_quit(c, to, tok, marker)
    check_delivered(pf, bp, to, marker, tls=True)
    assert "refused=tls-required" in bp.log_text()


# --------------------------------------------------------------------------------------
# Failure handling and limits
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_unix_socket_backend(start_blackpony, workdir, tls):
    """`--backend unix:PATH`: an SMTP server on a Unix socket (aiosmtpd) gets the dialogue
    and the message, with blackpony's trace header, plain and after STARTTLS (which opens a
    new backend connection on the socket)."""
    smtpd = UnixSmtpd(workdir / f"unix-smtpd-{'tls' if tls else 'plain'}").start()
    try:
        bp = start_blackpony(f"unix:{smtpd.socket}", "none", name=f"bp-unix-{tls}")
        tok = f"unix-{token()}"
        res = swaks(bp.port, "someone@example.test", *(["--tls"] if tls else []),
                    "--header", f"Subject: {tok}", host=bp.host)
        assert res.returncode == 0, transcript(res)
        assert "queued as UNIX" in res.stdout.decode(errors="replace"), transcript(res)
        got = wait_for(lambda: [m for m in smtpd.messages() if tok.encode() in m], 10,
                       f"the message in {smtpd.out_dir}")
        assert len(got) == 1, got
        trace = blackpony_received(got[0])
        assert trace is not None, got[0][:500]
        want = b"with ESMTPS (TLSv1.3 " if tls else b"with ESMTP (without TLS)"
        assert want in trace, trace
    finally:
        smtpd.stop()


def test_backend_down_gives_421(start_blackpony):
    dead = free_port()  # nothing listens here
    bp = start_blackpony(f"127.0.0.1:{dead}", "proxy-v2", name="bp-dead-backend")
    with RawSMTP(bp.host, bp.port) as c:
        line = c.read_line()
    assert line is not None and line.startswith(b"421 4.3.2"), (line, bp.log_text())


def test_connection_limit_per_client(start_blackpony, pf_proxy):
    bp = start_blackpony(pf_proxy, "proxy-v2", "--max-connections-per-client", "2",
                         name="bp-per-client")
    conns = []
    try:
        for _ in range(2):
            c = RawSMTP(bp.host, bp.port)
            conns.append(c)
            r = c.reply()
            assert r is not None and r.code == 220, (r, bp.log_text())
        third = RawSMTP(bp.host, bp.port)
        conns.append(third)
        line = third.read_line()
        assert line is not None and line.startswith(b"421 4.7.0"), (line, bp.log_text())
        # Another address is not limited by 127.0.0.77's connections.
        other = RawSMTP(bp.host, bp.port, source="127.0.0.78")
        conns.append(other)
        r = other.reply()
        assert r is not None and r.code == 220, (r, bp.log_text())
    finally:
        for c in conns:
            c.close()


def test_config_file(start_blackpony, pf_proxy, workdir):
    """Settings from a TOML [inbound] section (keys with underscores) take effect."""
    cfg = workdir / f"inbound-{token()}.toml"
    cfg.write_text(
        "[inbound]\n"
        f'backend = "127.0.0.1:{pf_proxy.port}"\n'
        'identity = "proxy-v2"\n'
        f'hostname = "{HOSTNAME}"\n'
        "max_connections_per_client = 1\n"
        'bare_newlines = "reject"\n')
    bp = start_blackpony(None, None, "--config", str(cfg), hostname=None, name="bp-config")
    tok = token()
    to = rcpt("config", tok)
    marker = f"config-marker-{tok}"
    res = swaks(bp.port, to, body=marker)
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
    check_delivered(pf_proxy, bp, to, marker, tls=False)
    # The limit counts a session until blackpony has finished it, which is a moment after
    # the client is gone: wait for its disconnect line before the next connection.
    bp.wait_log(r"disconnect client=unknown\[127\.0\.0\.77\]:\d+ ")
    with RawSMTP(bp.host, bp.port) as first, RawSMTP(bp.host, bp.port) as second:
        assert first.reply().code == 220
        line = second.read_line()
        assert line is not None and line.startswith(b"421 4.7.0"), (line, bp.log_text())
        first_port = first.sock.getsockname()[1]
    bp.wait_log(rf"disconnect client=unknown\[127\.0\.0\.77\]:{first_port} ")
    with RawSMTP(bp.host, bp.port) as c:
        assert c.reply().code == 220
        assert c.cmd("EHLO client.test").code == 250
        assert c.cmd("MAIL FROM:<a@client.test>").code == 250
        assert c.cmd(f"RCPT TO:<{to}>").code == 250
        assert c.cmd("DATA").code == 354
        r = c.cmd("Subject: x\r\n\r\nbare\nnewline\r\n.")
        assert r is not None and r.lines[-1].startswith(b"550 5.6.11"), r


def test_sigterm_idle_exits_zero(start_blackpony, pf_proxy):
    bp = start_blackpony(pf_proxy, "proxy-v2", name="bp-sigterm")
    t0 = time.monotonic()
    rc = bp.terminate(timeout=5)
    assert rc == 0, f"exit status {rc}\n{bp.log_text()}"
    assert time.monotonic() - t0 < 5
    with pytest.raises(OSError):
        socket.create_connection((bp.host, bp.port), timeout=1).close()


# --------------------------------------------------------------------------------------
# exec mode (UCSPI, qmail-style)
# --------------------------------------------------------------------------------------

@pytest.fixture
def exec_blackpony(start_blackpony, workdir):
    out = workdir / f"ucspi-{token()}"
    out.mkdir()
    command = f"{sys.executable} {HERE / 'ucspi_backend.py'} {out}"
    bp = start_blackpony(None, "exec", "--backend-command", command, name="bp-exec")
    return bp, out


def ucspi_messages(out: Path, marker: str):
    import json
    found = []
    for p in sorted(out.glob("msg-*.json")):
        rec = json.loads(p.read_text())
        if marker in rec["data"]:
            found.append(rec)
    return found


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_exec_mode(exec_blackpony, tls):
    bp, out = exec_blackpony
    tok = token()
    to = f"exec-{tok}@example.test"
    marker = f"exec-marker-{tok}"
    res = swaks(bp.port, to, *(["--tls"] if tls else []), body=marker)
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
    [rec] = wait_for(lambda: ucspi_messages(out, marker), 10,
                     f"UCSPI backend to record the message in {out}")
    env = rec["env"]
    assert env.get("PROTO") == "TCP", env
    assert env.get("TCPREMOTEIP") == CLIENT_IP, env
    assert env.get("TCPLOCALIP") == "127.0.0.1", env
    assert env.get("TCPLOCALPORT") == str(bp.port), env
    assert env.get("TCPREMOTEPORT", "").isdigit(), env
    assert rec["rcpts"] == [f"TO:<{to}>"], rec
    trace = blackpony_received(rec["data"].replace("\r\n", "\n").encode())
    assert trace is not None, rec["data"]
    if tls:
        assert env.get("SSL_PROTOCOL") == "TLSv1.3", env
        assert env.get("SSL_CIPHER"), env
        assert b"with ESMTPS (TLSv1.3" in trace, trace
    else:
        assert "SSL_PROTOCOL" not in env, env
        assert b"(without TLS)" in trace, trace
