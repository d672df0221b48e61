"""`blackpony inbound` in front of the other MTAs that can learn the real client address:
Exim with `hosts_proxy` (PROXY v2 and v1) and OpenSMTPD with `listen on ... proxy-v2`, each
unpacked from its Debian package and run as a private daemon on loopback (interop/peers.py
EximProxy, OpenSmtpd). Postfix is covered by test_inbound.py.

For each MTA: swaks (from 127.0.0.77, plain and with STARTTLS at the sidecar) delivers into
the MTA's Maildir, and the MTA's own Received header and log name 127.0.0.77, not the
sidecar's 127.0.0.1; relaying to a foreign domain through the sidecar is refused although
the MTA lets 127.0.0.1 relay (shown by a control test that hands the MTA a PROXY header
claiming 127.0.0.1 directly): the address in the PROXY header is what counts.
"""

from __future__ import annotations

import re
import smtplib

import pytest

from interop.clients import RawSMTP, rcpt, swaks, token, transcript, unverified_tls_context
from interop.conftest import HOSTNAME
from interop.peers import (CLIENT_IP, EximProxy, OpenSmtpd, blackpony_received,
                           proxy_v2_header, unfolded_headers, wait_for)

CLIENT_RE = re.escape(CLIENT_IP)
# blackpony's own trace header (see test_inbound.py), with or without TLS to the client.
TRACE = (r"^Received: from client\.test \(unknown \[" + CLIENT_RE + r"\]\) by "
         + re.escape(HOSTNAME) + r" \(blackpony\) with ")
TRACE_TLS = TRACE + r"ESMTPS \(TLSv1\.3 TLS_[A-Z0-9_]+\); "
TRACE_PLAIN = TRACE + r"ESMTP \(without TLS\); "

TLS_ARGS = {"plain": [], "tls": ["--tls"]}


def _mta(cls, workdir, name):
    base = workdir / name
    mta = cls(base)
    try:
        mta.start()
        yield mta
    finally:
        mta.stop()


@pytest.fixture(scope="module")
def exim_proxy(workdir):
    """Exim (exim4-daemon-heavy) with hosts_proxy = 127.0.0.1, relay_from_hosts = 127.0.0.1."""
    yield from _mta(EximProxy, workdir, "exim-proxy")


@pytest.fixture(scope="module")
def opensmtpd(workdir):
    """OpenSMTPD with `listen on 127.0.0.1 port N proxy-v2`, relaying for 127.0.0.1."""
    yield from _mta(OpenSmtpd, workdir, "opensmtpd")


def _per_mode(factory, mta, name):
    cache = {}

    def get(mode: str):
        if mode not in cache:
            cache[mode] = factory(f"{mta.host}:{mta.port}", mode, name=f"bp-{name}-{mode}")
        return cache[mode]
    return get


@pytest.fixture(scope="module")
def exim_bp(_module_blackponies, exim_proxy):
    """exim_bp(mode) -> one shared `blackpony inbound --identity MODE` in front of Exim."""
    return _per_mode(_module_blackponies, exim_proxy, "exim")


@pytest.fixture(scope="module")
def opensmtpd_bp(_module_blackponies, opensmtpd):
    """opensmtpd_bp(mode) -> one shared `blackpony inbound --identity MODE` in front of
    OpenSMTPD (proxy-v2 only: OpenSMTPD does not read v1)."""
    return _per_mode(_module_blackponies, opensmtpd, "opensmtpd")


def send(bp, variant: str, who: str):
    """swaks through bp from 127.0.0.77; returns (recipient, marker, swaks stdout)."""
    tok = token()
    to = rcpt(f"{who}-{variant}", tok)
    marker = f"body-marker-{tok}"
    res = swaks(bp.port, to, *TLS_ARGS[variant], body=f"Hello.\n{marker}\nBye.")
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
    out = res.stdout.decode(errors="replace")
    if variant == "tls":
        assert "TLS started with cipher TLSv1.3" in out, out
    return to, marker, out


