"""`blackpony probe DOMAIN` against the loopback fake internets (interop/peers.py):
FakeInternet (dnsmasq, a private Postfix with several listeners) and XponyInternet
(`blackpony inbound --host-key` in front of a Postfix, its key published in DNS for
mx.pony2.test and a wrong key for mx.pony3.test).

What is checked, each from the table and from --json, with the exit status:
  - tls.test: STARTTLS with a self-signed certificate: TLS version and cipher shown,
    `not verified (self-signed)`, level `encrypted (TLS)` under may, `deferred` under verify
    (exit 69);
  - verified.test with --tls-ca-file: `verified`, level `authenticated (TLS)`;
  - plain.test: no STARTTLS, level `plaintext (no STARTTLS)`; under encrypt: deferred;
  - nullmx.test (RFC 7505): `null`, exit 68;
  - backup.test: mx1 on a dead address is `unreachable`, mx2 answers: exit 0;
  - pony.test / pony2.test / pony3.test: XPONY offered with the server's fingerprint
    (computed here from its public key), DNS key none / matches / differs, the level
    `encrypted (XPONY)` (first contact) / `authenticated (XPONY)` / deferred (key refused);
  - no pin is stored by a probe (the state directory has no pins afterwards);
  - on the DANE internet (interop/dane_net.py: nsd with a signed zone, a Postfix MX with a
    private-CA certificate, nginx for MTA-STS): ee.dane.test under dane shows its TLSA
    record, DNSSEC secure, the certificate's subject and `matches (DANE-EE 3 1 1 …)`, level
    `authenticated (DANE)` (under may the same DANE column, the level PKIX's);
    wrong.dane.test `does not match`, deferred; bogus.dane.test deferred without a session
    judged; sts.dane.test (MTA-STS only) `matches the policy (mode enforce)`, verified,
    `authenticated (TLS)`; stsee.dane.test deferred by MTA-STS under may, and under dane
    `not applied: DANE governs this host`, `authenticated (DANE)`; stsother.dane.test (not
    in its policy) deferred under may.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from interop.conftest import owned_dir
from interop.dane_net import DANE_ADDR
from interop.peers import NET_ADDR, PONY_ADDR, blackpony_bin, key_fingerprint
from interop.test_outbound import show


def probe(net, state: Path, domain: str, *extra: str, json_out: bool = False,
          timeout: float = 120) -> tuple[subprocess.CompletedProcess, object]:
    args = [blackpony_bin(), "probe", domain, *net.outbound_args(state), *extra]
    if json_out:
        args.append("--json")
    res = subprocess.run(args, capture_output=True, timeout=timeout)
    out = res.stdout.decode(errors="replace")
    return res, (json.loads(out) if json_out and res.stdout else out)


def host(report: dict, name: str) -> dict:
    found = [h for h in report["hosts"] if h["host"] == name]
    assert len(found) == 1, report
    return found[0]


@pytest.fixture(scope="module")
def state(workdir) -> Path:
    return owned_dir(workdir / "state-probe")


def test_starttls_self_signed(internet, state):
    res, report = probe(internet, state, "tls.test", json_out=True)
    assert res.returncode == 0, show(res)
    assert (report["mx"], report["policy"]) == ("listed", "may"), report
    h = host(report, "mx.tls.test")
    assert h["addresses"] == [NET_ADDR["tls"]]
    assert h["starttls"]["offered"] is True
    assert h["starttls"]["protocol"] in ("TLSv1.2", "TLSv1.3"), h
    assert h["starttls"]["cipher"].startswith("TLS_"), h
    assert h["starttls"]["certificate"] == "not verified (self-signed)", h
    assert h["starttls"]["subject"] == "CN=mx.tls.test", h
    # No --dnssec: DANE is not used, and says why.
    assert h["dane"]["status"].startswith("not used (DNSSEC validation is off"), h
    assert h["dane"]["dnssec"] == "not validated (--dnssec off)", h
    assert h["xpony"]["offered"] is False, h
    assert h["level"] == "encrypted (TLS)", h
    res, text = probe(internet, state, "tls.test")
    assert res.returncode == 0, show(res)
    assert "not verified (self-signed)" in text and "level      encrypted (TLS)" in text, text
    res, report = probe(internet, state, "tls.test", "--tls-policy", "verify", json_out=True)
    assert res.returncode == 69, show(res)
    assert host(report, "mx.tls.test")["level"].startswith("deferred: certificate"), report


def test_verified_certificate(internet, state):
    res, report = probe(internet, state, "verified.test", "--tls-ca-file",
                        str(internet.ca_cert), json_out=True)
    assert res.returncode == 0, show(res)
    h = host(report, "mx.verified.test")
    assert h["starttls"]["certificate"] == "verified", h
    assert h["level"] == "authenticated (TLS)", h


def test_plain_host(internet, state):
    res, report = probe(internet, state, "plain.test", json_out=True)
    assert res.returncode == 0, show(res)
    h = host(report, "mx.plain.test")
    assert h["starttls"] == {"offered": False, "error": "not offered"}, h
    assert h["level"] == "plaintext (no STARTTLS)", h
    res, report = probe(internet, state, "plain.test", "--tls-policy", "encrypt",
                        json_out=True)
    assert res.returncode == 69, show(res)
    assert host(report, "mx.plain.test")["level"] == "deferred: no STARTTLS (policy encrypt)"


def test_null_mx(internet, state):
    res, report = probe(internet, state, "nullmx.test", json_out=True)
    assert res.returncode == 68, show(res)
    assert report["mx"] == "null" and report["hosts"] == [], report
    res, text = probe(internet, state, "nullmx.test")
    assert "null MX, RFC 7505" in text, text


def test_dead_mx_and_a_live_backup(internet, state):
    res, report = probe(internet, state, "backup.test", json_out=True, timeout=60)
    assert res.returncode == 0, show(res)
    assert [h["host"] for h in report["hosts"]] == ["mx1.backup.test", "mx2.backup.test"]
    dead = host(report, "mx1.backup.test")
    assert dead["probed"] == NET_ADDR["dead"], dead
    assert dead["level"].startswith("unreachable"), dead
    assert "4.4.1" in dead["error"], dead
    assert host(report, "mx2.backup.test")["level"] == "plaintext (no STARTTLS)", report


@pytest.mark.parametrize("domain,dns_key,level", [
    ("pony.test", "none", "encrypted (XPONY)"),
    ("pony2.test", "matches", "authenticated (XPONY)"),
    ("pony3.test", "differs", "deferred: XPONY key refused"),
])
def test_xpony_host(pony_net, xpony_keys, workdir, domain, dns_key, level):
    state = owned_dir(workdir / f"state-probe-{domain}")
    res, report = probe(pony_net, state, domain, json_out=True)
    assert res.returncode == (69 if level.startswith("deferred") else 0), show(res)
    h = host(report, f"mx.{domain}")
    assert h["probed"] == PONY_ADDR["pony"], h
    x = h["xpony"]
    assert x["offered"] is True, h
    assert x["fingerprint"] == key_fingerprint(xpony_keys["server"].public), x
    assert x["pin"] == "none" and x["dns_key"] == dns_key, x
    assert h["level"] == level, h
    # The sidecar offers STARTTLS too (its own certificate, from no CA): shown beside XPONY.
    assert h["starttls"]["certificate"].startswith("not verified ("), h
    # A probe stores no pin.
    res = subprocess.run([blackpony_bin(), "pins", "--state-dir", str(state), "list"],
                         capture_output=True, timeout=30)
    assert b"no pins" in res.stdout, show(res)


# --------------------------------------------------------------------------------------
# DANE and MTA-STS (the DANE internet, interop/dane_net.py)
# --------------------------------------------------------------------------------------

def test_dane_host(dane_net, workdir):
    state = owned_dir(workdir / "state-probe-dane")
    res, report = probe(dane_net, state, "ee.dane.test", "--tls-policy", "dane",
                        json_out=True)
    assert res.returncode == 0, show(res)
    assert report["mx_dnssec"] == "secure", report
    h = host(report, "mx.ee.dane.test")
    assert h["addresses"] == [DANE_ADDR["tls"]], h
    d = h["dane"]
    assert d["tlsa"] == [dane_net.leaf_311], d
    assert d["dnssec"] == "secure", d
    assert d["status"].startswith(f"usable (1 of 1 TLSA records: {dane_net.leaf_311})"), d
    assert d["matches"] == f"matches (DANE-EE {dane_net.leaf_311})", d
    assert h["starttls"]["subject"] == f"CN={dane_net.leaf_name}", h
    assert h["mta_sts"] == "no policy", h
    assert h["level"] == "authenticated (DANE)", h
    res, text = probe(dane_net, state, "ee.dane.test", "--tls-policy", "dane")
    assert res.returncode == 0, show(res)
    for line in [f"  TLSA       {dane_net.leaf_311} (DNSSEC secure)",
                 f"  DANE match matches (DANE-EE {dane_net.leaf_311})",
                 f"subject CN={dane_net.leaf_name}",
                 "  level      authenticated (DANE)"]:
        assert line in text, f"{line!r} not in\n{text}"
    # Under may DANE is shown but not used: the level is PKIX's (the CA is given).
    res, report = probe(dane_net, state, "ee.dane.test", "--tls-policy", "may",
                        json_out=True)
    assert res.returncode == 0, show(res)
    h = host(report, "mx.ee.dane.test")
    assert h["dane"]["matches"].startswith("matches (DANE-EE"), h
    assert h["level"] == "authenticated (TLS)", h


def test_dane_mismatch_and_bogus(dane_net, workdir):
    state = owned_dir(workdir / "state-probe-dane-bad")
    res, report = probe(dane_net, state, "wrong.dane.test", "--tls-policy", "dane",
                        json_out=True)
    assert res.returncode == 69, show(res)
    h = host(report, "mx.wrong.dane.test")
    assert h["dane"]["tlsa"] == [dane_net.other_311], h
    assert h["dane"]["matches"] == "does not match: no TLSA record matches the certificate chain", h
    assert h["level"] == ("deferred: the certificate does not match its TLSA records (DANE)"), h
    res, report = probe(dane_net, state, "bogus.dane.test", "--tls-policy", "dane",
                        json_out=True)
    assert res.returncode == 69, show(res)
    h = host(report, "mx.bogus.dane.test")
    assert h["dane"]["dnssec"] == "bogus", h
    assert h["dane"]["status"].startswith("failed ("), h
    assert h["level"].startswith("deferred: DANE: the TLSA records at "), h


def test_mta_sts_host_and_dane_precedence(dane_net, workdir):
    state = owned_dir(workdir / "state-probe-sts")
    res, report = probe(dane_net, state, "sts.dane.test", json_out=True)
    assert res.returncode == 0, show(res)
    assert report["mta_sts"].startswith("mode enforce id sts1 mx mx.sts.dane.test"), report
    h = host(report, "mx.sts.dane.test")
    assert h["mta_sts"] == "matches the policy (mode enforce)", h
    assert h["starttls"]["certificate"] == "verified", h
    assert h["dane"]["status"] == "not used (no TLSA records)", h
    assert h["level"] == "authenticated (TLS)", h

    # stsee: listed, but the certificate does not name it.
    res, report = probe(dane_net, state, "stsee.dane.test", json_out=True)
    assert res.returncode == 69, show(res)
    h = host(report, "mx.stsee.dane.test")
    assert h["level"] == ("deferred: certificate not verified (MTA-STS policy, mode enforce)"), h
    res, report = probe(dane_net, state, "stsee.dane.test", "--tls-policy", "dane",
                        json_out=True)
    assert res.returncode == 0, show(res)
    h = host(report, "mx.stsee.dane.test")
    assert h["mta_sts"] == ("not applied: DANE governs this host (RFC 8461 §2); "
                            "it matches the policy"), h
    assert h["level"] == "authenticated (DANE)", h

    # stsother: the policy does not list its MX host.
    res, report = probe(dane_net, state, "stsother.dane.test", json_out=True)
    assert res.returncode == 69, show(res)
    h = host(report, "mx.stsother.dane.test")
    assert h["mta_sts"] == "does not match the policy (mode enforce)", h
    assert h["level"].startswith("deferred: not in the MTA-STS policy's mx: mx.elsewhere.test"), h
    res, report = probe(dane_net, state, "stsother.dane.test", "--tls-policy", "dane",
                        json_out=True)
    assert res.returncode == 0, show(res)
    assert host(report, "mx.stsother.dane.test")["level"] == "authenticated (DANE)", report
