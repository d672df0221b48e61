"""docs/recipes/sendmail.md against Debian's sendmail 8.17 (unpacked from sendmail-bin and
run privately: interop/sendmail_mta.py), with the recipe's m4 blocks read from the recipe.

One sendmail serves both directions, as on a real host: its MTA daemon on a test port
stands for Debian's 127.0.0.1:25 (local submission, relaying for 127.0.0.1 as Debian's
does), the recipe's `blackpony` daemon is where the sidecar connects, and SMART_HOST plus a
mailertable hand everything that is not local to the recipe's `blackpony lmtp` mailer,
which delivers into the fake internet (interop/peers.py FakeInternet).

Inbound: swaks from 127.0.0.77 through `blackpony inbound --identity none` (plain and
STARTTLS at the sidecar) into nobody's mailbox; a foreign recipient through the sidecar is
refused by the recipe's check, and so are the %-hack and source-route forms; the control:
the same sendmail, behind a sidecar pointed at its MTA daemon as the old README said,
relays to the foreign recipient (250).

Outbound: a message submitted to sendmail reaches the MX (mailer=blackpony, stat=Sent);
a 450 from the MX leaves it in sendmail's queue; a 550 bounces to the sender with the MX's
text; one message to all three gets the three results; the mailer (run as `mail`) logs to
syslog, never into the LMTP pipe.
"""

from __future__ import annotations

import os
import pwd
import re
import smtplib

import pytest

from interop.clients import swaks, token, transcript, unverified_tls_context
from interop.conftest import HOSTNAME
from interop.peers import (CLIENT_IP, REFUSED_LOCALPART, Blackpony, blackpony_bin,
                           blackpony_received, free_port, keygen,
                           unfolded_headers, wait_for)
from interop.sendmail_mta import (HOSTNAME as SENDMAIL_HOST, LOCAL_DOMAIN, MAILBOX_USER,
                                  Sendmail, recipe_block, replace_checked)

CLIENT_RE = re.escape(CLIENT_IP)
TRACE = (r"^Received: from client\.test \(unknown \[" + CLIENT_RE + r"\]\) by "
         + re.escape(HOSTNAME) + r" \(blackpony\) with ")
TRACE_TLS = TRACE + r"ESMTPS \(TLSv1\.3 TLS_[A-Z0-9_]+\); "
TRACE_PLAIN = TRACE + r"ESMTP \(without TLS\); "
TLS_ARGS = {"plain": [], "tls": ["--tls"]}
SENDER = f"{MAILBOX_USER}@{LOCAL_DOMAIN}"
MAILER_DEFAULT_USER = "mail"  # Debian's confDEF_USER_ID mail:mail: who runs the mailer


@pytest.fixture(scope="module")
def sendmail(workdir, internet):
    """sendmail with the recipe's inbound daemon and check, and its outbound mailer."""
    base = workdir / "sendmail"
    base.mkdir()
    os.chmod(base, 0o755)
    mail = pwd.getpwnam(MAILER_DEFAULT_USER)
    # The recipe's step 1: a state directory and a host key the mailer's user can use.
    state = base / "blackpony-state"
    state.mkdir()
    os.chown(state, mail.pw_uid, mail.pw_gid)
    os.chmod(state, 0o750)
    # Its own copy of the key, private to it (a group-readable key is refused, §7).
    key = keygen(state / "host.key", SENDMAIL_HOST)
    os.chown(key.path, mail.pw_uid, mail.pw_gid)
    os.chmod(key.path, 0o600)
    config = base / "blackpony.toml"
    config.write_text(f'[outbound]\ndns = "{internet.dns.address}"\n'
                      f'helo_name = "{SENDMAIL_HOST}"\n')
    os.chmod(config, 0o644)

    sidecar_port = free_port()
    daemon = replace_checked(recipe_block("dnl blackpony inbound: the daemon the sidecar "
                                          "connects to"),
                             "Port=10025,", f"Port={sidecar_port},")
    routes = recipe_block("dnl blackpony outbound: where mail goes")
    mailer = recipe_block("dnl blackpony outbound: the mailer")
    mailer = replace_checked(mailer, "P=/usr/local/bin/blackpony,", f"P={blackpony_bin()},")
    mailer = replace_checked(mailer, "--config /etc/blackpony/blackpony.toml",
                             f"--config {config}")
    mailer = replace_checked(mailer, "--state-dir /var/lib/blackpony/sendmail",
                             f"--state-dir {state}")
    mailer = replace_checked(mailer, "--host-key /var/lib/blackpony/sendmail/host.key",
                             f"--host-key {key.path}")
    # The fake internet's MX hosts listen on a test port (a hidden, test-only flag).
    mailer = replace_checked(mailer, " lmtp --state-dir", f" lmtp --smtp-port {internet.smtp_port} --state-dir")
    rules = recipe_block("dnl blackpony inbound: no relaying for mail that came through "
                         "the sidecar")
    # plain.test goes through the mailertable (a host label of its own, so `-bv` shows
    # which route was taken); every other domain through SMART_HOST.
    sm = Sendmail(base, before_mailers=daemon + routes, after_mailers=mailer + rules,
                  mailertable="plain.test\tblackpony:mailertable\n", ports=(sidecar_port,))
    sm.sidecar_port = sidecar_port
    sm.start()
    try:
        yield sm
    finally:
        sm.stop()


