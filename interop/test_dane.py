"""DANE for SMTP (RFC 7672) in `blackpony deliver --tls-policy dane|dane-only`, against real
DNSSEC and a real Postfix MX:

  nsd serves dane.test, signed with ldns-signzone (Ed25519 KSK + ZSK; `--dnssec FILE` trusts
  its DNSKEYs), and unsigned.dane.test, delegated from it without a DS record (insecure).
  A private Postfix serves STARTTLS on DANE_ADDR["tls"] with a certificate issued by a
  private CA (openssl) for every mx.*.dane.test name but mx.taname.dane.test, its chain
  (leaf + CA) included, and no TLS at all on DANE_ADDR["plain"].

  domain                MX host                   its TLSA records (_25._tcp.<MX host>)
  ee.dane.test          mx.ee.dane.test           3 1 1 SHA-256 of the leaf's public key
  ta.dane.test          mx.ta.dane.test           2 0 1 SHA-256 of the private CA certificate
  taname.dane.test      mx.taname.dane.test       2 0 1 the CA, but the leaf does not name the host
  wrong.dane.test       mx.wrong.dane.test        3 1 1 of another key
  notls.dane.test       mx.notls.dane.test        3 1 1 of the leaf, but the host has no STARTTLS
  bogus.dane.test       mx.bogus.dane.test        3 1 1 of the leaf, changed after signing (bogus)
  bogusmx.dane.test     mx.bogusmx.dane.test      the MX record changed after signing (bogus)
  nodane.dane.test      mx.nodane.dane.test       none
  unusable.dane.test    mx.unusable.dane.test     1 1 1 of the leaf (PKIX-EE: unusable for SMTP)
  unsigned.dane.test    mx.unsigned.dane.test     3 1 1 of another key, in the unsigned zone

Each test checks the outcome (exit code, the status line and `dane:` log line, the
message in the MX's Maildir or not) and, where the host must not get the message, what
the MX itself logged: a failed match never turns into plaintext or into MAIL.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from interop.clients import token
from interop.conftest import owned_dir
from interop.peers import (Postfix, SignedZone, common_free_port, make_ca_signed_cert,
                           make_test_ca, run_deliver)
from interop.test_outbound import SENDER, arrived, log_line, make_message, show
from interop.test_outbound_verify import MxSessions, no_message

ZONE = "dane.test"
UNSIGNED = f"unsigned.{ZONE}"
# The MX Postfix: a STARTTLS listener and one without TLS; nsd on its own address.
DANE_ADDR = {"tls": "127.0.30.2", "plain": "127.0.30.3", "dns": "127.0.30.53"}
# domain label -> where its MX host listens.
SCENARIOS = {"ee": "tls", "ta": "tls", "taname": "tls", "wrong": "tls", "notls": "plain",
             "bogus": "tls", "bogusmx": "tls", "nodane": "tls", "unusable": "tls"}
DOMAINS = (*(f"{label}.{ZONE}" for label in SCENARIOS), UNSIGNED)
# The CA-issued certificate names every MX host but this one (DANE-TA checks names).
UNNAMED = f"mx.taname.{ZONE}"


def mx_of(domain: str) -> str:
    return f"mx.{domain}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest().upper()


def der_of(pem: Path) -> tuple[bytes, bytes]:
    """(certificate DER, SubjectPublicKeyInfo DER) of the first certificate in a PEM file."""
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_bytes(serialization.Encoding.DER), spki


class DaneNet:
    """The signed zone, its unsigned child and the MX Postfix; started and stopped
    together."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.port = common_free_port([DANE_ADDR["tls"], DANE_ADDR["plain"]])
        ca = make_test_ca(self.base / "ca", "blackpony DANE test CA")
        names = [mx_of(d) for d in DOMAINS if mx_of(d) != UNNAMED]
        self.chain, self.key = make_ca_signed_cert(self.base / "ca", names[0], ca,
                                                   alt_names=names[1:])
        _, leaf_spki = der_of(self.chain)
        ca_der, _ = der_of(ca[0])
        other = make_test_ca(self.base / "other", "a key nobody uses")[0]
        _, other_spki = der_of(other)
        self.leaf_311 = f"3 1 1 {sha256(leaf_spki)}"
        tlsa = {"ee": self.leaf_311, "ta": f"2 0 1 {sha256(ca_der)}",
                "taname": f"2 0 1 {sha256(ca_der)}", "wrong": f"3 1 1 {sha256(other_spki)}",
                "notls": self.leaf_311, "bogus": self.leaf_311,
                "bogusmx": self.leaf_311, "unusable": f"1 1 1 {sha256(leaf_spki)}"}
        records = []
        for label, where in SCENARIOS.items():
            records.append(f"{label} IN MX 10 mx.{label}\nmx.{label} IN A {DANE_ADDR[where]}\n")
            if label in tlsa:
                records.append(f"_25._tcp.mx.{label} IN TLSA {tlsa[label]}\n")
        unsigned = (f"@ IN MX 10 mx\nmx IN A {DANE_ADDR['tls']}\n"
                    f"_25._tcp.mx IN TLSA 3 1 1 {sha256(other_spki)}\n")
        self.zone = SignedZone(self.base / "zone", ZONE, "".join(records), host=DANE_ADDR["dns"],
                               tamper_rr=[(f"_25._tcp.mx.bogus.{ZONE}", "TLSA"),
                                          (f"bogusmx.{ZONE}", "MX")],
                               unsigned={UNSIGNED: unsigned})
        pf_base = self.base / "postfix-mx"
        pf_base.mkdir(exist_ok=True)
        self.postfix = Postfix(
            pf_base, host=DANE_ADDR["tls"], port=self.port, domains=DOMAINS,
            listeners=[(DANE_ADDR["plain"], self.port, {"smtpd_tls_security_level": "none",
                                                         "syslog_name": "postfix/notls"})],
            settings={"myhostname": f"mx.ee.{ZONE}", "mydomain": ZONE, "myorigin": ZONE,
                      "smtpd_tls_security_level": "may",
                      "smtpd_tls_cert_file": str(self.chain),
                      "smtpd_tls_key_file": str(self.key),
                      "smtpd_tls_loglevel": "1",
                      "smtpd_banner": "$myhostname ESMTP Postfix (blackpony DANE interop MX)"},
            services="tlsmgr    unix  -       -       n       1000?   1       tlsmgr")

    def start(self):
        self.zone.start()
        try:
            self.postfix.start()
        except Exception:
            self.zone.stop()
            raise
        return self

    def stop(self):
        try:
            self.postfix.stop()
        finally:
            self.zone.stop()


