"""The `verify` TLS policy of blackpony's outbound side, with `blackpony deliver` on the fake
internet (interop/peers.py FakeInternet). A test CA (openssl, CA:TRUE) issued two server
certificates that a private Postfix serves with STARTTLS, each with its chain:

  verified.test   MX mx.verified.test   -> certificate for mx.verified.test (verifies with
                                           the test CA as trust anchor)
  wrongname.test  MX mx.wrongname.test  -> certificate for other.test from the same CA
  tls.test        MX mx.tls.test        -> self-signed certificate (no CA at all)

What is checked:
  - `--tls-policy verify` delivers only when the certificate verifies for the MX host name
    against the Mozilla roots plus `--tls-ca-file`; otherwise it defers (exit 75, 4.7.5
    "Server certificate of HOST not verified: REASON"), and the MX's own log shows the
    session got as far as TLS and never sent MAIL, on that connection or on another.
  - The log line says `verified=yes level=authenticated` or `verified=no (REASON)
    level=encrypted`, under every policy.
  - `[outbound]` tls_ca_file and `[outbound.domains]` in a `--config` file: one domain
    under verify, the rest under the default may.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from interop.clients import token
from interop.conftest import owned_dir
from interop.peers import NET_ADDR, header_block, wait_for
from interop.test_outbound import (arrived, deliver, log_line, make_message, show,
                                   status_line)

# domain -> (MX host, its address, the Postfix listener's syslog_name, why its certificate
# does not verify when it does not: without the CA file / with it; None = it verifies).
MX = {
    "verified.test": ("mx.verified.test", NET_ADDR["verified"], "postfix/verified",
                      "untrusted issuer", None),
    "wrongname.test": ("mx.wrongname.test", NET_ADDR["wrongname"], "postfix/wrongname",
                       "untrusted issuer", "name mismatch"),
    "tls.test": ("mx.tls.test", NET_ADDR["tls"], "postfix", "self-signed", "self-signed"),
}


def reason(domain: str, with_ca: bool):
    return MX[domain][4] if with_ca else MX[domain][3]


def ca_args(internet, with_ca: bool) -> list[str]:
    return ["--tls-ca-file", str(internet.ca_cert)] if with_ca else []


# --------------------------------------------------------------------------------------
# What the MX saw: its maillog, per listener (syslog_name)
# --------------------------------------------------------------------------------------

class MxSessions:
    """The smtpd sessions one listener of the MX Postfix logged after a point in time
    (created before the delivery, read after it)."""

    def __init__(self, pf, service: str):
        self.pf = pf
        self.service = service
        self.since = len(pf.log_text())

    def lines(self) -> list[str]:
        """This listener's lines of the sessions that connected after `since`: a session of
        an earlier test may log its disconnect late (the smtpd process id tells them apart)."""
        tag = f" {self.service}/smtpd["
        opened: set[str] = set()
        kept = []
        for l in self.pf.log_text()[self.since:].splitlines():
            if tag not in l:
                continue
            pid = l.split(tag, 1)[1].split("]", 1)[0]
            if " connect from " in l:
                opened.add(pid)
            if pid in opened:
                kept.append(l)
            if " disconnect from " in l:
                opened.discard(pid)
        return kept

    def wait_done(self, count: int = 1, timeout: float = 15) -> list[str]:
        """The new lines, once count sessions have ended (`disconnect from`)."""
        def done():
            lines = self.lines()
            return lines if sum(" disconnect from " in l for l in lines) >= count else None
        return wait_for(done, timeout, f"{count} finished session(s) of {self.service}/smtpd "
                        f"in {self.pf.maillog}\nmaillog tail:\n{self.pf.log_tail(30)}")


def check_tls_but_no_mail(mx: MxSessions, context: str):
    """Exactly one session, TLS established in it, and no MAIL/RCPT/DATA in it or anywhere
    else on that listener: the delivery was not attempted in plaintext, nor inside TLS."""
    mx.wait_done()
    # Give a second, plaintext connection (made right after the first) time to show up.
    time.sleep(1.0)
    lines = mx.lines()
    text = "\n".join(lines)
    context = f"\nMX log ({mx.service}/smtpd) since the delivery:\n{text}" + context
    connects = [l for l in lines if " connect from " in l]
    assert len(connects) == 1, f"expected ONE connection to the MX, got {len(connects)}" + context
    assert any("TLS connection established from" in l for l in lines), (
        "the MX logged no TLS handshake: STARTTLS was not done" + context)
    assert not any(re.search(r": client=", l) for l in lines), (
        "the MX created a queue file (a MAIL command was accepted)" + context)
    [disconnect] = [l for l in lines if " disconnect from " in l]
    assert " starttls=1" in disconnect, f"no successful STARTTLS counted: {disconnect}" + context
    for verb in ("mail", "rcpt", "data", "bdat"):
        assert f" {verb}=" not in disconnect, (
            f"{verb.upper()} was sent to the MX: {disconnect}" + context)


def check_tls_and_mail(mx: MxSessions, context: str):
    """One session, in TLS, that carried the message."""
    lines = mx.wait_done()
    text = "\n".join(lines)
    context = f"\nMX log ({mx.service}/smtpd) since the delivery:\n{text}" + context
    assert sum(" connect from " in l for l in lines) == 1, context
    assert any("TLS connection established from" in l for l in lines), context
    [disconnect] = [l for l in lines if " disconnect from " in l]
    assert " starttls=1" in disconnect and " mail=1" in disconnect, disconnect + context


def no_message(pf, rcpt: str):
    got = pf.messages(rcpt)
    assert not got, f"a message for {rcpt} arrived: {[str(p) for p, _ in got]}"


def relay_of(internet, domain: str) -> str:
    host, addr = MX[domain][0], MX[domain][1]
    return f"relay={host}[{addr}]:{internet.smtp_port} "


def check_sent(internet, res, rcpt: str, body: bytes, verified: bool, why: str | None):
    """A log line for a delivered recipient with the verdict, and the message in the
    MX's Maildir (received with ESMTPS)."""
    line = log_line(res, rcpt)
    domain = rcpt.split("@")[1]
    assert relay_of(internet, domain) in line, line + show(res)
    assert " status=sent (250 " in line, line + show(res)
    assert re.search(r" tls=TLSv1\.[23]/\S+ ", line), line + show(res)
    if verified:
        assert " verified=yes level=authenticated " in line, line + show(res)
    else:
        want = f" verified=no ({why}) level=encrypted "
        assert want in line, f"expected {want!r} in the log line:\n{line}" + show(res)
    stored = arrived(internet.postfix, rcpt, body)
    assert b"with ESMTPS" in header_block(stored), header_block(stored)