def delivered(mta, bp, to: str, marker: str, variant: str) -> tuple[bytes, list[bytes], str]:
    """The one message for `to` in the MTA's Maildir, with its body intact and blackpony's
    trace header right below the MTA's own Received header. Returns (message, header
    fields, context for assertion messages)."""
    [(path, msg)] = mta.wait_messages(to)
    ctx = (f"\nmessage {path}:\n{msg.decode(errors='replace')}\n{mta.name} log:\n"
           f"{mta.log_tail(30)}\nblackpony log:\n{bp.log_text()[-3000:]}")
    assert marker.encode() in msg, "body not intact" + ctx
    trace = blackpony_received(msg)
    assert trace is not None, "no blackpony Received: header" + ctx
    want = TRACE_TLS if variant == "tls" else TRACE_PLAIN
    assert re.match(want.encode(), trace), f"trace header {trace!r}, expected {want!r}" + ctx
    fields = unfolded_headers(msg)
    received = [f for f in fields if f.lower().startswith(b"received:")]
    assert len(received) == 2 and received[1] == trace, ctx
    return msg, received, ctx


def try_relay(bp, tok: str, tls: bool):
    """From 127.0.0.77 through bp, MAIL and RCPT to a foreign domain; the RCPT reply."""
    victim = f"victim-{tok}@foreign.test"
    with smtplib.SMTP(bp.host, bp.port, local_hostname="relay.client.test",
                      source_address=(CLIENT_IP, 0), timeout=20) as s:
        s.ehlo()
        if tls:
            assert s.starttls(context=unverified_tls_context())[0] == 220
            code, text = s.ehlo()
            assert code == 250, f"EHLO after STARTTLS: {code} {text!r}"
        s.mail(f"spammer-{tok}@client.test")
        return s.rcpt(victim)


def relay_as_localhost(mta, tok: str):
    """Straight to the MTA, a PROXY v2 header claiming the client is 127.0.0.1 (what a
    sidecar that passed no address of its own would amount to): the RCPT reply for a
    foreign recipient. Nothing is sent: the session ends before DATA."""
    with RawSMTP(mta.host, mta.port, source="127.0.0.1") as c:
        c.send(proxy_v2_header("127.0.0.1", mta.host, 40000, mta.port))
        greeting = c.reply()
        assert greeting is not None and greeting.code == 220, (greeting, mta.log_tail())
        assert c.cmd("EHLO localhost").code == 250
        assert c.cmd("MAIL FROM:<local@localhost.test>").code == 250
        r = c.cmd(f"RCPT TO:<victim-{tok}@foreign.test>")
        c.cmd("RSET")
        c.cmd("QUIT")
        return r


# --------------------------------------------------------------------------------------
# Exim (exim4-daemon-heavy, hosts_proxy)
# --------------------------------------------------------------------------------------

EXIM_MODES = ["proxy-v2", "proxy-v1"]


@pytest.mark.parametrize("variant", list(TLS_ARGS))
@pytest.mark.parametrize("mode", EXIM_MODES)
def test_exim_delivers(exim_bp, exim_proxy, mode, variant):
    bp = exim_bp(mode)
    to, marker, out = send(bp, variant, f"exim-{mode}")
    m = re.search(r"<[-~] +250 OK id=(\S+)", out)
    assert m, "no Exim message id in the DATA reply:\n" + out
    msg_id = m.group(1)
    msg, received, ctx = delivered(exim_proxy, bp, to, marker, variant)
    # Exim's own trace header (host_lookup is off): the client's address as the PROXY
    # header gave it, and its HELO name.
    assert re.match(rb"^Received: from \[" + CLIENT_RE.encode() + rb"\] \(helo=client\.test\)"
                    rb" by exim\.test with esmtp \(Exim 4\.\d+\) .* id " + re.escape(msg_id.encode()),
                    received[0]), received[0] + ctx.encode()
    # Its log: the message came from 127.0.0.77, through the proxy at 127.0.0.1 (PRX=).
    line = exim_proxy.wait_log(rf"^.* {re.escape(msg_id)} <= a@client\.test .*$")
    assert re.search(rf" H=\(client\.test\) \[{CLIENT_RE}\] .* PRX=127\.0\.0\.1 ",
                     line.group(0)), line.group(0) + ctx
    exim_proxy.wait_log(rf" {re.escape(msg_id)} => \S+ <{re.escape(to)}> R=local_maildir ")


