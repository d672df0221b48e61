"""blackpony's outbound side with a state directory it cannot write (the mailer runs as an
unprivileged user, the directory is root's): a log line never claims what did not happen.

- XPONY first contact (interop/peers.py XponyInternet, mx.pony.test): the key cannot be
  pinned. The delivery goes ahead (the session was encrypted) with
  `verified=no (first contact, pin=not-stored) level=encrypted` and a warning
  `pin=not-stored error="…"`; nothing says "key pinned now" and no pin exists.
- A failed TLS handshake (FakeInternet, mx.brokentls.test): the failure cannot be
  remembered; the delivery is deferred as always and the log says `tls-failure=not-stored`.

`blackpony deliver` runs as nobody (setpriv) from a world-executable copy of the binary; the
state directory is root's, mode 0755.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from interop.clients import token
from interop.conftest import owned_dir
from interop.peers import require_tool
from interop.test_outbound import SENDER, arrived, log_line, make_message, show, status_line
from interop.test_xpony import XPONY_TLS, relay


def deliver_as_nobody(binary: Path, net, state: Path, rcpt: str, message: bytes
                      ) -> subprocess.CompletedProcess:
    cmd = [require_tool("setpriv"), "--reuid=nobody", "--regid=nogroup", "--clear-groups",
           str(binary), "deliver", *net.outbound_args(state), "-f", SENDER, "--", rcpt]
    return subprocess.run(cmd, input=message, capture_output=True, timeout=60)


def test_first_contact_pin_not_stored_is_said(pony_net, xpony_keys, public_blackpony, workdir):
    net, server = pony_net, xpony_keys["server"]
    state = owned_dir(workdir / f"state-ro-{token()}", "root")
    tok = token()
    rcpt = f"ro-{tok}@pony.test"
    message, body = make_message(tok, [rcpt])
    res = deliver_as_nobody(public_blackpony, net, state, rcpt, message)
    # Delivered: the session was encrypted; only the pin is missing.
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
    line = log_line(res, rcpt)
    assert relay(net, "pony.test") in line, line
    want = f" {XPONY_TLS} peer={server.fingerprint} verified=no (first contact, pin=not-stored) level=encrypted "
    assert want in line, f"expected {want!r} in {line!r}"
    err = res.stderr.decode(errors="replace")
    assert "pinned now" not in err, show(res)
    warnings = [l for l in err.splitlines() if " pin=not-stored error=\"" in l]
    assert len(warnings) == 1 and "mx.pony.test" in warnings[0], show(res)
    assert "Permission denied" in warnings[0], warnings[0]
    assert not (state / "pins").exists() or not any((state / "pins").iterdir()), \
        list((state / "pins").iterdir())
    arrived(net.backend, rcpt, body)


def test_tls_failure_not_stored_is_said(internet, public_blackpony, workdir):
    state = owned_dir(workdir / f"state-ro-{token()}", "root")
    tok = token()
    rcpt = f"ro-{tok}@brokentls.test"
    message, _ = make_message(tok, [rcpt])
    res = deliver_as_nobody(public_blackpony, internet, state, rcpt, message)
    assert res.returncode == 75, show(res)
    assert status_line(res).startswith("4.7.5 "), show(res)
    err = res.stderr.decode(errors="replace")
    warnings = [l for l in err.splitlines() if " tls-failure=not-stored error=\"" in l]
    assert len(warnings) == 1 and "mx.brokentls.test" in warnings[0], show(res)
    assert not (state / "tls-failures").exists(), list(state.iterdir())