def check_deferred_unverified(internet, res, rcpt: str, why: str):
    """Exit 75, one 4.7.5 status line naming the MX host and the reason, and a deferred
    log line with the same reply."""
    domain = rcpt.split("@")[1]
    host = MX[domain][0]
    assert res.returncode == 75, show(res)
    status = status_line(res)
    want = f"Server certificate of {host} not verified: {why}"
    assert status.startswith("4.7.5 "), f"status line {status!r}, expected 4.7.5" + show(res)
    assert rcpt in status and want in status, (
        f"status line {status!r}, expected it to name {rcpt} and say {want!r}" + show(res))
    line = log_line(res, rcpt)
    assert " status=deferred (454 4.7.5 " in line and want in line, line + show(res)
    assert relay_of(internet, domain) in line, line + show(res)


def check_verdict_logged(res, rcpt: str, why: str):
    """The log line of a recipient deferred by verify carries the verdict as a delivered
    one does: the handshake was done (tls=TLSv1.x, level encrypted) and the certificate
    judged (verified=no (REASON))."""
    line = log_line(res, rcpt)
    verdict = f" verified=no ({why}) level=encrypted "
    assert verdict in line and re.search(r" tls=TLSv1\.[23]/\S+ ", line), (
        f"expected the log line to carry the TLS session and {verdict.strip()!r}:\n{line}"
        + show(res))