def _sidecar(workdir, backend_port: int, name: str):
    bp = Blackpony(workdir / "logs", backend=f"127.0.0.1:{backend_port}", identity="none",
                   args=["--hostname", HOSTNAME], name=name)
    bp.start()
    try:
        yield bp
    finally:
        bp.stop()


@pytest.fixture(scope="module")
def sidecar(workdir, sendmail):
    """The recipe: `blackpony inbound --identity none` in front of the `blackpony` daemon."""
    yield from _sidecar(workdir, sendmail.sidecar_port, "bp-sendmail")


@pytest.fixture(scope="module")
def readme_sidecar(workdir, sendmail):
    """What the README used to say: the sidecar in front of sendmail's usual daemon."""
    yield from _sidecar(workdir, sendmail.port, "bp-sendmail-readme")


def ctx(sendmail, bp=None) -> str:
    out = f"\nsendmail log:\n{sendmail.log_tail(30)}"
    if bp is not None:
        out += f"\nblackpony log:\n{bp.log_text()[-2000:]}"
    return out


# --------------------------------------------------------------------------------------
# Inbound: blackpony inbound in front of sendmail
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(TLS_ARGS))
def test_inbound_delivers(sidecar, sendmail, variant):
    tok = token()
    to = f"{MAILBOX_USER}+{variant}-{tok}@{LOCAL_DOMAIN}"
    marker = f"body-marker-{tok}"
    res = swaks(sidecar.port, to, *TLS_ARGS[variant], body=f"Hello.\n{marker}\nBye.")
    assert res.returncode == 0, transcript(res) + ctx(sendmail, sidecar)
    out = res.stdout.decode(errors="replace")
    if variant == "tls":
        assert "TLS started with cipher TLSv1.3" in out, out
    m = re.search(r"<[-~] +250 2\.0\.0 (\w+) Message accepted for delivery", out)
    assert m, "no sendmail queue id in the DATA reply:\n" + out
    qid = m.group(1)
    [(_, msg)] = sendmail.wait_messages(to)
    where = f"\nmessage:\n{msg.decode(errors='replace')}" + ctx(sendmail, sidecar)
    assert marker.encode() in msg, "body not intact" + where
    received = [f for f in unfolded_headers(msg) if f.lower().startswith(b"received:")]
    trace = blackpony_received(msg)
    want = TRACE_TLS if variant == "tls" else TRACE_PLAIN
    assert trace is not None and re.match(want.encode(), trace), where
    # sendmail's own header on top: it saw the sidecar (127.0.0.1), the HELO, its queue id.
    assert len(received) == 2 and received[1] == trace, where
    assert re.match(rb"^Received: from client\.test \(localhost \[127\.0\.0\.1\]\)\s+by "
                    + re.escape(SENDMAIL_HOST.encode()) + rb" \(8\.17\.[\d.]+/.*\) with ESMTP id "
                    + qid.encode() + rb"\s+for <" + re.escape(to.encode()) + rb">;",
                    received[0]), where
    # Its log: the message came in on the recipe's daemon, and mail.local delivered it.
    sendmail.wait_log(rf"{qid}: from=<a@client\.test>, .* daemon=blackpony, "
                      rf"relay=localhost \[127\.0\.0\.1\]")
    sendmail.wait_log(rf"{qid}: to=<{re.escape(to)}>, .* mailer=local, .* stat=Sent")


