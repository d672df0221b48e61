"""`blackpony fetch` (proto-spec/fetch.md) against the real `blackpony seal`, end to end.

A sending MTA (a private Postfix with the relay as its relayhost, or Python's smtplib) hands
mail to `blackpony seal` (the MX of example.test); seal seals each message with age to the
owner's key and keeps only ciphertext in its spool (a body marker is grepped for: absent);
`blackpony fetch` at home connects to seal's fetch listener (XPONY, both keys checked),
pulls the sealed files with XFETCH, decrypts them and hands them on:

- into a private Postfix at home (SMTP): every message arrives for every recipient, its body
  intact (Postfix stores LF line ends: compared with CRLF as LF), the spool empty after;
- into a Maildir: the files hold exactly `Return-Path:` + the message, byte for byte;
- into Dovecot's LMTP server (TCP and Unix socket), which answers for each recipient: one
  recipient's temporary failure keeps the file on the relay, the next run delivers to that
  recipient only, then the file is deleted;
- a home key the relay does not know: refused (exit 78), logged by the relay with the key's
  fingerprint, nothing sent, the spool untouched;
- a man in the middle that swaps keys (`blackpony inbound` with another host key on the
  relay's fetch address): refused at message 2 by the pinned or configured key (exit 75);
- `fetch` killed with SIGKILL mid-transfer, over and over: every message reaches Postfix at
  least once, nothing is lost, the spool ends empty.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from interop.peers import (Blackpony, Postfix, Process, blackpony_bin, free_port, keygen,
                           require_tool, smtp_greeting, wait_for)

DOMAIN = "example.test"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"


def age_keygen(path: Path) -> str:
    """Debian's age-keygen; returns the recipient (age1…)."""
    res = subprocess.run([require_tool("age-keygen"), "-o", str(path)], capture_output=True,
                         text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    m = re.search(r"(age1[0-9a-z]+)", res.stderr + path.read_text())
    assert m, res.stderr
    return m.group(1)


class Relay(Process):
    """`blackpony seal`: the MX of example.test on one port, fetch for our home key on
    another, the spool in base/spool."""

    def __init__(self, base: Path, keys: dict, recipient: str, fetch_port: int | None = None):
        self.port = free_port()
        self.fetch_port = fetch_port or free_port()
        self.spool = base / "spool"
        self.spool.mkdir(exist_ok=True)
        cmd = [blackpony_bin(), "seal", "--hostname", "relay.test",
               "--listen", f"127.0.0.1:{self.port}", "--domain", DOMAIN,
               "--recipient-key", recipient, "--spool", str(self.spool),
               "--host-key", str(keys["relay"].path), "--fetch-key", keys["home"].public,
               "--fetch-listen", f"127.0.0.1:{self.fetch_port}"]
        super().__init__(cmd, base / f"seal-{self.port}.log", "blackpony seal")

    def start(self, timeout: float = 20):
        def up():
            return all((smtp_greeting("127.0.0.1", p) or b"").startswith(b"220")
                       for p in (self.port, self.fetch_port))
        return super().start(up, timeout)

    def send(self, sender: str, rcpts: list[str], message: bytes):
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as c:
            assert c.sendmail(sender, rcpts, message) == {}

    def ids(self) -> list[str]:
        new = self.spool / "new"
        return sorted(p.name for p in new.iterdir()) if new.exists() else []

    def assert_only_ciphertext(self, marker: bytes):
        files = [p for p in self.spool.rglob("*") if p.is_file()]
        assert files, "nothing in the spool"
        for p in files:
            data = p.read_bytes()
            assert data.startswith(b"age-encryption.org/v1\n"), p
            assert marker not in data, p


class Home:
    """What `blackpony fetch` needs at home."""

    def __init__(self, base: Path, keys: dict, age_key: Path):
        self.base = base
        self.keys = keys
        self.age_key = age_key
        self.state = base / "state"

    def command(self, fetch_port: int, *target: str, key: str = "home", extra=()) -> list[str]:
        return [blackpony_bin(), "fetch", "--from", f"127.0.0.1:{fetch_port}",
                "--host-key", str(self.keys[key].path), "--age-identity", str(self.age_key),
                "--state-dir", str(self.state), "--helo-name", "home.test", *target, *extra]

    def fetch(self, fetch_port: int, *target: str, key: str = "home", extra=(),
              timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(fetch_port, *target, key=key, extra=extra),
                              capture_output=True, text=True, timeout=timeout,
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
    """A directory for one test."""
    d, keys, age_key, recipient = setup
    base = d / name
    base.mkdir()
    return base, keys, age_key, recipient


def serve(base: Path, keys: dict, recipient: str, fetch_port: int | None = None) -> Relay:
    """The relay, sealing to our age key and serving our home key."""
    return Relay(base, keys, recipient, fetch_port=fetch_port).start()


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


def sending_postfix(base: Path, relay: Relay) -> Postfix:
    """A private Postfix that relays everything to the sealed relay (relayhost)."""
    base.mkdir()
    os.chmod(base, 0o755)
    return Postfix(base, domains=["sender.test"], settings={
        "relayhost": f"[127.0.0.1]:{relay.port}",
        "default_transport": "smtp", "relay_transport": "smtp",
        "smtp_tls_security_level": "may",
    }, services="smtp      unix  -       -       n       -       -       smtp\n"
                "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n")


def test_sending_mta_to_seal_to_fetch_into_postfix(setup, postfix):
    """Postfix (sender) -> seal -> spool of ciphertext -> fetch -> Postfix (home)."""
    base, keys, age_key, recipient = prepare(setup, "postfix-run")
    messages = sample_messages("pf")
    relay = serve(base, keys, recipient)
    sender = sending_postfix(base / "sender-postfix", relay)
    try:
        with sender:
            for m in messages:
                with smtplib.SMTP(sender.host, sender.port, timeout=30) as c:
                    assert c.sendmail("someone@sender.test", [ALICE, BOB], m) == {}
            wait_for(lambda: len(relay.ids()) == 3, 60,
                     f"3 sealed files; sender log:\n{sender.log_tail()}\n"
                     f"seal log:\n{relay.log_text()}")
        relay.assert_only_ciphertext(b"line 000123 of a long message pf")
        home = Home(base, keys, age_key)
        res = home.fetch(relay.fetch_port, "--deliver-to", f"127.0.0.1:{postfix.port}")
        assert res.returncode == 0, res.stderr + relay.log_text()
        assert "fetched=3" in res.stderr, res.stderr
        assert relay.ids() == []
        for rcpt in (ALICE, BOB):
            got = postfix.wait_messages(rcpt, 3)
            bodies = sorted(body_of(data) for _, data in got)
            assert bodies == sorted(body_of(m) for m in messages)
        # The relay key is pinned; a second run finds nothing.
        res = home.fetch(relay.fetch_port, "--deliver-to", f"127.0.0.1:{postfix.port}")
        assert res.returncode == 0, res.stderr
        assert "fetched=0" in res.stderr, res.stderr
        log = relay.log_text()
        assert "refused=fetch-key" not in log
        assert len(re.findall(r"fetch deleted id=", log)) == 3, log
    finally:
        relay.stop()


def test_fetch_into_a_maildir(setup):
    base, keys, age_key, recipient = prepare(setup, "maildir-run")
    messages = sample_messages("md")
    relay = serve(base, keys, recipient)
    try:
        for m in messages:
            relay.send("sender@example.net", [ALICE], m)
        relay.assert_only_ciphertext(b"line 000123 of a long message md")
        res = Home(base, keys, age_key).fetch(relay.fetch_port, "--maildir",
                                             str(base / "Maildir"),
                                             extra=["--relay-key", keys["relay"].public])
        assert res.returncode == 0, res.stderr + relay.log_text()
        assert relay.ids() == []
        files = sorted((base / "Maildir" / "new").iterdir())
        got = sorted(p.read_bytes() for p in files)
        want = sorted(b"Return-Path: <sender@example.net>\r\n" + m for m in messages)
        assert got == want
        assert list((base / "Maildir" / "tmp").iterdir()) == []
    finally:
        relay.stop()


class Dovecot(Process):
    """Debian's Dovecot serving LMTP only, on 127.0.0.1:port and on base/run/lmtp, for
    the mailboxes alice and bob of example.test (Maildirs under base/mail, owned by nobody).
    bob's home is under base/locked, which `lock_bob(True)` makes unwritable for nobody, so
    that Dovecot accepts bob at RCPT and fails him after the message (451)."""

    def __init__(self, base: Path):
        base.mkdir()
        os.chmod(base, 0o755)
        self.base = base
        self.port = free_port()
        self.socket = base / "run" / "lmtp"
        self.mail = base / "mail"
        self.locked = base / "locked"
        for d in (self.mail, self.locked):
            d.mkdir()
            os.chown(d, 65534, 65534)
        (base / "users").write_text(f"{ALICE}::65534:65534::{self.mail}/alice\n"
                                    f"{BOB}::65534:65534::{self.locked}/bob\n")
        (base / "dovecot.conf").write_text(f"""\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = {base}/users
}}
userdb {{
  driver = passwd-file
  args = {base}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
""")
        cmd = [require_tool("dovecot"), "-F", "-c", str(base / "dovecot.conf")]
        super().__init__(cmd, base / "dovecot.out", "dovecot")

    def start(self, timeout: float = 20):
        return super().start(lambda: (smtp_greeting("127.0.0.1", self.port) or b"")
                             .startswith(b"220") and self.socket.exists(), timeout)

    def lock_bob(self, locked: bool):
        os.chown(self.locked, 0 if locked else 65534, 0 if locked else 65534)

    def messages(self, who: str) -> list[bytes]:
        home = (self.mail / who) if who == "alice" else (self.locked / who)
        new = home / "Maildir" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_fetch_into_dovecot_lmtp_per_recipient(setup, via):
    """fetch --deliver-to lmtp:HOST:PORT / lmtp:unix:PATH against Dovecot: each recipient's
    own reply counts; the relay deletes the file only once every recipient got 250, and a
    resumed run delivers only to the recipient still owed."""
    base, keys, age_key, recipient = prepare(setup, f"lmtp-{via}-run")
    dovecot = Dovecot(base / "dovecot").start()
    relay = serve(base, keys, recipient)
    try:
        target = (f"lmtp:127.0.0.1:{dovecot.port}" if via == "tcp"
                  else f"lmtp:unix:{dovecot.socket}")
        message = b"Subject: lmtp\r\n\r\nfor alice and bob\r\n"
        relay.send("sender@example.net", [ALICE, BOB], message)
        home = Home(base, keys, age_key)
        dovecot.lock_bob(True)
        res = home.fetch(relay.fetch_port, "--deliver-to", target)
        assert res.returncode == 75, res.stderr
        assert f"to=<{ALICE}> target={target} status=delivered (250 " in res.stderr, res.stderr
        assert f"to=<{BOB}> target={target} status=deferred (4" in res.stderr, res.stderr
        assert len(relay.ids()) == 1
        assert [body_of(m) for m in dovecot.messages("alice")] == [body_of(message)]
        dovecot.lock_bob(False)
        res = home.fetch(relay.fetch_port, "--deliver-to", target)
        assert res.returncode == 0, res.stderr
        assert f"to=<{ALICE}>" not in res.stderr, res.stderr  # not delivered twice
        assert f"to=<{BOB}> target={target} status=delivered" in res.stderr, res.stderr
        assert relay.ids() == []
        assert len(dovecot.messages("alice")) == 1
        assert [body_of(m) for m in dovecot.messages("bob")] == [body_of(message)]
    finally:
        relay.stop()
        dovecot.stop()


def test_the_mx_port_serves_no_fetch_and_the_fetch_port_no_mail(setup):
    """XFETCH is served only inside XPONY on the fetch listener; that listener takes no
    mail, and the MX offers XPONY (with the relay's key) but never XFETCH."""
    base, keys, age_key, recipient = prepare(setup, "ports-run")
    relay = serve(base, keys, recipient)
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as c:
            code, caps = c.ehlo("probe.test")
            assert code == 250
            assert b"XPONY Noise_XX_25519_ChaChaPoly_SHA256" in caps, caps
            assert b"XFETCH" not in caps, caps
            assert c.docmd("XFETCH NEXT")[0] == 502
        with smtplib.SMTP("127.0.0.1", relay.fetch_port, timeout=10) as c:
            code, caps = c.ehlo("probe.test")
            assert b"XFETCH" not in caps, caps  # only inside the channel
            assert c.docmd("XFETCH NEXT")[0] == 530
            assert c.docmd("MAIL FROM:<a@b.test>")[0] == 502
        assert relay.ids() == []
    finally:
        relay.stop()


def test_fetch_pointed_at_the_mx_port_says_to_use_the_fetch_port(setup):
    """The issue's `fetch --from relay.example.org:25`: the MX port serves no fetch, and the
    operator is told so in words that name the fix (--fetch-listen, port 2525), with the
    configuration exit status (78) and the spool untouched."""
    base, keys, age_key, recipient = prepare(setup, "mxport-run")
    relay = serve(base, keys, recipient)
    try:
        relay.send("sender@example.net", [ALICE], b"Subject: wait\r\n\r\nwait\r\n")
        before = relay.ids()
        res = Home(base, keys, age_key).fetch(relay.port, "--maildir", str(base / "Maildir"))
        assert res.returncode == 78, res.stderr
        assert f"127.0.0.1:{relay.port} is not a fetch port" in res.stderr, res.stderr
        assert "--fetch-listen" in res.stderr and "2525" in res.stderr, res.stderr
        assert relay.ids() == before
        assert not list((base / "Maildir" / "new").iterdir())
    finally:
        relay.stop()


def test_an_unknown_key_is_refused_and_logged(setup):
    base, keys, age_key, recipient = prepare(setup, "unknown-run")
    relay = serve(base, keys, recipient)
    try:
        relay.send("sender@example.net", [ALICE], b"Subject: secret\r\n\r\nsecret\r\n")
        before = relay.ids()
        assert len(before) == 1
        res = Home(base, keys, age_key).fetch(relay.fetch_port, "--maildir",
                                             str(base / "Maildir"), key="stranger")
        assert res.returncode == 78, res.stderr
        assert "not authorized for XFETCH" in res.stderr, res.stderr
        wait_for(lambda: f"refused=fetch-key key={keys['stranger'].fingerprint}"
                 in relay.log_text(), 10, "the relay's refusal line")
        assert "fetch offered" not in relay.log_text()
        assert relay.ids() == before
        assert not list((base / "Maildir" / "new").iterdir())
    finally:
        relay.stop()


def test_a_mitm_that_swaps_keys_fails(setup):
    base, keys, age_key, recipient = prepare(setup, "mitm-run")
    home = Home(base, keys, age_key)
    maildir = ["--maildir", str(base / "Maildir")]
    port = free_port()
    relay = serve(base, keys, recipient, fetch_port=port)
    try:
        res = home.fetch(port, *maildir)  # first fetch: pins the relay's key
        assert res.returncode == 0, res.stderr
        assert "pinned (first fetch)" in res.stderr, res.stderr
    finally:
        relay.stop()
    # The real relay's fetch listener moves; on its address a man in the middle with a
    # key of its own terminates XPONY and passes the dialogue on in plaintext.
    relay = serve(base, keys, recipient)
    mitm = Blackpony(base, backend=f"127.0.0.1:{relay.fetch_port}", identity="none",
                     args=["--host-key", str(keys["stranger"].path)], name="mitm", port=port)
    try:
        relay.send("sender@example.net", [ALICE], b"Subject: x\r\n\r\nfor alice only\r\n")
        before = relay.ids()
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
        assert relay.ids() == before
        assert not list((base / "Maildir" / "new").iterdir())
        assert "fetch offered" not in relay.log_text()
    finally:
        mitm.stop()
        relay.stop()


def test_sigkill_mid_transfer_loses_nothing(setup, postfix):
    base, keys, age_key, recipient = prepare(setup, "kill-run")
    rcpt = f"kill@{DOMAIN}"
    batch = 60
    min_kills = 3
    filler = b"".join(b"filler line %05d\r\n" % i for i in range(12000))
    relay = serve(base, keys, recipient)
    home = Home(base, keys, age_key)
    target = ["--deliver-to", f"127.0.0.1:{postfix.port}"]
    kills = 0
    total = 0

    def send_batch():
        nonlocal total
        with smtplib.SMTP("127.0.0.1", relay.port, timeout=30) as c:
            for i in range(total, total + batch):
                assert c.sendmail("sender@example.net", [rcpt],
                                  b"Subject: kill %d\r\nMessage-ID: <kill.%d@x>\r\n\r\n"
                                  b"marker-%d\r\n" % (i, i, i) + filler) == {}
        total += batch
        assert len(relay.ids()) == batch

    try:
        send_batch()
        # Runs killed 50-210 ms in, until the spool is empty and at least `min_kills` runs
        # died mid-transfer. The count must not hang on the machine's speed: a run that
        # ends before its kill halves the delays, and an empty spool before the last kill
        # gets another batch.
        pace = 1.0
        for round_ in range(60):
            if not relay.ids():
                if kills >= min_kills:
                    break
                send_batch()
            p = subprocess.Popen(home.command(relay.fetch_port, *target),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 stdin=subprocess.DEVNULL)
            time.sleep((0.05 + 0.04 * (round_ % 5)) * pace)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            else:
                pace = max(pace / 2, 1 / 32)
            p.wait(timeout=10)
        assert kills >= min_kills, f"only {kills} runs were killed mid-transfer"
        res = home.fetch(relay.fetch_port, *target)
        assert res.returncode == 0, res.stderr + relay.log_text()
        assert relay.ids() == []
        got = postfix.wait_messages(rcpt, total, timeout=60)
        markers = [re.search(rb"marker-(\d+)", data).group(1) for _, data in got]
        seen = {int(m) for m in markers}
        assert seen == set(range(total)), sorted(set(range(total)) - seen)
        dups = len(markers) - len(seen)
        print(f"\n{kills} SIGKILLs, {total} messages, {dups} duplicate deliveries")
    finally:
        relay.stop()


def test_local_failures_keep_the_file(setup):
    base, keys, age_key, recipient = prepare(setup, "failures-run")
    home = Home(base, keys, age_key)
    refused = f"refused@{DOMAIN}"
    pf_base = base / "postfix"
    pf_base.mkdir()
    postfix = Postfix(pf_base, settings={
        "smtpd_recipient_restrictions":
            f"check_recipient_access inline:{{{refused}=REJECT}}, permit_mynetworks, "
            "reject_unauth_destination"})
    postfix.start()
    relay = serve(base, keys, recipient)
    try:
        # The local MTA is down: a temporary failure, the file stays (exit 75).
        relay.send("sender@example.net", [ALICE], b"Subject: later\r\n\r\nlater\r\n")
        closed = free_port()
        res = home.fetch(relay.fetch_port, "--deliver-to", f"127.0.0.1:{closed}")
        assert res.returncode == 75, res.stderr
        assert "status=deferred" in res.stderr, res.stderr
        assert len(relay.ids()) == 1
        res = home.fetch(relay.fetch_port, "--deliver-to", f"127.0.0.1:{postfix.port}")
        assert res.returncode == 0, res.stderr
        assert relay.ids() == []
        # Postfix refuses the recipient for good (554): kept and logged (exit 65) at
        # every run, until the operator says delete.
        relay.send("sender@example.net", [refused], b"Subject: refused\r\n\r\nrefused\r\n")
        for _ in range(2):
            res = home.fetch(relay.fetch_port, "--deliver-to", f"127.0.0.1:{postfix.port}")
            assert res.returncode == 65, res.stderr
            assert "status=kept-permanent" in res.stderr, res.stderr
            assert len(relay.ids()) == 1
        res = home.fetch(relay.fetch_port, "--deliver-to", f"127.0.0.1:{postfix.port}",
                         extra=["--on-permanent-failure", "delete"])
        assert res.returncode == 0, res.stderr
        assert "status=dropped" in res.stderr, res.stderr
        assert relay.ids() == []
    finally:
        relay.stop()
        postfix.stop()