@pytest.mark.parametrize("variant", list(TLS_ARGS))
@pytest.mark.parametrize("mode", EXIM_MODES)
def test_exim_relay_refused(exim_bp, exim_proxy, mode, variant):
    bp = exim_bp(mode)
    tok = token()
    code, text = try_relay(bp, tok, tls=variant == "tls")
    ctx = (f"\nrcpt reply {code} {text!r}\nexim:\n{exim_proxy.log_tail(20)}\n"
           f"blackpony:\n{bp.log_text()[-2000:]}")
    assert code == 550 and b"relay not permitted" in text, ctx
    exim_proxy.wait_log(rf"H=\(relay\.client\.test\) \[{CLIENT_RE}\] .*rejected RCPT "
                        rf"<victim-{tok}@foreign\.test>: relay not permitted")


def test_exim_trusts_localhost_to_relay(exim_proxy):
    """The control: the same Exim lets a client it sees as 127.0.0.1 relay, so the refusals
    above are the PROXY address's doing, not a config that refuses everyone."""
    tok = token()
    r = relay_as_localhost(exim_proxy, tok)
    assert r.code == 250, f"{r}\n{exim_proxy.log_tail()}"


# --------------------------------------------------------------------------------------
# OpenSMTPD (listen on ... proxy-v2)
# --------------------------------------------------------------------------------------

def opensmtpd_session(opensmtpd, field: str, value: str) -> str:
    """The id of the OpenSMTPD session whose log has `field=value` (e.g. msgid=...)."""
    m = opensmtpd.wait_log(rf"^([0-9a-f]{{16}}) smtp \S+ .*\b{field}={re.escape(value)}\b")
    return m.group(1)


@pytest.mark.parametrize("variant", list(TLS_ARGS))
def test_opensmtpd_delivers(opensmtpd_bp, opensmtpd, variant):
    bp = opensmtpd_bp("proxy-v2")
    to, marker, out = send(bp, variant, "opensmtpd")
    m = re.search(r"<[-~] +250 2\.0\.0 ([0-9a-f]+) Message accepted for delivery", out)
    assert m, "no OpenSMTPD message id in the DATA reply:\n" + out
    msg_id = m.group(1)
    msg, received, ctx = delivered(opensmtpd, bp, to, marker, variant)
    # OpenSMTPD's own trace header: HELO name, no reverse name, the PROXY address.
    assert re.match(rb"^Received: from client\.test \(<unknown> \[" + CLIENT_RE.encode()
                    + rb"\]\) by opensmtpd\.test \(OpenSMTPD\) with ESMTP id "
                    + re.escape(msg_id.encode()) + rb" ", received[0]), received[0] + ctx.encode()
    # Its log: the session that took the message was connected from 127.0.0.77.
    session = opensmtpd_session(opensmtpd, "msgid", msg_id)
    opensmtpd.wait_log(rf"^{session} smtp connected address={CLIENT_RE} ")
    opensmtpd.wait_log(rf"^[0-9a-f]{{16}} mda delivery evpid={msg_id}[0-9a-f]* .* "
                       rf"rcpt=<{re.escape(to)}> .*result=Ok")


@pytest.mark.parametrize("variant", list(TLS_ARGS))
def test_opensmtpd_relay_refused(opensmtpd_bp, opensmtpd, variant):
    bp = opensmtpd_bp("proxy-v2")
    tok = token()
    code, text = try_relay(bp, tok, tls=variant == "tls")
    ctx = (f"\nrcpt reply {code} {text!r}\nopensmtpd:\n{opensmtpd.log_tail(20)}\n"
           f"blackpony:\n{bp.log_text()[-2000:]}")
    assert code == 550 and b"Invalid recipient" in text, ctx
    m = opensmtpd.wait_log(rf"^([0-9a-f]{{16}}) smtp failed-command "
                           rf"command=\"(?i:rcpt) TO:<victim-{tok}@foreign\.test>\" result=\"550 ")
    opensmtpd.wait_log(rf"^{m.group(1)} smtp connected address={CLIENT_RE} ")


def test_opensmtpd_trusts_localhost_to_relay(opensmtpd):
    """The control: this OpenSMTPD relays for a client it sees as 127.0.0.1."""
    tok = token()
    r = relay_as_localhost(opensmtpd, tok)
    assert r.code == 250, f"{r}\n{opensmtpd.log_tail()}"