def try_rcpt(port: int, recipient: str, tls: bool) -> tuple[int, bytes]:
    """From 127.0.0.77, MAIL and RCPT through a sidecar; the RCPT reply. Nothing is sent."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="relay.client.test",
                      source_address=(CLIENT_IP, 0), timeout=30) as s:
        s.ehlo()
        if tls:
            assert s.starttls(context=unverified_tls_context())[0] == 220
            assert s.ehlo()[0] == 250
        assert s.mail(f"spammer-{token()}@client.test")[0] == 250
        reply = s.docmd("RCPT", f"TO:<{recipient}>")  # as given (smtplib's rcpt() would
        s.rset()                                     # mangle a source route)
        return reply


@pytest.mark.parametrize("variant", list(TLS_ARGS))
def test_inbound_relay_refused(sidecar, sendmail, variant):
    victim = f"victim-{token()}@foreign.test"
    code, text = try_rcpt(sidecar.port, victim, tls=variant == "tls")
    assert (code, text) == (550, f"5.7.1 <{victim}>... Relaying denied".encode()), (
        f"{code} {text!r}" + ctx(sendmail, sidecar))
    sendmail.wait_log(rf"ruleset=check_rcpt, arg1=<{re.escape(victim)}>, "
                      rf"relay=localhost \[127\.0\.0\.1\], reject=550 5\.7\.1 ")


@pytest.mark.parametrize("form", ["percent", "source-route"])
def test_inbound_relay_tricks_refused(sidecar, sendmail, form):
    """Addresses that look local but route elsewhere (the %-hack, an RFC 821 source
    route) are refused too: the check is sendmail's own recipient check."""
    tok = token()
    victim = {"percent": f"victim-{tok}%foreign.test@{LOCAL_DOMAIN}",
              "source-route": f"@{LOCAL_DOMAIN}:victim-{tok}@foreign.test"}[form]
    code, text = try_rcpt(sidecar.port, victim, tls=False)
    assert code == 550 and b"Relaying denied" in text, f"{code} {text!r}" + ctx(sendmail)


def test_readme_sidecar_is_an_open_relay(readme_sidecar, sendmail):
    """The control: the same sendmail behind a sidecar pointed at its usual daemon (the
    old README's set-up) accepts a foreign recipient from the internet: the recipe's
    daemon and check are what refuse it above."""
    victim = f"victim-{token()}@foreign.test"
    code, text = try_rcpt(readme_sidecar.port, victim, tls=False)
    assert code == 250, f"{code} {text!r}" + ctx(sendmail, readme_sidecar)


# --------------------------------------------------------------------------------------
# Outbound: sendmail hands its mail to `blackpony lmtp`
# --------------------------------------------------------------------------------------

def submit(sendmail, recipients: list[str], marker: str) -> str:
    """Local submission to sendmail's MTA daemon from 127.0.0.1, as Debian's MSP does;
    the queue id."""
    msg = (f"From: {SENDER}\r\nTo: {', '.join(recipients)}\r\nSubject: {marker}\r\n\r\n"
           f"Hello.\r\n{marker}\r\n")
    with smtplib.SMTP("127.0.0.1", sendmail.port, local_hostname="localhost",
                      timeout=60) as s:
        s.ehlo()
        s.mail(SENDER)
        for r in recipients:
            code, text = s.rcpt(r)
            assert code == 250, f"RCPT {r}: {code} {text!r}" + ctx(sendmail)
        code, text = s.data(msg.encode())
    assert code == 250, f"DATA: {code} {text!r}" + ctx(sendmail)
    m = re.match(rb"2\.0\.0 (\w+) Message accepted", text)
    assert m, text
    return m.group(1).decode()


def result(sendmail, qid: str, recipient: str, timeout: float = 90) -> str:
    """sendmail's log line for the delivery attempt of recipient in message qid."""
    return sendmail.wait_log(rf"^.*{qid}: to=<?{re.escape(recipient)}>?,.* stat=.*$",
                             timeout).group(0)


def bounce_for(sendmail, qid: str, timeout: float = 60) -> bytes:
    """The delivery status notification sendmail sent back to the sender for qid."""
    def found():
        for _, msg in sendmail.messages():
            if b"MAILER-DAEMON" in msg and f"{qid}".encode() in msg:
                return msg
        return None
    return wait_for(found, timeout, f"a bounce for {qid} in {MAILBOX_USER}'s mailbox"
                    + ctx(sendmail))


def test_outbound_routes(sendmail):
    """SMART_HOST sends every other domain to the mailer, the mailertable one domain."""
    for addr, host in (("x@tls.test", "localhost"), ("x@plain.test", "mailertable")):
        res = sendmail.run("-bv", addr)
        out = res.stdout.decode(errors="replace")
        assert f"deliverable: mailer blackpony, host {host}, user {addr}" in out, (
            transcript(res))


