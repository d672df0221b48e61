"""`blackpony fetch` (proto-spec/fetch.md) against real peers.

The relay side is `examples/fetch_relay.rs` (the relay's own XFETCH code over a FileSpool)
until `blackpony seal` serves XFETCH; the sealed files are made the way seal makes them
(the sealed format of proto-spec/sealed-relay.md §1) and encrypted with Debian's `age` CLI,
then published into the spool as FileSpool does (tmp/, rename into new/).

- fetched into a private Postfix at home (SMTP): every message arrives for every recipient,
  its body intact (Postfix stores LF line ends: compared with CRLF as LF), the spool empty;
- fetched into a Maildir: the files hold exactly `Return-Path:` + the message, byte for byte;
- a home key the relay does not know: refused (exit 78), logged by the relay with the key's
  fingerprint, nothing sent, the spool untouched;
- a man in the middle that swaps keys (`blackpony inbound` with another host key on the
  relay's address): refused at message 2 by the pinned or configured key (exit 75);
- `fetch` killed with SIGKILL mid-transfer, over and over: every message reaches Postfix at
  least once, nothing is lost, the spool ends empty.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from interop.peers import (Blackpony, PeerError, Postfix, Process, blackpony_bin, free_port,
                           keygen, require_tool, smtp_greeting, wait_for)

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def relay_bin() -> str:
    path = Path(blackpony_bin()).parent / "examples" / "fetch_relay"
    if not path.exists():
        raise PeerError(f"{path} missing: cargo build --release --example fetch_relay")
    return str(path)


def age_keygen(path: Path) -> str:
    """Debian's age-keygen; returns the recipient (age1…)."""
    res = subprocess.run([require_tool("age-keygen"), "-o", str(path)], capture_output=True,
                         text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    m = re.search(r"(age1[0-9a-z]+)", res.stderr + path.read_text())
    assert m, res.stderr
    return m.group(1)


class Spool:
    """A FileSpool directory, written the way FileSpool publishes."""

    def __init__(self, path: Path, recipient: str):
        self.path = path
        self.recipient = recipient
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    def publish(self, sender: str, rcpts: list[str], message: bytes) -> str:
        plain = b"BLACKPONY-SEALED 1\r\nMAIL FROM:<" + sender.encode() + b">\r\n"
        plain += b"".join(b"RCPT TO:<" + r.encode() + b">\r\n" for r in rcpts)
        plain += b"\r\n" + message
        res = subprocess.run([require_tool("age"), "-e", "-r", self.recipient], input=plain,
                             capture_output=True, timeout=30)
        assert res.returncode == 0, res.stderr
        now = time.time()
        name = f"{int(now)}.{int(now * 1e6) % 1000000:06d}.{secrets.token_hex(8)}.age"
        tmp = self.path / "tmp" / name
        with open(tmp, "wb") as f:
            f.write(res.stdout)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, self.path / "new" / name)
        return name

    def ids(self) -> list[str]:
        return sorted(p.name for p in (self.path / "new").iterdir())


class Relay(Process):
    def __init__(self, base: Path, spool: Spool, host_key: Path, fetch_keys: list[str],
                 port: int | None = None):
        self.port = port or free_port()
        cmd = [relay_bin(), f"127.0.0.1:{self.port}", str(spool.path), str(host_key),
               *fetch_keys]
        super().__init__(cmd, base / f"relay-{self.port}.log", "fetch_relay")

    def start(self, timeout: float = 20):
        return super().start(lambda: (smtp_greeting("127.0.0.1", self.port) or b"")
                             .startswith(b"220"), timeout)