@pytest.fixture(scope="module")
def dane_net(workdir):
    net = DaneNet(workdir / "dane")
    net.start()
    try:
        yield net
    finally:
        net.stop()


def send(net: DaneNet, workdir: Path, domain: str, policy: str, dnssec: str | None = None):
    """`blackpony deliver --dnssec ANCHORS (or dnssec) --tls-policy POLICY` of a fresh
    message to DOMAIN: (result, recipient, body)."""
    tok = token()
    rcpt = f"dane-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    state = owned_dir(workdir / f"state-dane-{tok}")
    args = ["--dns", net.zone.address, "--smtp-port", str(net.port), "--helo-name",
            "client.test", "--state-dir", str(state), "--tls-policy", policy,
            "--dnssec", dnssec or str(net.zone.anchors), "-f", SENDER, "--", rcpt]
    return run_deliver(args, message), rcpt, body


def dane_line(res, host: str) -> str:
    lines = [l for l in res.stderr.decode(errors="replace").splitlines()
             if f"dane: {host}: " in l]
    assert len(lines) == 1, f"expected one 'dane: {host}:' line, got {lines!r}" + show(res)
    return lines[0]


def check_sent(res, rcpt: str, *words: str) -> str:
    assert res.returncode == 0, show(res)
    line = log_line(res, rcpt)
    assert "status=sent" in line, line + show(res)
    for w in words:
        assert w in line, f"{w!r} not in {line!r}" + show(res)
    return line


