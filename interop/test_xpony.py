"""XPONY, the blackpony extension (proto-spec/xpony.md): Noise_XX inside SMTP between two
blackpony hosts, on a second fake internet (interop/peers.py XponyInternet):

  pony.test        MX mx.pony.test       -> blackpony inbound --host-key server.key
                                            --identity proxy-v2 -> private Postfix (PROXY v2)
  pony2.test       MX mx.pony2.test      -> the same inbound; TXT _xpony._tcp.mx.pony2.test
                                            publishes the server key
  pony3.test       MX mx.pony3.test      -> the same inbound; its TXT publishes a WRONG key
  down.test        MX mx.down.test       -> an inbound the test restarts without its key
  rekey.test       MX mx.rekey.test      -> an inbound the test restarts with a new key
  strip.test, nostarttls.test, inject334.test, injectcmd.test
                   MX mx.<name>.test     -> interop/xpony_mitm.py, a man in the middle in
                                            front of the pony inbound

`blackpony deliver --host-key client.key --state-dir DIR` is the client every time, with a
state directory of its own per scenario (the pins live there). The fake internet of
test_outbound.py (mx.tls.test: Postfix with STARTTLS, mx.plain.test: without) shows the
same client meeting MX hosts that do not speak XPONY.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from interop.clients import RawSMTP, swaks, token, transcript
from interop.conftest import owned_dir
from interop.peers import (CLIENT_IP, MAIL_DOMAIN, PONY_ADDR, PONY_DOMAINS, XPONY_PROTOCOL,
                           BlackponyOutbound, SignedZone, blackpony_bin, run_deliver, blackpony_received, key_fingerprint, keygen,
                           postfix_queue_id, wait_for)
from interop.test_outbound import (arrived, crlf, deliver, log_line, make_message, show,
                                   status_line)

XPONY_TLS = f"tls=XPONY/{XPONY_PROTOCOL}"
FIRST_CONTACT = "verified=no (first contact, key pinned now) level=encrypted"
PIN_AUTHENTICATED = "verified=yes (pinned key) level=authenticated"
DNS_AUTHENTICATED = "verified=yes (DNS key) level=authenticated"


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

def send(net, state: Path, key, domain: str, prefix: str, rcpt: str | None = None):
    """`blackpony deliver --host-key KEY` of a fresh message to PREFIX-TOKEN@DOMAIN (or to
    rcpt): (result, recipient, body)."""
    tok = token()
    rcpt = rcpt or f"{prefix}-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    res = deliver(net, state, [rcpt], message, "--host-key", str(key.path))
    return res, rcpt, message, body


def resend(net, state: Path, key, rcpt: str, message: bytes):
    """The same message again (what the MTA's next queue run does after a deferral)."""
    return deliver(net, state, [rcpt], message, "--host-key", str(key.path))


def relay(net, domain: str) -> str:
    mx, where = PONY_DOMAINS[domain]
    return f"relay={mx}[{PONY_ADDR[where]}]:{net.port} "


def pins(state: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([blackpony_bin(), "pins", "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def pinned(state: Path) -> dict[str, str]:
    """`blackpony pins list`: {host: fingerprint}."""
    res = pins(state, "list")
    assert res.returncode == 0, f"pins list: exit {res.returncode}\n{res.stdout}{res.stderr}"
    out = {}
    for line in res.stdout.splitlines():
        m = re.match(r"^(\S+) (SHA256:\S+) ", line)
        if m:
            out[m.group(1)] = m.group(2)
    if not out:
        assert res.stdout.startswith("no pins"), res.stdout
    return out


class LogSince:
    """What a process (blackpony inbound, xpony_mitm.py) logged after this point. For an
    inbound, the point is taken once every session it logged a connect for has logged its
    disconnect too (they are written after the client has gone), so a session of an earlier
    step is never counted as one of the next."""

    def __init__(self, proc, timeout: float = 10):
        self.proc = proc

        def settled():
            text = proc.log_text()
            done = text.count(" connect client=") == text.count(" disconnect client=")
            return (len(text),) if done else None
        [self.start] = wait_for(settled, timeout, f"every session in {proc.log_path} to end")

    def text(self) -> str:
        return self.proc.log_text()[self.start:]

    def wait(self, pattern: str, timeout: float = 10) -> re.Match:
        rx = re.compile(pattern)
        return wait_for(lambda: rx.search(self.text()), timeout,
                        f"a log line matching {pattern!r} from {self.proc.log_path}; "
                        f"new lines:\n{self.text()}")


def inbound_sessions(log: LogSince, expect: int = 1, timeout: float = 10) -> list[str]:
    """The disconnect lines of the inbound sessions that ended after the mark (waiting
    until there are `expect` of them), without bare connect/close probes (a fixture's
    check that the port is open: no byte either way)."""
    def ended():
        lines = [l for l in log.text().splitlines() if " disconnect client=" in l
                 and ' end=client-closed reply="" ' not in l]
        return lines if len(lines) >= expect else None
    return wait_for(ended, timeout, f"{expect} disconnect line(s) in {log.proc.log_path}; "
                    f"new lines:\n{log.text()}")


def not_arrived(pf, rcpt: str):
    pf.wait_queue_empty()
    got = pf.messages(rcpt)
    assert not got, f"a message for {rcpt} arrived: {[str(p) for p, _ in got]}"


def mitm_session(mitm, before: set[int]) -> list[str]:
    """The events of the one session the proxy handled since `before` (its session
    numbers then), once the proxy logged its end."""
    def done():
        new = {n: ev for n, ev in mitm.sessions().items() if n not in before}
        if len(new) == 1 and any(e == "closed" for e in next(iter(new.values()))):
            return next(iter(new.values()))
        return None
    return wait_for(done, 15, f"one finished proxy session in {mitm.log_path}:\n"
                    f"{mitm.log_text()}")


def assert_deferred(res, rcpt: str, *words: str) -> str:
    """exit 75 (EX_TEMPFAIL), the status line starts 4.7.5 and names every word; the log
    line says deferred. Returns the status line."""
    assert res.returncode == 75, show(res)
    line = status_line(res)
    assert line.startswith("4.7.5 "), f"status line {line!r} should start 4.7.5" + show(res)
    assert rcpt in line, line
    for w in words:
        assert w in line, f"{w!r} not in the status line {line!r}" + show(res)
    log = log_line(res, rcpt)
    assert " dsn=4.7.5 status=deferred (" in log, log
    return line


def assert_xpony_delivery(res, net, domain: str, rcpt: str, server_fp: str, how: str) -> str:
    assert res.returncode == 0, show(res)
    assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
    line = log_line(res, rcpt)
    assert relay(net, domain) in line, f"{relay(net, domain)!r} not in {line!r}"
    want = f" {XPONY_TLS} peer={server_fp} {how} "
    assert want in line, f"expected {want!r} in the log line {line!r}" + show(res)
    assert " dsn=2.0.0 status=sent (250 " in line, line
    return line


# --------------------------------------------------------------------------------------
# 1. End to end: deliver -> inbound -> Postfix, first contact, then authenticated by pin
# --------------------------------------------------------------------------------------

def test_keygen_output(xpony_keys, workdir):
    """keygen prints the public key, its fingerprint (which we recompute) and the DNS
    record; the key file is 0600; it does not overwrite a key without --force."""
    for key in xpony_keys.values():
        assert key.fingerprint == key_fingerprint(key.public), key.output
        assert f'"v=XPONY1; k=x25519; p={key.public}"' in key.dns_record, key.output
        assert key.path.stat().st_mode & 0o777 == 0o600, oct(key.path.stat().st_mode)
    assert xpony_keys["server"].dns_record.startswith("_xpony._tcp.mx.pony.test. "), \
        xpony_keys["server"].dns_record
    before = xpony_keys["server"].path.read_bytes()
    res = subprocess.run([blackpony_bin(), "keygen", "--out", str(xpony_keys["server"].path),
                          "--hostname", "mx.pony.test"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode != 0, f"keygen overwrote a key without --force:\n{res.stdout}"
    assert xpony_keys["server"].path.read_bytes() == before


def test_key_file_forms(pony_net, xpony_keys, workdir):
    """proto-spec §7: keygen writes a `#` comment and the base64 of the private key with LF;
    `--host-key` reads that, a bare §7 file (base64 + LF, written here), and the
    `private-key: …` form of earlier versions. The inbound sees the key each file holds
    (its fingerprint computed here from the private key with python3-cryptography)."""
    import base64
    import os
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    lines = xpony_keys["client"].path.read_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("# "), lines
    assert len(base64.b64decode(lines[1], validate=True)) == 32, lines
    net = pony_net
    for n, form in enumerate(["{k}\n", "# made by hand\n\n{k}\n", "private-key: {k}\n"]):
        secret = os.urandom(32)
        public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)
        path = workdir / f"handmade-{n}-{token()}.key"
        path.write_text(form.format(k=base64.b64encode(secret).decode()))
        os.chmod(path, 0o600)
        state = owned_dir(workdir / f"state-keyform-{n}-{token()}")
        log = LogSince(net.pony)
        tok = token()
        rcpt = f"keyform{n}-{tok}@pony.test"
        message, body = make_message(tok, [rcpt])
        res = deliver(net, state, [rcpt], message, "--host-key", str(path))
        assert res.returncode == 0, f"{form!r}: " + show(res)
        fp = key_fingerprint(base64.b64encode(public).decode())
        log.wait(rf" xpony client=\S+ XPONY/{XPONY_PROTOCOL} peer={re.escape(fp)}(\s|$)")
        arrived(net.backend, rcpt, body)


def test_a_key_file_others_can_read_is_refused(pony_net, workdir):
    """proto-spec §7: a private key file group or others can read or write MUST NOT be
    used. `deliver` defers (75: the MTA keeps the message) before connecting anywhere,
    `inbound` does not start; both name the file, its mode and the fix."""
    import os
    net = pony_net
    path = workdir / f"exposed-{token()}.key"
    keygen(path, "exposed.test")
    for mode in (0o640, 0o604):
        os.chmod(path, mode)
        state = owned_dir(workdir / f"state-exposed-{token()}")
        tok = token()
        rcpt = f"exposed-{tok}@pony.test"
        message, _ = make_message(tok, [rcpt])
        res = deliver(net, state, [rcpt], message, "--host-key", str(path))
        out = show(res)
        assert res.returncode == 75, out
        assert f"(mode {mode:04o}); refusing it (proto-spec §7): chmod 0600 {path}" in out, out
        started = subprocess.run([blackpony_bin(), "inbound", "--listen", "127.0.0.1:0",
                                  "--backend", "127.0.0.1:9", "--identity", "none",
                                  "--host-key", str(path)],
                                 capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        assert started.returncode != 0, started
        assert f"(mode {mode:04o}); refusing it" in started.stderr, started.stderr
    # Made private again, the same file serves.
    os.chmod(path, 0o600)
    tok = token()
    rcpt = f"exposed-ok-{tok}@pony.test"
    message, body = make_message(tok, [rcpt])
    res = deliver(net, owned_dir(workdir / f"state-exposed-{token()}"), [rcpt], message,
                  "--host-key", str(path))
    assert res.returncode == 0, show(res)
    arrived(net.backend, rcpt, body)


def test_end_to_end_first_contact_then_pinned(pony_net, xpony_keys, workdir):
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    state = owned_dir(workdir / f"state-e2e-{token()}")
    inbound = LogSince(net.pony)

    res, rcpt, _, body = send(net, state, client, "pony.test", "e2e")
    assert_xpony_delivery(res, net, "pony.test", rcpt, server.fingerprint, FIRST_CONTACT)
    stored = arrived(net.backend, rcpt, body)
    trace = blackpony_received(stored)
    assert trace is not None, stored.decode(errors="replace")
    want = (f"(blackpony) with ESMTP (XPONY {XPONY_PROTOCOL} "
            f"peer={client.fingerprint})").encode()
    assert want in trace, f"trace header {trace!r} should contain {want!r}"
    assert trace.startswith(b"Received: from client.test "), trace
    # The inbound's log: the xpony line with the CLIENT's key, the disconnect line too.
    m = inbound.wait(rf"session=(\S+) xpony client=\S+ XPONY/{XPONY_PROTOCOL} "
                     rf"peer={re.escape(client.fingerprint)}(\s|$)")
    [disc] = inbound_sessions(inbound)
    assert f"session={m.group(1)} disconnect " in disc, disc
    assert f" tls=XPONY/{XPONY_PROTOCOL} peer={client.fingerprint} " in disc, disc
    assert " messages=1 " in disc and " end=quit " in disc, disc
    assert pinned(state) == {"mx.pony.test": server.fingerprint}

    # Second contact: the pin authenticates the server.
    res, rcpt2, _, body2 = send(net, state, client, "pony.test", "e2e2")
    assert_xpony_delivery(res, net, "pony.test", rcpt2, server.fingerprint, PIN_AUTHENTICATED)
    arrived(net.backend, rcpt2, body2)
    assert pinned(state) == {"mx.pony.test": server.fingerprint}


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_outbound_service_first_contact_then_pinned(pony_net, xpony_keys, workdir, protocol):
    """The long-running transport (`blackpony outbound --host-key`, LMTP for an MTA's lmtp
    transport, SMTP for its relayhost) uses XPONY like `deliver`: first contact pins, the
    second transaction of the same process is authenticated by the pin."""
    import smtplib
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    state = owned_dir(workdir / f"state-service-{protocol}-{token()}")
    bp = BlackponyOutbound(workdir / "logs", name=f"outbound-xpony-{protocol}",
                           protocol=protocol,
                           args=net.outbound_args(state, "--host-key", str(client.path)))
    bp.start()
    try:
        for n, how in enumerate([FIRST_CONTACT, PIN_AUTHENTICATED]):
            if n:
                # Both modes keep an MX session for 2 s for the next transaction
                # (outbound/cache.rs): wait it out, so the second one opens a new session.
                time.sleep(2.5)
            tok = token()
            rcpt = f"svc{protocol}{n}-{tok}@pony.test"
            message, body = make_message(tok, [rcpt])
            cls = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
            with cls(bp.host, bp.port, timeout=60) as c:
                refused = c.sendmail("sender@client.test", [rcpt], crlf(message))
                assert refused == {}, refused
            line = wait_for(lambda: next((l for l in bp.log_text().splitlines()
                                          if f"to=<{rcpt}>" in l), None), 10,
                            f"a log line for {rcpt}:\n{bp.log_text()}")
            want = f" {XPONY_TLS} peer={server.fingerprint} {how} "
            assert want in line and relay(net, "pony.test") in line, (want, line)
            assert " status=sent (250 " in line, line
            arrived(net.backend, rcpt, body)
        assert pinned(state) == {"mx.pony.test": server.fingerprint}
    finally:
        bp.stop()


def test_anonymous_client_and_no_xpony(pony_net, xpony_keys, workdir):
    """Without a host key of its own, `deliver` still uses XPONY, with a throwaway static key
    (proto-spec §4.5: the server sees a key it has never seen); `--no-xpony` turns the
    extension off, so the same MX gets STARTTLS."""
    net, server = pony_net, xpony_keys["server"]
    state = owned_dir(workdir / f"state-anon-{token()}")
    inbound = LogSince(net.pony)
    tok = token()
    rcpt = f"anon-{tok}@pony.test"
    message, body = make_message(tok, [rcpt])
    res = deliver(net, state, [rcpt], message)
    assert_xpony_delivery(res, net, "pony.test", rcpt, server.fingerprint, FIRST_CONTACT)
    arrived(net.backend, rcpt, body)
    m = inbound.wait(rf"xpony client=\S+ XPONY/{XPONY_PROTOCOL} peer=(SHA256:\S+)")
    assert m.group(1) not in {k.fingerprint for k in xpony_keys.values()}, m.group(0)
    assert pinned(state) == {"mx.pony.test": server.fingerprint}

    tok = token()
    rcpt = f"noxpony-{tok}@pony.test"
    message, body = make_message(tok, [rcpt])
    res = deliver(net, owned_dir(workdir / f"state-noxpony-{token()}"), [rcpt], message,
                  "--no-xpony")
    assert res.returncode == 0, show(res)
    line = log_line(res, rcpt)
    assert " tls=TLSv1.3/" in line and " level=encrypted " in line, line
    arrived(net.backend, rcpt, body)


# --------------------------------------------------------------------------------------
# 2. The same client meeting MX hosts without XPONY
# --------------------------------------------------------------------------------------

def test_fallback_to_starttls_and_plaintext(internet, xpony_keys, workdir):
    """--host-key changes nothing with a Postfix MX: STARTTLS where offered, plaintext
    where not, no XPONY command sent, and no pin for either host."""
    client = xpony_keys["client"]
    state = owned_dir(workdir / f"state-fallback-{token()}")
    mx_log_start = len(internet.postfix.log_text())
    for domain, host, want in (("tls.test", "mx.tls.test", r" tls=TLSv1\.3/\S+ verified=no "
                                r"\(self-signed\) level=encrypted "),
                               ("plain.test", "mx.plain.test", r" tls=none verified=no "
                                r"level=plaintext ")):
        res, rcpt, _, body = send(internet, state, client, domain, "fallback")
        assert res.returncode == 0, show(res)
        assert status_line(res) == "2.0.0 delivered to 1 recipient", show(res)
        line = log_line(res, rcpt)
        assert f"relay={host}[" in line, line
        assert re.search(want, line), f"{want!r} not in {line!r}"
        assert "XPONY" not in line, line
        arrived(internet.postfix, rcpt, body)
    assert pinned(state) == {}
    pin_dir = state / "pins"
    assert not pin_dir.exists() or not any(pin_dir.iterdir()), list(pin_dir.iterdir())
    # Postfix counts commands it does not know (`unknown=N/M` in its disconnect line): the
    # client never sent XPONY to a server that did not offer it.
    mx_log = internet.postfix.log_text()[mx_log_start:]
    disconnects = [l for l in mx_log.splitlines() if " disconnect from " in l]
    assert len(disconnects) >= 2, mx_log
    assert not [l for l in disconnects if "unknown=" in l], disconnects


# --------------------------------------------------------------------------------------
# 3. Downgrade: a pinned host stops offering XPONY
# --------------------------------------------------------------------------------------

def test_downgrade_of_pinned_host_deferred_until_forgotten(pony_net, pony_inbounds,
                                                           xpony_keys, workdir):
    net, client = pony_net, xpony_keys["client"]
    key = keygen(workdir / "keys" / f"down-{token()}.key", "mx.down.test")
    state = owned_dir(workdir / f"state-down-{token()}")
    keyed = pony_inbounds("down", key, "inbound-down-keyed")
    res, rcpt, _, body = send(net, state, client, "down.test", "down")
    assert_xpony_delivery(res, net, "down.test", rcpt, key.fingerprint, FIRST_CONTACT)
    arrived(net.backend, rcpt, body)
    assert pinned(state) == {"mx.down.test": key.fingerprint}

    keyed.stop()
    plain = pony_inbounds("down", None, "inbound-down-without-key")
    with RawSMTP(plain.host, plain.port) as c:
        assert c.reply().code == 220
        r = c.cmd("EHLO check.test")
        assert r.code == 250 and "XPONY" not in r.text and "STARTTLS" in r.text, r
        c.cmd("QUIT")
    log = LogSince(plain)
    res, rcpt2, message2, body2 = send(net, state, client, "down.test", "down2")
    assert_deferred(res, rcpt2, "mx.down.test", "did not offer it", "downgrade")
    [disc] = inbound_sessions(log)
    assert " messages=0 " in disc and " tls=none " in disc, disc
    not_arrived(net.backend, rcpt2)
    assert pinned(state) == {"mx.down.test": key.fingerprint}, "a failed session changed the pin"

    forget = pins(state, "forget", "mx.down.test")
    assert forget.returncode == 0, forget.stdout + forget.stderr
    assert pinned(state) == {}
    # The MTA's retry of the deferred message now goes over STARTTLS.
    res = resend(net, state, client, rcpt2, message2)
    assert res.returncode == 0, show(res)
    line = log_line(res, rcpt2)
    assert re.search(r" tls=TLSv1\.3/\S+ verified=no \(\S+[^)]*\) level=encrypted ", line), line
    arrived(net.backend, rcpt2, body2)
    assert pinned(state) == {}, "a STARTTLS session must not create a pin"


# --------------------------------------------------------------------------------------
# 4. Key change: refused until the operator accepts the new key
# --------------------------------------------------------------------------------------

def test_key_change_refused_until_accepted(pony_net, pony_inbounds, xpony_keys, workdir):
    net, client = pony_net, xpony_keys["client"]
    path = workdir / "keys" / f"rekey-{token()}.key"
    old = keygen(path, "mx.rekey.test")
    state = owned_dir(workdir / f"state-rekey-{token()}")
    first = pony_inbounds("rekey", old, "inbound-rekey-old")
    res, rcpt, _, body = send(net, state, client, "rekey.test", "rekey")
    assert_xpony_delivery(res, net, "rekey.test", rcpt, old.fingerprint, FIRST_CONTACT)
    arrived(net.backend, rcpt, body)

    first.stop()
    new = keygen(path, "mx.rekey.test", force=True)
    assert new.public != old.public
    second = pony_inbounds("rekey", new, "inbound-rekey-new")
    log = LogSince(second)
    res, rcpt2, message2, body2 = send(net, state, client, "rekey.test", "rekey2")
    line = assert_deferred(res, rcpt2, "XPONY key refused", new.fingerprint, old.fingerprint,
                           "blackpony pins accept mx.rekey.test")
    [disc] = inbound_sessions(log)
    assert " messages=0 " in disc and " tls=XPONY" not in disc, disc
    not_arrived(net.backend, rcpt2)
    assert pinned(state) == {"mx.rekey.test": old.fingerprint}, line

    acc = pins(state, "accept", "mx.rekey.test", new.public)
    assert acc.returncode == 0, acc.stdout + acc.stderr
    assert new.fingerprint in acc.stdout, acc.stdout
    assert pinned(state) == {"mx.rekey.test": new.fingerprint}
    res = resend(net, state, client, rcpt2, message2)
    assert_xpony_delivery(res, net, "rekey.test", rcpt2, new.fingerprint, PIN_AUTHENTICATED)
    arrived(net.backend, rcpt2, body2)


def test_key_refused_client_aborts_with_star(pony_net, xpony_keys, workdir):
    """proto-spec §3.2 step 3 / §8.3: after refusing the server's key the client sends `*`,
    the server answers `501 5.7.0 XPONY aborted`, the client sends QUIT. Seen through the
    pass-through proxy: the client's line after the 334 is `*`."""
    net, client = pony_net, xpony_keys["client"]
    mitm = net.mitm["strip"]
    mitm.set_mode("pass")
    state = owned_dir(workdir / f"state-star-{token()}")
    acc = pins(state, "accept", "mx.strip.test", xpony_keys["wrong"].public)
    assert acc.returncode == 0, acc.stdout + acc.stderr
    before = set(mitm.sessions())
    res, rcpt, _, _ = send(net, state, client, "strip.test", "star")
    assert_deferred(res, rcpt, "XPONY key refused", xpony_keys["server"].fingerprint)
    events = mitm_session(mitm, before)
    assert "client's line after the 334: b'*' (1 octets)" in events, (
        "after refusing the key the client must send `*` (§3.2 step 3); the proxy saw:\n  "
        + "\n  ".join(events))
    assert "client aborted XPONY" in events, events
    not_arrived(net.backend, rcpt)


# --------------------------------------------------------------------------------------
# 5. A key published in DNS
# --------------------------------------------------------------------------------------

def test_dns_key_authenticates_first_contact(pony_net, xpony_keys, workdir):
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    state = owned_dir(workdir / f"state-dns-{token()}")
    assert pinned(state) == {}
    res, rcpt, _, body = send(net, state, client, "pony2.test", "dns")
    assert_xpony_delivery(res, net, "pony2.test", rcpt, server.fingerprint, DNS_AUTHENTICATED)
    arrived(net.backend, rcpt, body)
    # Beside the key, mx.pony2.test publishes an invalid record and a testing key (t=y)
    # that is not the server's: neither is enforced, both are worth a log line.
    log = res.stderr.decode(errors="replace")
    assert "_xpony._tcp.mx.pony2.test: invalid XPONY key record ignored (p= is not the " \
        "base64 of 32 octets)" in log, show(res)
    assert (f"presented key {server.fingerprint}, not the testing key published in DNS"
            in log), show(res)
    # The DNS-checked key is pinned as well, and says where it came from.
    assert pinned(state) == {"mx.pony2.test": server.fingerprint}
    assert " source=dns " in pins(state, "list").stdout


def test_pin_wins_over_unsigned_dns(pony_net, xpony_keys, workdir):
    """proto-spec §8.3 P2 before P3: mx.pony3.test publishes a wrong key in (unsigned) DNS;
    a client that has pinned the real key goes on trusting the pin, so one forged DNS answer
    cannot turn a known host into a deferral or an impostor into a trusted one."""
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    state = owned_dir(workdir / f"state-pinwins-{token()}")
    acc = pins(state, "accept", "mx.pony3.test", server.public)
    assert acc.returncode == 0, acc.stdout + acc.stderr
    assert " source=operator " in pins(state, "list").stdout
    res, rcpt, _, body = send(net, state, client, "pony3.test", "pinwins")
    assert_xpony_delivery(res, net, "pony3.test", rcpt, server.fingerprint, PIN_AUTHENTICATED)
    arrived(net.backend, rcpt, body)


def test_wrong_dns_key_refused(pony_net, xpony_keys, workdir):
    net, client, wrong = pony_net, xpony_keys["client"], xpony_keys["wrong"]
    state = owned_dir(workdir / f"state-dnswrong-{token()}")
    log = LogSince(net.pony)
    res, rcpt, _, _ = send(net, state, client, "pony3.test", "dnswrong")
    assert_deferred(res, rcpt, "XPONY key refused", xpony_keys["server"].fingerprint,
                    f"the DNS key {wrong.fingerprint}")
    [disc] = inbound_sessions(log)
    assert " messages=0 " in disc, disc
    not_arrived(net.backend, rcpt)
    assert pinned(state) == {}


def test_policy_verify_and_none(pony_net, xpony_keys, workdir):
    """proto-spec §9: under `--tls-policy verify` a first contact (which could only be
    `encrypted`) does not use XPONY, so the self-signed STARTTLS certificate of mx.pony.test
    decides (deferred, nothing pinned); a host with a DNS key reaches `authenticated` by
    XPONY and is delivered. Under `none` no encryption of any kind is used."""
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    state = owned_dir(workdir / f"state-verify-{token()}")
    tok = token()
    rcpt = f"verify-{tok}@pony.test"
    message, _ = make_message(tok, [rcpt])
    res = deliver(net, state, [rcpt], message, "--host-key", str(client.path),
                  "--tls-policy", "verify")
    assert_deferred(res, rcpt, "not verified")
    assert XPONY_TLS not in log_line(res, rcpt), log_line(res, rcpt)
    assert pinned(state) == {}
    not_arrived(net.backend, rcpt)

    tok = token()
    rcpt = f"verifydns-{tok}@pony2.test"
    message, body = make_message(tok, [rcpt])
    res = deliver(net, state, [rcpt], message, "--host-key", str(client.path),
                  "--tls-policy", "verify")
    assert_xpony_delivery(res, net, "pony2.test", rcpt, server.fingerprint, DNS_AUTHENTICATED)
    arrived(net.backend, rcpt, body)

    tok = token()
    rcpt = f"none-{tok}@pony.test"
    message, body = make_message(tok, [rcpt])
    res = deliver(net, state, [rcpt], message, "--host-key", str(client.path),
                  "--tls-policy", "none")
    assert res.returncode == 0, show(res)
    assert " tls=none " in log_line(res, rcpt), log_line(res, rcpt)
    arrived(net.backend, rcpt, body)


# --------------------------------------------------------------------------------------
# 5b. A key in DNSSEC-signed DNS (nsd serving a zone signed with ldns-signzone)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signed_zone(pony_net, xpony_keys, workdir):
    """signed.test: MX mx.signed.test publishes the server key, wrong.signed.test a wrong
    key, bogus.signed.test the right key in a TXT record changed after signing."""
    server, wrong = xpony_keys["server"], xpony_keys["wrong"]
    ip = PONY_ADDR["pony"]
    records = "".join(
        f"{label}IN MX 10 mx{sub}\nmx{sub} IN A {ip}\n"
        f'_xpony._tcp.mx{sub} IN TXT "v=XPONY1; k=x25519; p={key.public}"\n'
        for label, sub, key in [("@ ", "", server), ("wrong ", ".wrong", wrong),
                                ("bogus ", ".bogus", server)])
    zone = SignedZone(workdir / f"signed-zone-{token()}", "signed.test", records,
                      tamper=["_xpony._tcp.mx.bogus.signed.test"])
    zone.start()
    try:
        yield zone
    finally:
        zone.stop()


def deliver_signed(net, zone, state: Path, client, domain: str, prefix: str, *extra: str):
    tok = token()
    rcpt = f"{prefix}-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    args = ["--dns", zone.address, "--smtp-port", str(net.port), "--helo-name", "client.test",
            "--state-dir", str(state), "--host-key", str(client.path), *extra,
            "-f", "sender@client.test", "--", rcpt]
    return run_deliver(args, message), rcpt, body


def test_dnssec_key_overrides_a_pin(pony_net, xpony_keys, signed_zone, workdir):
    """proto-spec §8.3 P1: with `--dnssec FILE` (the zone's DNSKEYs as trust anchors) a
    validated key, named by a validated MX record, beats a stale pin and replaces it; the
    same answer read without validation is only an unsigned DNS key, which does not."""
    net, server, client, wrong = (pony_net, xpony_keys["server"], xpony_keys["client"],
                                  xpony_keys["wrong"])
    state = owned_dir(workdir / f"state-dnssec-{token()}")
    acc = pins(state, "accept", "mx.signed.test", wrong.public)
    assert acc.returncode == 0, acc.stdout + acc.stderr

    res, rcpt, _ = deliver_signed(net, signed_zone, state, client, "signed.test", "unsigned")
    assert_deferred(res, rcpt, "XPONY key refused", f"the pinned key {wrong.fingerprint}")
    not_arrived(net.backend, rcpt)

    res, rcpt, body = deliver_signed(net, signed_zone, state, client, "signed.test", "dnssec",
                                     "--dnssec", str(signed_zone.anchors))
    assert_xpony_delivery(res, net, "signed.test", rcpt, server.fingerprint,
                          "verified=yes (DNSSEC key) level=authenticated")
    arrived(net.backend, rcpt, body)
    assert pinned(state) == {"mx.signed.test": server.fingerprint}


def test_dnssec_wrong_key_and_bogus_answer(pony_net, xpony_keys, signed_zone, workdir):
    """A validated key that is not the server's defers; a key record that fails validation
    (bogus) defers without connecting to the MX at all."""
    net, client, wrong = pony_net, xpony_keys["client"], xpony_keys["wrong"]
    state = owned_dir(workdir / f"state-dnssec-bad-{token()}")
    anchors = ("--dnssec", str(signed_zone.anchors))
    res, rcpt, _ = deliver_signed(net, signed_zone, state, client, "wrong.signed.test",
                                  "dnssecwrong", *anchors)
    assert_deferred(res, rcpt, "XPONY key refused",
                    f"the DNSSEC-signed DNS key {wrong.fingerprint}")
    not_arrived(net.backend, rcpt)

    log = LogSince(net.pony)
    res, rcpt, _ = deliver_signed(net, signed_zone, state, client, "bogus.signed.test",
                                  "dnssecbogus", *anchors)
    assert_deferred(res, rcpt, "_xpony._tcp.mx.bogus.signed.test", "bogus")
    assert " connect client=" not in log.text(), log.text()
    not_arrived(net.backend, rcpt)
    assert pinned(state) == {}


# --------------------------------------------------------------------------------------
# 6. A man in the middle tampering with the plaintext negotiation
# --------------------------------------------------------------------------------------

def test_mitm_strips_xpony(pony_net, xpony_keys, workdir):
    """(a) The proxy removes `XPONY` from the EHLO reply. A client holding a pin defers
    (downgrade). A client at first contact cannot tell: it delivers over STARTTLS. That is
    XPONY's known first-contact limitation (threat model: first-contact downgrade); only a
    key in DNS (test 5) or an earlier contact (the pin) closes it."""
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    mitm = net.mitm["strip"]
    pinned_state = owned_dir(workdir / f"state-strip-pinned-{token()}")
    fresh_state = owned_dir(workdir / f"state-strip-fresh-{token()}")

    mitm.set_mode("pass")
    before = set(mitm.sessions())
    res, rcpt, _, body = send(net, pinned_state, client, "strip.test", "strip")
    assert_xpony_delivery(res, net, "strip.test", rcpt, server.fingerprint, FIRST_CONTACT)
    arrived(net.backend, rcpt, body)
    events = mitm_session(mitm, before)
    assert not any(e.startswith("stripped") for e in events), events
    assert pinned(pinned_state) == {"mx.strip.test": server.fingerprint}

    mitm.set_mode("strip-xpony")
    before = set(mitm.sessions())
    res, rcpt2, _, _ = send(net, pinned_state, client, "strip.test", "strip2")
    assert_deferred(res, rcpt2, "mx.strip.test", "did not offer it", "downgrade")
    events = mitm_session(mitm, before)
    assert f"stripped '250 XPONY {XPONY_PROTOCOL}' from the EHLO reply" in events, events
    not_arrived(net.backend, rcpt2)

    # First contact through the same attacker: no way to notice; STARTTLS, no pin.
    before = set(mitm.sessions())
    res, rcpt3, _, body3 = send(net, fresh_state, client, "strip.test", "strip3")
    assert res.returncode == 0, show(res)
    line = log_line(res, rcpt3)
    assert re.search(r" tls=TLSv1\.3/\S+ verified=no \([^)]*\) level=encrypted ", line), line
    events = mitm_session(mitm, before)
    assert f"stripped '250 XPONY {XPONY_PROTOCOL}' from the EHLO reply" in events, events
    assert "STARTTLS accepted; switched to TLS" in events, events
    arrived(net.backend, rcpt3, body3)
    assert pinned(fresh_state) == {}


def test_mitm_strips_starttls_prologue_mismatch(pony_net, xpony_keys, workdir):
    """(b) The proxy removes `STARTTLS` from the EHLO reply and keeps XPONY: the client
    hashes a capability list the server never sent, so message 2 does not decrypt
    (proto-spec §4.2) and the attempt is deferred, even at first contact."""
    net, client = pony_net, xpony_keys["client"]
    mitm = net.mitm["nostarttls"]
    mitm.set_mode("strip-starttls")
    state = owned_dir(workdir / f"state-nostarttls-{token()}")
    before = set(mitm.sessions())
    res, rcpt, _, _ = send(net, state, client, "nostarttls.test", "nostarttls")
    line = assert_deferred(res, rcpt, "XPONY handshake with mx.nostarttls.test", "failed")
    assert re.search(r"handshake with mx\.nostarttls\.test\[[\d.]+\] failed: ", line), line
    events = mitm_session(mitm, before)
    assert "stripped '250-STARTTLS' from the EHLO reply" in events, events
    not_arrived(net.backend, rcpt)
    assert pinned(state) == {}


def test_prologue_mismatch_client_aborts_with_star(pony_net, xpony_keys, workdir):
    """proto-spec §3.4 / §10.2 (C-334, "message 2 fails"): the client sends `*` after a
    message 2 that fails, waits for the 501, then QUITs. The proxy records the client's
    line after the 334."""
    net, client = pony_net, xpony_keys["client"]
    mitm = net.mitm["nostarttls"]
    mitm.set_mode("strip-starttls")
    state = owned_dir(workdir / f"state-nostarttls-star-{token()}")
    before = set(mitm.sessions())
    res, rcpt, _, _ = send(net, state, client, "nostarttls.test", "nostarttls-star")
    assert res.returncode == 75, show(res)
    events = mitm_session(mitm, before)
    assert "client's line after the 334: b'*' (1 octets)" in events, (
        "after a message 2 that fails the client must send `*` (§3.4), not anything the "
        "server would read as message 3; the proxy saw:\n  " + "\n  ".join(events))


def test_mitm_injects_after_334(pony_net, xpony_keys, workdir):
    """(c) The proxy appends `250 injected` to the server's 334 line in the same write:
    the client refuses to go on (§3.6 rule 5), defers, and nothing is delivered."""
    net, client = pony_net, xpony_keys["client"]
    mitm = net.mitm["inject334"]
    mitm.set_mode("inject-334")
    state = owned_dir(workdir / f"state-inject334-{token()}")
    log = LogSince(net.pony)
    before = set(mitm.sessions())
    res, rcpt, _, _ = send(net, state, client, "inject334.test", "inject334")
    assert_deferred(res, rcpt, "XPONY handshake with mx.inject334.test", "failed",
                    "injection")
    events = mitm_session(mitm, before)
    assert "injected b'250 injected\\r\\n' after the server's 334 line" in events, events
    [disc] = inbound_sessions(log)
    assert " messages=0 " in disc and " tls=XPONY" not in disc, disc
    assert not re.search(r" xpony client=", log.text()), log.text()
    not_arrived(net.backend, rcpt)
    assert pinned(state) == {}


def test_response_injection_client_writes_nothing_after_334(pony_net, xpony_keys, workdir):
    """proto-spec §3.6 rule 5 and §3.4 ("close the connection at once, write nothing
    more"): after a 334 with bytes behind it the client sends neither message 3, nor `*`,
    nor anything else. (A QUIT there would be read by the server as message 3.)"""
    net, client = pony_net, xpony_keys["client"]
    mitm = net.mitm["inject334"]
    mitm.set_mode("inject-334")
    state = owned_dir(workdir / f"state-inject334-quiet-{token()}")
    before = set(mitm.sessions())
    res, rcpt, _, _ = send(net, state, client, "inject334.test", "inject334-quiet")
    assert res.returncode == 75, show(res)
    events = mitm_session(mitm, before)
    assert "client closed after the 334 without writing anything" in events, (
        "after bytes behind the 334 the client must close and write nothing more (§3.6 "
        "rule 5); the proxy saw:\n  " + "\n  ".join(events))


def test_mitm_injects_command_after_xpony(pony_net, xpony_keys, workdir):
    """(d) The proxy appends plaintext `MAIL FROM:<evil@x>` to the client's XPONY line in
    the same write: the inbound refuses (554, §3.6 rule 1), logs refused=xpony-injection,
    and closes; the client defers, with or without a pin."""
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    mitm = net.mitm["injectcmd"]
    backend_log_start = len(net.backend.log_text())
    for pin in (False, True):
        state = owned_dir(workdir / f"state-injectcmd-{pin}-{token()}")
        if pin:
            acc = pins(state, "accept", "mx.injectcmd.test", server.public)
            assert acc.returncode == 0, acc.stdout + acc.stderr
        mitm.set_mode("inject-xpony")
        log = LogSince(net.pony)
        before = set(mitm.sessions())
        res, rcpt, _, _ = send(net, state, client, "injectcmd.test", f"injectcmd-{pin}")
        assert res.returncode == 75, show(res)
        line = status_line(res)
        assert line.startswith("4."), line
        if pin:
            assert line.startswith("4.7.5 ") and "554 5.5.1" in line, line
        events = mitm_session(mitm, before)
        assert "injected b'MAIL FROM:<evil@x>\\r\\n' after the client's XPONY line" in events, \
            events
        assert any(e.startswith("server answered XPONY: b'554 5.5.1 ") for e in events), events
        log.wait(r" refused=xpony-injection ")
        [disc] = inbound_sessions(log)
        assert ' reply="554 5.5.1 ' in disc and " messages=0 " in disc, disc
        assert " tls=none " in disc, disc
        not_arrived(net.backend, rcpt)
    assert "evil@x" not in net.backend.log_text()[backend_log_start:]


# --------------------------------------------------------------------------------------
# 6b. The channel as a man in the middle sees it: padding and the end of a session
# --------------------------------------------------------------------------------------

def channel_frames(events: list[str]) -> tuple[list[tuple[int, int]], list[int]]:
    """The proxy's `frames` line: the client's frames as (L, server frames relayed before
    it arrived), the server's frame lengths."""
    [line] = [e for e in events if e.startswith("frames ")]
    m = re.match(r"frames c->s=(\S*) s->c=(\S*)$", line)
    assert m, line
    c2s = [tuple(int(x) for x in f.split("@")) for f in m.group(1).split(",") if f]
    s2c = [int(x) for x in m.group(2).split(",") if x]
    return c2s, s2c


def assert_padded_and_closed_after_221(events: list[str]):
    """proto-spec §5.4: every frame of both sides has L a multiple of 256 (or 65535);
    §5.6: the server's last two frames are its 221 and its CLOSE, and the client's last
    frame (its CLOSE) came only after the 221 had been relayed to it."""
    c2s, s2c = channel_frames(events)
    assert len(c2s) >= 3 and len(s2c) >= 3, events
    unpadded = [n for n, _ in c2s if n % 256 and n != 65535] + \
        [n for n in s2c if n % 256 and n != 65535]
    assert not unpadded, f"frames not padded to multiples of 256 (§5.4): {unpadded}; {events}"
    last, after = c2s[-1]
    assert after >= len(s2c) - 1, (
        f"the client's last frame arrived after {after} of the server's {len(s2c)} frames: "
        f"it sent nothing after the 221 (no CLOSE, §5.6); {events}")
    assert last == 256, f"the client's last frame (CLOSE) should be 256 octets: {events}"


def test_deliver_pads_and_sends_close_after_221(pony_net, xpony_keys, workdir):
    """Through the man in the middle in `pass` mode (it reads the frame lengths, it cannot
    decrypt): `deliver` and the inbound pad every frame (§5.4), the inbound sends 221 and
    CLOSE, and deliver sends its CLOSE after the 221 (§5.6), so the inbound's session ends
    as end=quit, not as a truncation."""
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    mitm = net.mitm["strip"]
    mitm.set_mode("pass")
    state = owned_dir(workdir / f"state-close-{token()}")
    log = LogSince(net.pony)
    before = set(mitm.sessions())
    res, rcpt, _, body = send(net, state, client, "strip.test", "close")
    assert_xpony_delivery(res, net, "strip.test", rcpt, server.fingerprint, FIRST_CONTACT)
    arrived(net.backend, rcpt, body)
    assert_padded_and_closed_after_221(mitm_session(mitm, before))
    [disc] = inbound_sessions(log)
    assert " messages=1 " in disc and " end=quit " in disc, disc
    assert "client-error=" not in log.text(), log.text()


def test_outbound_smtp_proxy_closes_its_cached_session_with_close(pony_net, xpony_keys,
                                                                    workdir):
    """The SMTP proxy keeps an MX session open for 2 s after a transaction (outbound/
    cache.rs); when it ends it, QUIT, the 221, then CLOSE (§5.6), padded (§5.4)."""
    import smtplib
    net, server, client = pony_net, xpony_keys["server"], xpony_keys["client"]
    mitm = net.mitm["strip"]
    mitm.set_mode("pass")
    state = owned_dir(workdir / f"state-close-proxy-{token()}")
    bp = BlackponyOutbound(workdir / "logs", name="outbound-xpony-close", protocol="smtp",
                           args=net.outbound_args(state, "--host-key", str(client.path)))
    bp.start()
    try:
        before = set(mitm.sessions())
        tok = token()
        rcpt = f"closeproxy-{tok}@strip.test"
        message, body = make_message(tok, [rcpt])
        with smtplib.SMTP(bp.host, bp.port, timeout=60) as c:
            assert c.sendmail("sender@client.test", [rcpt], crlf(message)) == {}
        arrived(net.backend, rcpt, body)
        # The cached session is closed 2 s after its transaction.
        assert_padded_and_closed_after_221(mitm_session(mitm, before))
    finally:
        bp.stop()


# --------------------------------------------------------------------------------------
# 7. Ordinary clients of an inbound with a host key
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_inbound_with_host_key_serves_swaks(pony_net, tls):
    """swaks sees XPONY in the plaintext EHLO reply, ignores it, and delivers as before;
    after STARTTLS the EHLO reply no longer lists XPONY (proto-spec §2)."""
    net = pony_net
    bp = net.pony
    tok = token()
    to = f"swaks-xpony-{tok}@{MAIL_DOMAIN}"
    marker = f"xpony-swaks-marker-{tok}"
    res = swaks(bp.port, to, *(["--tls"] if tls else []), host=bp.host,
                body=f"Hello.\n{marker}\nBye.")
    out = res.stdout.decode(errors="replace")
    assert res.returncode == 0, transcript(res) + "\n" + bp.log_text()
    plain_ehlo = [l for l in out.splitlines() if l.startswith("<-  250")]
    assert any(l.startswith(f"<-  250 XPONY {XPONY_PROTOCOL}") or
               l.startswith(f"<-  250-XPONY {XPONY_PROTOCOL}") for l in plain_ehlo), out
    assert "XPONY" not in "".join(l for l in out.splitlines() if l.startswith(" -> ")), out
    if tls:
        assert "TLS started with cipher TLSv1.3" in out, out
        tls_ehlo = [l for l in out.splitlines() if l.startswith("<~  250")]
        assert tls_ehlo and not [l for l in tls_ehlo if "XPONY" in l or "STARTTLS" in l], out
    net.backend.wait_messages(to)
    [(path, msg)] = net.backend.messages(to)
    assert marker.encode() in msg, msg
    trace = blackpony_received(msg)
    assert trace is not None, msg
    if tls:
        assert b"with ESMTPS (TLSv1.3 " in trace, trace
    else:
        assert b"with ESMTP (without TLS)" in trace, trace
    assert b"XPONY" not in trace, trace
    qid = postfix_queue_id(msg)
    client = net.backend.client_of_queue_id(qid) if qid else None
    assert client and client.endswith(f"[{CLIENT_IP}]"), (client, net.backend.log_tail(30))
