"""`blackpony check` against private Postfix instances: a good set-up passes (exit 0, the
backend's capabilities shown, relaying refused), and each broken one fails with a clear
message and its fix — a PROXY header to a Postfix that does not expect one, `--identity
none` in front of a Postfix that relays for 127.0.0.1 (the probe's transaction is reset,
nothing is queued), a private key readable by others, the listen address taken."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from interop.peers import blackpony_bin, free_port


def check(tmp_path: Path, backend, identity: str, *, extra: str = "",
          listen: str | None = None) -> subprocess.CompletedProcess:
    config = tmp_path / f"blackpony-{identity}.toml"
    config.write_text(
        "[inbound]\n"
        f'listen = "{listen or f"127.0.0.1:{free_port()}"}"\n'
        f'backend = "{backend.host}:{backend.port}"\n'
        f'identity = "{identity}"\n'
        'hostname = "mx.interop.test"\n' + extra)
    result = subprocess.run([blackpony_bin(), "--config", str(config), "check", "--timeout", "5"],
                            capture_output=True, text=True, timeout=60)
    print(result.stdout, result.stderr)
    return result


def test_good_setups_pass(tmp_path, pf_proxy, pf_xclient):
    for backend, identity in ((pf_proxy, "proxy-v2"), (pf_proxy, "proxy-v1"),
                              (pf_xclient, "xclient")):
        result = check(tmp_path, backend, identity)
        assert result.returncode == 0, result.stdout
        assert "error" not in result.stdout
        assert "PIPELINING" in result.stdout
        assert "refuses to relay for a foreign client" in result.stdout
        assert "Relay access denied" in result.stdout


def test_proxy_header_to_a_backend_that_does_not_expect_it(tmp_path, pf_xclient):
    for identity in ("proxy-v2", "proxy-v1"):
        result = check(tmp_path, pf_xclient, identity)
        assert result.returncode == 1, result.stdout
        assert "answers the PROXY header as an SMTP command" in result.stdout
        assert "smtpd_upstream_proxy_protocol=haproxy" in result.stdout


def test_identity_none_in_front_of_a_relaying_backend_is_an_open_relay(tmp_path, pf_xclient):
    result = check(tmp_path, pf_xclient, "none")
    assert result.returncode == 1, result.stdout
    assert "OPEN RELAY" in result.stdout and "identity = none" in result.stdout
    assert "fix: use identity = proxy-v2 or xclient" in result.stdout
    # The probe's transaction was reset: Postfix queued nothing for the foreign domain.
    log = pf_xclient.maillog.read_text(errors="replace")
    assert "relay-test.invalid" not in "".join(
        l for l in log.splitlines() if "status=" in l or "qmgr" in l)


def test_no_greeting_without_the_proxy_header(tmp_path, pf_proxy):
    result = check(tmp_path, pf_proxy, "xclient")
    assert result.returncode == 1, result.stdout
    assert "waiting for a PROXY header" in result.stdout


def test_key_readable_by_others_and_listen_taken(tmp_path, pf_proxy):
    key = tmp_path / "host.key"
    made = subprocess.run([blackpony_bin(), "keygen", "--out", str(key), "--hostname", "mx.test"],
                          capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    os.chmod(key, 0o644)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = check(tmp_path, pf_proxy, "proxy-v2", extra=f'host_key = "{key}"\n',
                       listen=f"127.0.0.1:{port}")
    assert result.returncode == 1, result.stdout
    assert "private key readable by others (mode 0644)" in result.stdout
    assert f"chmod 0600 {key}" in result.stdout
    assert "something already listens there" in result.stdout
    os.chmod(key, 0o600)
    result = check(tmp_path, pf_proxy, "proxy-v2", extra=f'host_key = "{key}"\n')
    assert result.returncode == 0, result.stdout