class Home:
    """What `blackpony fetch` needs at home."""

    def __init__(self, base: Path, keys: dict, age_key: Path):
        self.base = base
        self.keys = keys
        self.age_key = age_key
        self.state = base / "state"

    def fetch(self, relay_port: int, *target: str, key: str = "home", extra=(),
              timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [blackpony_bin(), "fetch", "--from", f"127.0.0.1:{relay_port}",
               "--host-key", str(self.keys[key].path), "--age-identity", str(self.age_key),
               "--state-dir", str(self.state), "--helo-name", "home.test", *target, *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def setup(workdir):
    d = workdir / "fetch"
    d.mkdir()
    os.chmod(d, 0o755)
    keys = {name: keygen(d / f"{name}.key", f"{name}.test")
            for name in ("home", "relay", "stranger")}
    age_key = d / "mail.age.key"
    recipient = age_keygen(age_key)
    return d, keys, age_key, recipient


@pytest.fixture(scope="module")
def postfix(workdir):
    base = workdir / "postfix-home"
    base.mkdir()
    pf = Postfix(base)
    pf.start()
    try:
        yield pf
    finally:
        pf.stop()


def prepare(setup, name: str):
    """A directory for one test, with an empty spool sealed to our age key."""
    d, keys, age_key, recipient = setup
    base = d / name
    base.mkdir()
    return base, Spool(base / "spool", recipient), keys, age_key


def serve(base: Path, spool: Spool, keys: dict, port: int | None = None) -> Relay:
    """The relay, serving our home key."""
    return Relay(base, spool, keys["relay"].path, [keys["home"].public], port=port).start()


def body_of(message: bytes) -> bytes:
    return message.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def sample_messages(tag: str) -> list[bytes]:
    big = b"".join(b"line %06d of a long message %s\r\n" % (i, tag.encode())
                   for i in range(30000))
    return [
        f"Subject: {tag} one\r\nMessage-ID: <{tag}.1@x>\r\n\r\nhello\r\n.\r\n..two dots\r\n".encode(),
        f"Subject: {tag} two\r\nMessage-ID: <{tag}.2@x>\r\n\r\n".encode() + "caf\u00e9 \u00fcber\r\n".encode(),
        f"Subject: {tag} big\r\nMessage-ID: <{tag}.3@x>\r\n\r\n".encode() + big,
    ]


def test_fetch_into_postfix(setup, postfix, workdir):
    base, spool, keys, age_key = prepare(setup, "postfix-run")
    messages = sample_messages("pf")
    for m in messages:
        spool.publish("sender@example.net", [ALICE, BOB], m)
    relay = serve(base, spool, keys)
    try:
        home = Home(base, keys, age_key)
        res = home.fetch(relay.port, "--deliver-to", f"127.0.0.1:{postfix.port}")
        assert res.returncode == 0, res.stderr + relay.log_text()
        assert "fetched=3" in res.stderr, res.stderr
        assert spool.ids() == []
        for rcpt in (ALICE, BOB):
            got = postfix.wait_messages(rcpt, 3)
            bodies = sorted(body_of(data) for _, data in got)
            assert bodies == sorted(body_of(m) for m in messages)
        # The relay key is pinned; a second run finds nothing.
        res = home.fetch(relay.port, "--deliver-to", f"127.0.0.1:{postfix.port}")
        assert res.returncode == 0, res.stderr
        assert "fetched=0" in res.stderr, res.stderr
        assert "refused=fetch-key" not in relay.log_text()
    finally:
        relay.stop()


def test_fetch_into_a_maildir(setup):
    base, spool, keys, age_key = prepare(setup, "maildir-run")
    messages = sample_messages("md")
    for m in messages:
        spool.publish("sender@example.net", [ALICE], m)
    relay = serve(base, spool, keys)
    try:
        res = Home(base, keys, age_key).fetch(relay.port, "--maildir", str(base / "Maildir"),
                                             extra=["--relay-key", keys["relay"].public])
        assert res.returncode == 0, res.stderr + relay.log_text()
        assert spool.ids() == []
        files = sorted((base / "Maildir" / "new").iterdir())
        got = sorted(p.read_bytes() for p in files)
        want = sorted(b"Return-Path: <sender@example.net>\r\n" + m for m in messages)
        assert got == want
        assert list((base / "Maildir" / "tmp").iterdir()) == []
    finally:
        relay.stop()


def test_an_unknown_key_is_refused_and_logged(setup):
    base, spool, keys, age_key = prepare(setup, "unknown-run")
    spool.publish("sender@example.net", [ALICE], b"Subject: secret\r\n\r\nsecret\r\n")
    before = spool.ids()
    relay = serve(base, spool, keys)
    try:
        res = Home(base, keys, age_key).fetch(relay.port, "--maildir", str(base / "Maildir"),
                                             key="stranger")
        assert res.returncode == 78, res.stderr
        assert "not authorized for XFETCH" in res.stderr, res.stderr
        wait_for(lambda: f"refused=fetch-key key={keys['stranger'].fingerprint}"
                 in relay.log_text(), 10, "the relay's refusal line")
        assert "fetch offered" not in relay.log_text()
        assert spool.ids() == before
        assert not list((base / "Maildir" / "new").iterdir())
    finally:
        relay.stop()


def test_a_mitm_that_swaps_keys_fails(setup):
    base, spool, keys, age_key = prepare(setup, "mitm-run")
    home = Home(base, keys, age_key)
    maildir = ["--maildir", str(base / "Maildir")]
    port = free_port()
    relay = serve(base, spool, keys, port=port)
    try:
        res = home.fetch(port, *maildir)  # first fetch: pins the relay's key
        assert res.returncode == 0, res.stderr
        assert "pinned (first fetch)" in res.stderr, res.stderr
    finally:
        relay.stop()
    spool.publish("sender@example.net", [ALICE], b"Subject: x\r\n\r\nfor alice only\r\n")
    before = spool.ids()
    # The real relay moves; on its address a man in the middle with a key of its own
    # terminates XPONY and passes the dialogue on in plaintext.
    relay = serve(base, spool, keys)
    mitm = Blackpony(base, backend=f"127.0.0.1:{relay.port}", identity="none",
                     args=["--host-key", str(keys["stranger"].path)], name="mitm", port=port)
    try:
        mitm.start()
        res = home.fetch(port, *maildir)
        assert res.returncode == 75, res.stderr
        assert "expected the pinned key" in res.stderr, res.stderr
        assert keys["stranger"].fingerprint in res.stderr
        # A configured key is checked the same way (fresh state, no pin).
        res = Home(base / "other", keys, age_key).fetch(
            port, *maildir, extra=["--relay-key", keys["relay"].public])
        assert res.returncode == 75, res.stderr
        assert "expected the configured --relay-key" in res.stderr, res.stderr
        assert spool.ids() == before
        assert not list((base / "Maildir" / "new").iterdir())
        assert "fetch offered" not in relay.log_text()
    finally:
        mitm.stop()
        relay.stop()


def test_sigkill_mid_transfer_loses_nothing(setup, postfix):
    base, spool, keys, age_key = prepare(setup, "kill-run")
    rcpt = f"kill@{DOMAIN}"
    total = 60
    filler = b"".join(b"filler line %05d\r\n" % i for i in range(12000))
    for i in range(total):
        spool.publish("sender@example.net", [rcpt],
                      b"Subject: kill %d\r\nMessage-ID: <kill.%d@x>\r\n\r\nmarker-%d\r\n"
                      % (i, i, i) + filler)
    relay = serve(base, spool, keys)
    home = Home(base, keys, age_key)
    cmd_target = ["--deliver-to", f"127.0.0.1:{postfix.port}"]
    kills = 0
    try:
        for round_ in range(25):
            if not spool.ids():
                break
            cmd = [blackpony_bin(), "fetch", "--from", f"127.0.0.1:{relay.port}",
                   "--host-key", str(keys["home"].path), "--age-identity", str(age_key),
                   "--state-dir", str(home.state), "--helo-name", "home.test", *cmd_target]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL)
            time.sleep(0.05 + 0.04 * (round_ % 5))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait(timeout=10)
        assert kills >= 3, f"only {kills} runs were killed mid-transfer"
        res = home.fetch(relay.port, *cmd_target)
        assert res.returncode == 0, res.stderr + relay.log_text()
        assert spool.ids() == []
        got = postfix.wait_messages(rcpt, total, timeout=60)
        markers = [re.search(rb"marker-(\d+)", data).group(1) for _, data in got]
        seen = {int(m) for m in markers}
        assert seen == set(range(total)), sorted(set(range(total)) - seen)
        dups = len(markers) - len(seen)
        print(f"\n{kills} SIGKILLs, {total} messages, {dups} duplicate deliveries")
    finally:
        relay.stop()


def test_local_failures_keep_the_file(setup, workdir):
    base, spool, keys, age_key = prepare(setup, "failures-run")
    home = Home(base, keys, age_key)
    refused = f"refused@{DOMAIN}"
    pf_base = base / "postfix"
    pf_base.mkdir()
    postfix = Postfix(pf_base, settings={
        "smtpd_recipient_restrictions":
            f"check_recipient_access inline:{{{refused}=REJECT}}, permit_mynetworks, "
            "reject_unauth_destination"})
    postfix.start()
    relay = serve(base, spool, keys)
    try:
        # The local MTA is down: a temporary failure, the file stays (exit 75).
        spool.publish("sender@example.net", [ALICE], b"Subject: later\r\n\r\nlater\r\n")
        closed = free_port()
        res = home.fetch(relay.port, "--deliver-to", f"127.0.0.1:{closed}")
        assert res.returncode == 75, res.stderr
        assert "status=deferred" in res.stderr, res.stderr
        assert len(spool.ids()) == 1
        res = home.fetch(relay.port, "--deliver-to", f"127.0.0.1:{postfix.port}")
        assert res.returncode == 0, res.stderr
        assert spool.ids() == []
        # Postfix refuses the recipient for good (554): kept and logged (exit 65) at
        # every run, until the operator says delete.
        spool.publish("sender@example.net", [refused], b"Subject: refused\r\n\r\nrefused\r\n")
        for _ in range(2):
            res = home.fetch(relay.port, "--deliver-to", f"127.0.0.1:{postfix.port}")
            assert res.returncode == 65, res.stderr
            assert "status=kept-permanent" in res.stderr, res.stderr
            assert len(spool.ids()) == 1
        res = home.fetch(relay.port, "--deliver-to", f"127.0.0.1:{postfix.port}",
                         extra=["--on-permanent-failure", "delete"])
        assert res.returncode == 0, res.stderr
        assert "status=dropped" in res.stderr, res.stderr
        assert spool.ids() == []
    finally:
        relay.stop()
        postfix.stop()