def test_outbound_delivered(sendmail, internet):
    tok = token()
    to = f"ok-{tok}@tls.test"
    qid = submit(sendmail, [to], f"marker-{tok}")
    line = result(sendmail, qid, to)
    assert re.search(r", mailer=blackpony, .*dsn=2\.0\.0, stat=Sent$", line), (
        line + ctx(sendmail))
    [(_, msg)] = internet.postfix.wait_messages(to)
    assert f"marker-{tok}".encode() in msg
    # The mailer logged to syslog (the namespace's /dev/log), not into the LMTP pipe.
    sendmail.wait_log(rf"blackpony/lmtp\[\d+\]: to=<{re.escape(to)}> relay=mx\.tls\.test"
                      rf"\[127\.0\.10\.2\]:\d+ tls=TLSv1\.3/\S+ .*status=sent")
    # It ran as U= says (F=S: not as the local sender, nobody), and gave up the real uid
    # root that sendmail leaves a F=S mailer.
    mail = pwd.getpwnam(MAILER_DEFAULT_USER)
    sendmail.wait_log(rf"blackpony/lmtp\[\d+\]: started with real uid 0 gid \d+: now uid "
                      rf"{mail.pw_uid} gid {mail.pw_gid} only")
    state = sendmail.base / "blackpony-state"
    assert all(p.stat().st_uid == mail.pw_uid for p in state.iterdir()), list(state.iterdir())


def test_outbound_tempfail_stays_queued(sendmail):
    tok = token()
    to = f"later-{tok}@tempfail.test"
    qid = submit(sendmail, [to], f"marker-{tok}")
    line = result(sendmail, qid, to)
    # The MX's own reply, passed on by blackpony's LMTP reply for this recipient.
    assert re.search(r", mailer=blackpony, .*dsn=4\.3\.0, reply=450 4\.3\.0 .*, "
                     r"stat=Deferred: 450 4\.3\.0 ", line), (
        line + ctx(sendmail))
    listing = sendmail.queue_listing()
    assert qid in listing and to in re.findall(r"(?m)^\s+<(\S+)>\s*$", listing), listing
    assert (sendmail.queue_dir / f"qf{qid}").exists(), list(sendmail.queue_dir.iterdir())


def test_outbound_permanent_failure_bounces(sendmail):
    tok = token()
    to = f"{REFUSED_LOCALPART}-{tok}@tls.test"
    qid = submit(sendmail, [to], f"marker-{tok}")
    line = result(sendmail, qid, to)
    assert re.search(rf", mailer=blackpony, .*dsn=5\.7\.1, reply=550 5\.7\.1 <{re.escape(to)}>: "
                     r"Recipient address rejected: refused by the interop MX policy, stat=",
                     line), line + ctx(sendmail)
    dsn = bounce_for(sendmail, qid)
    assert to.encode() in dsn and b"refused by the interop MX policy" in dsn, dsn
    # Bounced, the message leaves the queue (once the DSN is queued on its own).
    wait_for(lambda: not (sendmail.queue_dir / f"qf{qid}").exists(), 30,
             f"qf{qid} to leave the queue")


def test_outbound_mixed_recipients(sendmail, internet):
    """One message, three recipients, three outcomes: each recipient gets its own."""
    tok = token()
    ok, refused, later = (f"ok-{tok}@tls.test", f"{REFUSED_LOCALPART}-{tok}@tls.test",
                          f"later-{tok}@tempfail.test")
    qid = submit(sendmail, [ok, refused, later], f"marker-{tok}")
    assert re.search(r"dsn=2\.0\.0, stat=Sent$", result(sendmail, qid, ok))
    assert re.search(r"dsn=5\.7\.1, reply=550 5\.7\.1 ", result(sendmail, qid, refused))
    assert re.search(r"stat=Deferred: 450 4\.3\.0 ", result(sendmail, qid, later))
    internet.postfix.wait_messages(ok)
    dsn = bounce_for(sendmail, qid)
    assert refused.encode() in dsn and b"refused by the interop MX policy" in dsn, dsn
    # Only the deferred recipient is left in the queue.
    listing = sendmail.queue_listing()
    queued = re.findall(r"(?m)^\s+<(\S+)>\s*$", listing)
    assert later in queued and ok not in queued and refused not in queued, listing