def check_deferred(res, rcpt: str, *words: str) -> str:
    assert res.returncode == 75, show(res)  # EX_TEMPFAIL: the MTA keeps it and retries
    line = log_line(res, rcpt)
    assert "status=deferred" in line, line + show(res)
    for w in words:
        assert w in line, f"{w!r} not in {line!r}" + show(res)
    return line


def no_session(mx: MxSessions, context: str):
    """Nothing connected to the MX: the host was given up before any connection."""
    time.sleep(1.0)
    lines = mx.lines()
    assert not any(" connect from " in l for l in lines), (
        "the MX was connected to:\n" + "\n".join(lines) + context)


def one_session_without_mail(mx: MxSessions, context: str) -> list[str]:
    """Exactly one connection and no MAIL in it (nor in another, plaintext, one)."""
    lines = mx.wait_done()
    time.sleep(1.0)  # a second, plaintext, connection would show up by now
    lines = mx.lines()
    text = "\n".join(lines)
    context = f"\nMX log ({mx.service}/smtpd):\n{text}" + context
    assert sum(" connect from " in l for l in lines) == 1, "not ONE connection" + context
    assert not any(": client=" in l for l in lines), "the MX accepted a MAIL" + context
    [disconnect] = [l for l in lines if " disconnect from " in l]
    for verb in ("mail", "rcpt", "data", "bdat"):
        assert f" {verb}=" not in disconnect, f"{verb.upper()} was sent" + context
    return lines


# --------------------------------------------------------------------------------------
# Usable TLSA records: TLS required, the certificate must match
# --------------------------------------------------------------------------------------

def test_dane_ee_3_1_1_delivers_authenticated(dane_net, workdir):
    """3 1 1 of the leaf's key: delivered over TLS, `verified=yes (DANE-EE)
    level=authenticated` (no CA is given to blackpony: DANE alone vouches)."""
    domain = f"ee.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, f"relay={mx_of(domain)}[{DANE_ADDR['tls']}]",
               "verified=yes (DANE-EE) level=authenticated")
    assert f"usable (1 of 1 TLSA records: {dane_net.leaf_311})" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)
    lines = mx.wait_done()
    assert any("TLS connection established from" in l for l in lines), "\n".join(lines)
    # dane-only: the same.
    res, rcpt, body = send(dane_net, workdir, domain, "dane-only")
    check_sent(res, rcpt, "verified=yes (DANE-EE) level=authenticated")
    arrived(dane_net.postfix, rcpt, body)


def test_dane_ta_2_0_1_private_ca_delivers_authenticated(dane_net, workdir):
    """2 0 1 of the private CA that issued the leaf (sent in the chain) and a leaf that
    names the MX host: delivered, `verified=yes (DANE-TA) level=authenticated`."""
    domain = f"ta.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "verified=yes (DANE-TA) level=authenticated")
    assert "usable (1 of 1 TLSA records: 2 0 1 " in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)


def test_dane_ta_name_mismatch_deferred(dane_net, workdir):
    """DANE-TA checks names (RFC 7672 §3.2.2): the CA matches, but the leaf names neither
    the MX host nor the domain: deferred, no MAIL."""
    domain = f"taname.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.5", "does not match its TLSA records (DANE)",
                   f"names none of {mx_of(domain)}, {domain}", "level=plaintext")
    one_session_without_mail(mx, show(res))
    no_message(dane_net.postfix, rcpt)


def test_non_matching_tlsa_deferred_never_plaintext(dane_net, workdir):
    """3 1 1 of another key: the handshake is refused, the host deferred (4.7.5), and
    blackpony neither sends MAIL nor comes back without TLS, under dane and dane-only."""
    domain = f"wrong.{ZONE}"
    for policy in ("dane", "dane-only"):
        mx = MxSessions(dane_net.postfix, "postfix")
        res, rcpt, _ = send(dane_net, workdir, domain, policy)
        check_deferred(res, rcpt, f"relay={mx_of(domain)}[{DANE_ADDR['tls']}]", "4.7.5",
                       "does not match its TLSA records (DANE): no TLSA record matches")
        one_session_without_mail(mx, show(res))
        no_message(dane_net.postfix, rcpt)


