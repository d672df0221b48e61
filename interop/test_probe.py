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
  - no pin is stored by a probe (the state directory has no pins afterwards).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from interop.conftest import owned_dir
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