# --------------------------------------------------------------------------------------
# a. verify + the test CA: delivered, authenticated
# --------------------------------------------------------------------------------------

def test_verify_with_ca_file_delivers_authenticated(internet, workdir):
    tok = token()
    rcpt = f"va-{tok}@verified.test"
    message, body = make_message(tok, [rcpt])
    mx = MxSessions(internet.postfix, MX["verified.test"][2])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message,
                  "--tls-policy", "verify", "--tls-ca-file", str(internet.ca_cert))
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
    check_sent(internet, res, rcpt, body, verified=True, why=None)
    check_tls_and_mail(mx, show(res))


# --------------------------------------------------------------------------------------
# b/c. verify without a verifying certificate: deferred, never in plaintext
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,with_ca", [
    ("verified.test", False),   # untrusted issuer: the test CA is not among the roots
    ("wrongname.test", True),   # the CA is trusted, the certificate is for other.test
    ("tls.test", True),         # self-signed
], ids=["untrusted-issuer", "name-mismatch", "self-signed"])
def test_verify_unverified_certificate_defers_without_plaintext(internet, workdir, domain,
                                                                with_ca):
    why = reason(domain, with_ca)
    tok = token()
    rcpt = f"vb-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    state = owned_dir(workdir / f"state-{tok}")
    mx = MxSessions(internet.postfix, MX[domain][2])
    res = deliver(internet, state, [rcpt], message, "--tls-policy", "verify",
                  *ca_args(internet, with_ca))
    # What the MX saw first (it does not depend on how blackpony reports it).
    check_tls_but_no_mail(mx, show(res))
    no_message(internet.postfix, rcpt)
    check_deferred_unverified(internet, res, rcpt, why)

    # A certificate that does not verify is not a failed handshake: it must not be
    # remembered as one, or a later `may` delivery with the backoff over would skip
    # STARTTLS with a host whose TLS works.
    mx = MxSessions(internet.postfix, MX[domain][2])
    res = deliver(internet, state, [rcpt], message, "--tls-backoff", "0",
                  *ca_args(internet, with_ca))
    assert res.returncode == 0, show(res)
    check_sent(internet, res, rcpt, body, verified=False, why=why)
    check_tls_and_mail(mx, show(res))


@pytest.mark.parametrize("domain,with_ca", [
    ("verified.test", False),
    ("wrongname.test", True),
    ("tls.test", True),
], ids=["untrusted-issuer", "name-mismatch", "self-signed"])
def test_verify_deferral_logs_verdict(internet, workdir, domain, with_ca):
    why = reason(domain, with_ca)
    tok = token()
    rcpt = f"vc-{tok}@{domain}"
    message, _ = make_message(tok, [rcpt])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message,
                  "--tls-policy", "verify", *ca_args(internet, with_ca))
    assert res.returncode == 75, show(res)
    check_verdict_logged(res, rcpt, why)


# --------------------------------------------------------------------------------------
# d. the default policy may: the verdict is logged, delivery goes on
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,with_ca", [
    ("verified.test", True),
    ("verified.test", False),
    ("wrongname.test", True),
    ("tls.test", True),
    ("tls.test", False),
], ids=["verified-ca", "verified-no-ca", "wrongname-ca", "selfsigned-ca", "selfsigned-no-ca"])
def test_may_logs_verdict_and_delivers(internet, workdir, domain, with_ca):
    why = reason(domain, with_ca)
    tok = token()
    rcpt = f"vd-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    mx = MxSessions(internet.postfix, MX[domain][2])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message,
                  *ca_args(internet, with_ca))
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
    check_sent(internet, res, rcpt, body, verified=why is None, why=why)
    check_tls_and_mail(mx, show(res))