def test_usable_tlsa_without_starttls_deferred(dane_net, workdir):
    """A host with usable TLSA records that does not offer STARTTLS is deferred (RFC 7672
    §2.2: TLS is mandatory), never delivered in plaintext."""
    domain = f"notls.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix/notls")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.4 TLS is required by DANE (usable TLSA records) but",
                   "did not offer STARTTLS")
    one_session_without_mail(mx, show(res))
    no_message(dane_net.postfix, rcpt)


# --------------------------------------------------------------------------------------
# Bogus answers: the host is deferred without being connected to
# --------------------------------------------------------------------------------------

def test_bogus_tlsa_deferred_without_connecting(dane_net, workdir):
    """TLSA records changed after signing fail validation: the host is deferred and never
    connected to, under dane (not the fallback to `may`)."""
    domain = f"bogus.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.5", "DANE", "bogus")
    assert "failed (" in dane_line(res, mx_of(domain))
    no_session(mx, show(res))
    no_message(dane_net.postfix, rcpt)


def test_bogus_mx_deferred(dane_net, workdir):
    """An MX record changed after signing: the domain is deferred (RFC 7672 §2.2.1)."""
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, f"bogusmx.{ZONE}", "dane")
    check_deferred(res, rcpt, "bogus")
    no_session(mx, show(res))
    no_message(dane_net.postfix, rcpt)


# --------------------------------------------------------------------------------------
# DANE that does not apply: the configured policy's fallback
# --------------------------------------------------------------------------------------

def test_tlsa_in_unsigned_zone_ignored(dane_net, workdir):
    """The TLSA records of a host in an unsigned zone (they name another key) are ignored:
    under dane the delivery is opportunistic TLS (`may`), encrypted, not authenticated; the
    log says why DANE was not used. Under dane-only it is deferred without a connection."""
    domain = UNSIGNED
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "verified=no (untrusted issuer) level=encrypted")
    assert "not used (the MX RRset is not signed)" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)

    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane-only")
    check_deferred(res, rcpt, "4.7.5", "policy dane-only, but DANE does not apply",
                   "the MX RRset is not signed")
    no_session(mx, show(res))


def test_no_tlsa_records_dane_falls_back_dane_only_defers(dane_net, workdir):
    """A signed zone without TLSA records: dane delivers as `may` would, dane-only defers
    (Postfix's names and meaning)."""
    domain = f"nodane.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "level=encrypted")
    assert "not used (no TLSA records)" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)

    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane-only")
    check_deferred(res, rcpt, "policy dane-only, but DANE does not apply: no TLSA records")
    no_session(mx, show(res))
    no_message(dane_net.postfix, rcpt)


def test_unusable_tlsa_encrypt_without_authentication(dane_net, workdir):
    """Only a PKIX-EE(1) record, unusable for SMTP (RFC 7672 §3.1.3): TLS is still
    mandatory but unauthenticated (RFC 7672 §2.2), so the delivery is `encrypted`;
    dane-only defers."""
    domain = f"unusable.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "level=encrypted")
    assert "unusable (1 TLSA records, none usable: 1 1 1 " in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)

    res, rcpt, _ = send(dane_net, workdir, domain, "dane-only")
    check_deferred(res, rcpt, "none of its TLSA records is usable")
    no_message(dane_net.postfix, rcpt)


def test_dane_needs_validation(dane_net, workdir):
    """Without `--dnssec` nothing is secure: dane is `may`, dane-only defers everything."""
    domain = f"ee.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane", dnssec="off")
    check_sent(res, rcpt, "level=encrypted")
    assert "not used (DNSSEC validation is off" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)
