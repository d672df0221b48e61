"""The DANE test internet, shared by test_dane.py, test_probe.py and the DANE-with-MTA-STS
tests (fixture `dane_net` in conftest.py):

  nsd serves dane.test, signed with ldns-signzone (Ed25519 KSK + ZSK; `--dnssec FILE` trusts
  its DNSKEYs), and unsigned.dane.test, delegated from it without a DS record (insecure).
  A private Postfix serves STARTTLS on DANE_ADDR["tls"] with a certificate issued by a
  private CA (openssl; `self.ca_cert`) for every mx.*.dane.test name but those in UNNAMED,
  its chain (leaf + CA) included, and no TLS at all on DANE_ADDR["plain"]. nginx on
  DANE_ADDR["https"] serves the MTA-STS policies of the sts* domains with a certificate from
  the same CA (`outbound_args` gives blackpony `--tls-ca-file` and `--mta-sts-port`).

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

  With an MTA-STS policy in mode enforce as well (RFC 8461 §2: DANE wins where both apply):
  stsee.dane.test       mx.stsee.dane.test        3 1 1 of the leaf; the policy lists the host,
                                                  but the leaf does not name it (PKIX: no)
  stsother.dane.test    mx.stsother.dane.test     3 1 1 of the leaf; the policy lists only
                                                  mx.elsewhere.test
  stswrong.dane.test    mx.stswrong.dane.test     3 1 1 of another key; the policy lists the
                                                  host and its certificate verifies (PKIX: yes)
  sts.dane.test         mx.sts.dane.test          none; the policy lists the host (MTA-STS only)
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from interop.peers import (Postfix, SignedZone, common_free_port, make_ca_signed_cert,
                           make_test_ca)
from interop.mta_sts_net import Nginx, make_multi_name_cert, policy

ZONE = "dane.test"
UNSIGNED = f"unsigned.{ZONE}"
# The MX Postfix: a STARTTLS listener and one without TLS; nsd and nginx on their own.
DANE_ADDR = {"tls": "127.0.30.2", "plain": "127.0.30.3", "dns": "127.0.30.53",
             "https": "127.0.30.80"}
# domain label -> where its MX host listens.
SCENARIOS = {"ee": "tls", "ta": "tls", "taname": "tls", "wrong": "tls", "notls": "plain",
             "bogus": "tls", "bogusmx": "tls", "nodane": "tls", "unusable": "tls",
             "stsee": "tls", "stsother": "tls", "stswrong": "tls", "sts": "tls"}
DOMAINS = (*(f"{label}.{ZONE}" for label in SCENARIOS), UNSIGNED)
# The CA-issued certificate names every MX host but these (DANE-TA checks names; PKIX,
# which MTA-STS uses, checks them too).
UNNAMED = (f"mx.taname.{ZONE}", f"mx.stsee.{ZONE}")
# MTA-STS policies (all mode enforce), by domain label: the MX hosts they list.
STS_MX = {"stsee": f"mx.stsee.{ZONE}", "stsother": "mx.elsewhere.test",
          "stswrong": f"mx.stswrong.{ZONE}", "sts": f"mx.sts.{ZONE}"}


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
    """The signed zone, its unsigned child, the MX Postfix and nginx; started and stopped
    together."""

    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.port = common_free_port([DANE_ADDR["tls"], DANE_ADDR["plain"]])
        self.https_port = common_free_port([DANE_ADDR["https"]])
        ca = make_test_ca(self.base / "ca", "blackpony DANE test CA")
        self.ca_cert = ca[0]
        names = [mx_of(d) for d in DOMAINS if mx_of(d) not in UNNAMED]
        self.leaf_name = names[0]
        self.chain, self.key = make_ca_signed_cert(self.base / "ca", names[0], ca,
                                                   alt_names=names[1:])
        _, leaf_spki = der_of(self.chain)
        ca_der, _ = der_of(ca[0])
        other = make_test_ca(self.base / "other", "a key nobody uses")[0]
        _, other_spki = der_of(other)
        self.leaf_311 = f"3 1 1 {sha256(leaf_spki)}"
        self.other_311 = f"3 1 1 {sha256(other_spki)}"
        tlsa = {"ee": self.leaf_311, "ta": f"2 0 1 {sha256(ca_der)}",
                "taname": f"2 0 1 {sha256(ca_der)}", "wrong": self.other_311,
                "notls": self.leaf_311, "bogus": self.leaf_311,
                "bogusmx": self.leaf_311, "unusable": f"1 1 1 {sha256(leaf_spki)}",
                "stsee": self.leaf_311, "stsother": self.leaf_311, "stswrong": self.other_311}
        records = []
        for label, where in SCENARIOS.items():
            records.append(f"{label} IN MX 10 mx.{label}\nmx.{label} IN A {DANE_ADDR[where]}\n")
            if label in tlsa:
                records.append(f"_25._tcp.mx.{label} IN TLSA {tlsa[label]}\n")
        for label in STS_MX:
            records.append(f'_mta-sts.{label} IN TXT "v=STSv1; id={label}1;"\n'
                           f"mta-sts.{label} IN A {DANE_ADDR['https']}\n")
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
        policy_hosts = [f"mta-sts.{label}.{ZONE}" for label in STS_MX]
        policy_chain, policy_key = make_multi_name_cert(self.base / "ca", policy_hosts, ca)
        self.nginx = Nginx(self.base / "nginx", self.https_port, policy_chain, policy_key,
                           host=DANE_ADDR["https"], served=policy_hosts)
        for label, mx in STS_MX.items():
            self.nginx.serve(f"mta-sts.{label}.{ZONE}", policy("enforce", mx))

    def start(self):
        started = []
        try:
            for part in (self.zone, self.postfix, self.nginx):
                part.start()
                started.append(part)
        except Exception:
            for part in reversed(started):
                part.stop()
            raise
        return self

    def stop(self):
        try:
            self.nginx.stop()
        finally:
            try:
                self.postfix.stop()
            finally:
                self.zone.stop()

    def outbound_args(self, state_dir: Path, *extra: str) -> list[str]:
        """The flags blackpony gets to use this internet: its nameserver, trust anchors,
        the CA (MX certificates and policy hosts) and nginx's port for MTA-STS."""
        return ["--dns", self.zone.address, "--smtp-port", str(self.port),
                "--helo-name", "client.test", "--state-dir", str(state_dir),
                "--dnssec", str(self.zone.anchors), "--tls-ca-file", str(self.ca_cert),
                "--mta-sts-port", str(self.https_port), *extra]