# --------------------------------------------------------------------------------------
# e. the config file: tls_ca_file and a per-domain verify policy
# --------------------------------------------------------------------------------------

def write_config(workdir: Path, tok: str, *, ca_file: Path | None) -> Path:
    conf = workdir / f"blackpony-{tok}.toml"
    ca_line = f'tls_ca_file = "{ca_file}"\n' if ca_file else ""
    conf.write_text('[outbound]\ntls_policy = "may"\n' + ca_line +
                    '\n[outbound.domains]\n"verified.test" = "verify"\n')
    return conf


@pytest.mark.parametrize("ca_from", ["file", "flag"])
def test_config_per_domain_verify_and_ca_file(internet, workdir, ca_from):
    """verified.test under verify (its certificate verifies with the CA from the file, or
    from --tls-ca-file next to a file without one), tls.test under the default may (a
    self-signed certificate): one message, both delivered, at their own levels."""
    tok = token()
    rcpts = [f"ve-{tok}@verified.test", f"vf-{tok}@tls.test"]
    message, body = make_message(tok, rcpts)
    conf = write_config(workdir, tok, ca_file=internet.ca_cert if ca_from == "file" else None)
    extra = ["--config", str(conf)]
    if ca_from == "flag":
        extra += ["--tls-ca-file", str(internet.ca_cert)]
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), rcpts, message, *extra)
    assert res.returncode == 0, show(res) + f"\n{conf}:\n{conf.read_text()}"
    assert status_line(res) == "2.0.0 delivered to 2 recipients", show(res)
    check_sent(internet, res, rcpts[0], body, verified=True, why=None)
    check_sent(internet, res, rcpts[1], body, verified=False, why="self-signed")


def test_config_per_domain_verify_is_enforced(internet, workdir):
    """The control: the same [outbound.domains] without any CA file. verified.test (under
    verify) is deferred and never gets MAIL; tls.test (default may) is delivered; exit 75."""
    tok = token()
    strict, other = f"vg-{tok}@verified.test", f"vh-{tok}@tls.test"
    message, body = make_message(tok, [strict, other])
    conf = write_config(workdir, tok, ca_file=None)
    mx = MxSessions(internet.postfix, MX["verified.test"][2])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [strict, other], message,
                  "--config", str(conf))
    context = show(res) + f"\n{conf}:\n{conf.read_text()}"
    check_tls_but_no_mail(mx, context)
    no_message(internet.postfix, strict)
    check_deferred_unverified(internet, res, strict, "untrusted issuer")
    check_sent(internet, res, other, body, verified=False, why="self-signed")


# --------------------------------------------------------------------------------------
# A CA file that cannot be used is an error, not "no CA file"
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["missing", "no-certificate"])
def test_unusable_ca_file_is_an_error(internet, workdir, kind):
    tok = token()
    rcpt = f"vi-{tok}@verified.test"
    message, _ = make_message(tok, [rcpt])
    bad = workdir / f"ca-{tok}.pem"
    if kind == "no-certificate":
        bad.write_text("this is not a PEM certificate\n")
    mx = MxSessions(internet.postfix, MX["verified.test"][2])
    res = deliver(internet, owned_dir(workdir / f"state-{tok}"), [rcpt], message,
                  "--tls-policy", "verify", "--tls-ca-file", str(bad))
    assert res.returncode != 0, (
        "an unusable --tls-ca-file must stop blackpony, not be taken as no CA file"
        + show(res))
    assert str(bad) in res.stdout.decode(errors="replace") + res.stderr.decode(
        errors="replace"), "the error does not name the CA file" + show(res)
    assert not mx.lines(), f"blackpony connected to the MX anyway: {mx.lines()}" + show(res)
    no_message(internet.postfix, rcpt)
