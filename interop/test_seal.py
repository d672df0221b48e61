"""`blackpony seal`, the sealed relay's receiving side, against real peers.

swaks (with STARTTLS), Python's smtplib and a private Postfix (relayhost = the relay, and
separately `virtual_transport = lmtp:unix:…` for the LMTP mode) deliver to `seal`. What the
relay keeps is checked with Debian's `age -d -i KEY` (the reference CLI): each spool file is
an age file whose plaintext is the sealed format (proto-spec/sealed-relay.md §1) with the
message part equal to what was sent; the spool never holds a body marker in the clear.
Per-mailbox keys: alice's mail opens with alice's key and not the domain key. Crash safety:
`seal` is SIGKILLed over and over while a client sends 1,000 messages; every message that got
250 must be in the spool and decrypt, and no partial file may be visible.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from interop.clients import RawSMTP, reset_after_ehlo, swaks, transcript
from interop.peers import (Dnsmasq, PeerError, Postfix, Process, blackpony_bin, free_port,
                           keygen, require_tool, run_deliver, smtp_greeting, wait_for)

DOMAIN = "example.org"
ALICE = f"alice@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"  # no key of her own: the domain key
MAGIC = b"BLACKPONY-SEALED 1\r\n"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------

def age_keygen(path: Path) -> str:
    """An age identity made by `blackpony keygen --age`; returns its recipient (age1…)."""
    res = subprocess.run([blackpony_bin(), "keygen", "--age", "--out", str(path)],
                         capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    assert (path.stat().st_mode & 0o777) == 0o600, oct(path.stat().st_mode)
    m = re.search(r"public key: (age1[0-9a-z]+)", res.stdout)
    assert m, res.stdout
    return m.group(1)


def age_decrypt(identity: Path, file: Path) -> Optional[bytes]:
    """Debian's age CLI; None when the file is not sealed to that identity."""
    res = subprocess.run([require_tool("age"), "-d", "-i", str(identity), str(file)],
                         capture_output=True, timeout=20)
    if res.returncode != 0:
        assert b"no identity matched" in res.stderr, res.stderr
        return None
    return res.stdout


def split_sealed(plain: bytes) -> tuple[str, list[str], bytes]:
    """(sender, recipients, message) of the sealed format."""
    assert plain.startswith(MAGIC), plain[:60]
    head, sep, message = plain[len(MAGIC):].partition(b"\r\n\r\n")
    assert sep, plain[:200]
    lines = head.decode().split("\r\n")
    m = re.fullmatch(r"MAIL FROM:<(.*)>", lines[0])
    assert m, lines
    rcpts = []
    for line in lines[1:]:
        r = re.fullmatch(r"RCPT TO:<(.*)>", line)
        assert r, lines
        rcpts.append(r.group(1))
    return m.group(1), rcpts, message


class Keys:
    def __init__(self, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        self.domain_key = d / "domain.key"
        self.alice_key = d / "alice.key"
        self.bob_key = d / "bob.key"
        self.domain = age_keygen(self.domain_key)
        self.alice = age_keygen(self.alice_key)
        self.bob = age_keygen(self.bob_key)

    def args(self) -> list[str]:
        return ["--domain", DOMAIN, "--recipient-key", self.domain,
                "--mailbox-key", f"{ALICE}={self.alice}", "--mailbox-key", f"{BOB}={self.bob}"]


class Seal(Process):
    """`blackpony seal` on 127.0.0.1:PORT (SMTP) or an LMTP socket."""

    def __init__(self, base: Path, keys: Keys, spool: Optional[Path], *extra: str,
                 port: Optional[int] = None, lmtp: Optional[str] = None):
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.spool = spool
        self.lmtp = lmtp
        cmd = [blackpony_bin(), "seal", *keys.args(), "--hostname", "relay.test"]
        if spool is not None:
            cmd += ["--spool", str(spool)]
        cmd += ["--lmtp", lmtp] if lmtp else ["--listen", f"{self.host}:{self.port}"]
        cmd += list(extra)
        super().__init__(cmd, base / f"seal-{self.port}.log", "blackpony seal")

    def start(self, timeout: float = 20):
        if self.lmtp:
            path = self.lmtp.removeprefix("unix:")
            return super().start(lambda: os.path.exists(path), timeout)
        return super().start(lambda: (smtp_greeting(self.host, self.port) or b"")
                             .startswith(b"220"), timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def kill(self):
        """SIGKILL: no chance to finish anything."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)


def spool_files(spool: Path) -> list[Path]:
    return sorted(p for p in (spool / "new").iterdir() if p.is_file())


def assert_only_ciphertext(root: Path, *markers: bytes):
    """Every file below root is an age file (or empty tmp/), and no marker is in the clear."""
    for dirpath, _, names in os.walk(root):
        for name in names:
            data = (Path(dirpath) / name).read_bytes()
            assert data.startswith(b"age-encryption.org/v1\n"), f"{dirpath}/{name}"
            for marker in markers:
                assert marker not in data, f"{marker!r} in the clear in {dirpath}/{name}"
    # grep -r, as an operator would check it.
    for marker in markers:
        res = subprocess.run(["grep", "-rlF", marker.decode(), str(root)],
                             capture_output=True, text=True)
        assert res.stdout == "", res.stdout


def message(marker: str, to: str = ALICE) -> bytes:
    """A message with CRLF line ends and a line that needs dot-stuffing."""
    return (f"From: sender@client.test\r\nTo: {to}\r\nSubject: sealed {marker}\r\n"
            f"Message-ID: <{marker}@client.test>\r\n\r\n"
            f"body {marker}\r\n.a line starting with a dot\r\n\r\nlast line\r\n").encode()


def assert_passed_through_postfix(got: bytes, sent: bytes):
    """Postfix adds headers (Received, Date, …); the sent headers and the body are intact."""
    head, sep, body = got.partition(b"\r\n\r\n")
    sent_head, _, sent_body = sent.partition(b"\r\n\r\n")
    assert sep and body == sent_body, got
    lines = head.split(b"\r\n")
    for line in sent_head.split(b"\r\n"):
        assert line in lines, (line, got)


def send(port: int, to: list[str], msg: bytes, sender: str = "sender@client.test",
         tls: bool = False) -> dict:
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as s:
        s.ehlo("client.test")
        if tls:
            s.starttls()
            s.ehlo("client.test")
        return s.sendmail(sender, to, msg)


# --------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(workdir) -> Keys:
    return Keys(workdir / "keys")


@pytest.fixture
def relay(workdir, keys, request):
    spool = workdir / f"spool-{request.node.name}"
    spool.mkdir()
    s = Seal(workdir, keys, spool).start()
    yield s
    s.stop()


# --------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------

def test_swaks_with_starttls_gets_its_message_sealed(relay, keys):
    marker = "SWAKS-MARKER-7f3a"
    res = swaks(relay.port, CAROL, "--tls", body=marker)
    out = transcript(res)
    assert res.returncode == 0, out
    assert "250 STARTTLS" in out and "TLS started" in out, out
    m = re.search(r"<~  250 2\.0\.0 Ok: sealed as (\S+\.age)", out)
    assert m, out
    assert [p.name for p in spool_files(relay.spool)] == [m.group(1)]
    assert_only_ciphertext(relay.spool, marker.encode())
    plain = age_decrypt(keys.domain_key, relay.spool / "new" / m.group(1))
    sender, rcpts, msg = split_sealed(plain)
    assert (sender, rcpts) == ("a@client.test", [CAROL])
    assert marker.encode() in msg
    line = wait_for(lambda: [l for l in relay.log_text().splitlines() if "seal: session=" in l],
                    10, "the seal: log line")
    assert re.search(r"seal: session=\S+ client=unknown\[127\.0\.0\.\d+\]:\d+ "
                     r"from=<a@client\.test> nrcpt=1 size=\d+ sealed=\S+\.age "
                     rf"recipients={re.escape(CAROL)} keys=1$", line[0]), line
    assert marker not in relay.log_text()


def test_the_message_part_is_the_message_sent_byte_for_byte(relay, keys):
    msg = message("BYTES-1c2d")
    assert send(relay.port, [CAROL], msg, tls=True) == {}
    [f] = spool_files(relay.spool)
    sender, rcpts, got = split_sealed(age_decrypt(keys.domain_key, f))
    assert (sender, rcpts, got) == ("sender@client.test", [CAROL], msg)
    # blackpony open gives the same bytes to the mailbox owner.
    res = subprocess.run([blackpony_bin(), "open", str(f), "--identity", str(keys.domain_key)],
                         capture_output=True, timeout=20)
    assert res.returncode == 0 and res.stdout == msg, res.stderr


def test_a_blackpony_sender_delivers_over_xpony(workdir, keys):
    """`blackpony deliver` finds the relay by MX (dnsmasq) and sends over XPONY: seal
    answers with its host key (the sender pins it), and the message it seals is the one
    sent, byte for byte."""
    base = workdir / "xpony-sender"
    base.mkdir()
    relay_key = keygen(base / "relay.key", "relay.test")
    spool = base / "spool"
    spool.mkdir()
    with Seal(base, keys, spool, "--host-key", str(relay_key.path)) as relay:
        relay.start()
        dns = Dnsmasq(base / "dns", f"mx-host={DOMAIN},mx.{DOMAIN},10\n"
                      f"host-record=mx.{DOMAIN},127.0.0.1\n", probe=DOMAIN)
        dns.start()
        try:
            msg = message("XPONY-SENDER-5e6f")
            res = run_deliver(["--dns", dns.address, "--smtp-port", str(relay.port),
                               "--helo-name", "client.test", "--state-dir", str(base / "state"),
                               "-f", "sender@client.test", "--", ALICE], msg)
        finally:
            dns.stop()
        out = res.stdout.decode() + res.stderr.decode()
        assert res.returncode == 0, out + relay.log_text()
        assert "tls=XPONY/Noise_XX_25519_ChaChaPoly_SHA256" in out, out
        assert relay_key.fingerprint in out, out
        wait_for(lambda: re.search(r"session=\S+ xpony client=\S+ key=SHA256:", relay.log_text()),
                 10, "seal's xpony line")
        files = spool_files(spool)
        assert len(files) == 1
        plain = age_decrypt(keys.alice_key, files[0])
        assert plain is not None
        assert split_sealed(plain) == ("sender@client.test", [ALICE], msg)
        assert_only_ciphertext(spool, b"XPONY-SENDER-5e6f")


@pytest.mark.parametrize("phase", ["command", "message"])
def test_a_trickling_client_is_cut_at_its_deadline(workdir, keys, phase):
    """One byte every 0.3 s: a command line gets --client-timeout (2 s) however many bytes
    trickle in; a message gets that plus one second per --min-data-rate octets. Each ends
    with 421 4.4.2 long before the trickle would."""
    spool = workdir / f"spool-trickle-{phase}"
    spool.mkdir()
    with Seal(workdir, keys, spool, "--client-timeout", "2", "--min-data-rate", "1000") as relay:
        relay.start()
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as c:
            got = b""

            def read_until(token: bytes):
                nonlocal got
                while token not in got:
                    chunk = c.recv(4096)
                    assert chunk, got
                    got += chunk
            read_until(b"220 ")
            if phase == "message":
                c.sendall(b"EHLO c\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<" +
                          CAROL.encode() + b">\r\nDATA\r\n")
                read_until(b"354 ")
            got = b""
            started = time.monotonic()
            reply = b""
            c.settimeout(0.3)
            for _ in range(60):  # 18 s of trickle at most
                try:
                    c.sendall(b"X")
                    reply = c.recv(4096)
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    break
                break
            took = time.monotonic() - started
        assert reply.startswith(b"421 4.4.2"), reply
        assert 1.5 < took < 6, took
        wait_for(lambda: "end=timeout" in relay.log_text(), 10, "the session's end")
        assert spool_files(spool) == []


def test_eviction_judges_a_message_by_the_configured_min_data_rate(workdir, keys):
    """The table's eviction and the client deadline judge a message by one rate: with
    --min-data-rate 100000, a message trickling at 1,000 octets/s is far behind, so a
    newcomer at the full table evicts it (before, eviction kept Postfix's 500 and
    found the same client ahead of its rate, so the newcomer was refused)."""
    spool = workdir / "spool-evict-rate"
    spool.mkdir()
    with Seal(workdir, keys, spool, "--max-connections", "1", "--evict-idle", "1",
              "--min-data-rate", "100000") as relay:
        relay.start()
        # relay.start() took the only slot for its greeting probe: let it go.
        wait_for(lambda: "disconnect" in relay.log_text(), 10, "the probe's disconnect")
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as slow:
            got = b""
            for expect, then in [(b"220 ", b"EHLO c\r\nMAIL FROM:<a@client.test>\r\nRCPT TO:<"
                                  + CAROL.encode() + b">\r\nDATA\r\n"), (b"354 ", b"")]:
                while expect not in got:
                    chunk = slow.recv(4096)
                    assert chunk, got
                    got += chunk
                slow.sendall(then)
            slow.settimeout(0.1)
            evicted = b""
            for i in range(40):  # 4 s at most
                try:
                    slow.sendall(b"Subject: slow\r\n" + b"x" * 82 + b"\r\n")
                    evicted = slow.recv(4096)
                    break
                except (socket.timeout, TimeoutError):
                    pass
                if i == 20:  # 2 s in: the message is behind by far more than 1 s
                    newcomer = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            assert evicted.startswith(b"421 4.7.0"), evicted
            with newcomer:
                assert newcomer.recv(4096).startswith(b"220 ")
        assert spool_files(spool) == []


def test_per_mailbox_keys(relay, keys):
    # (recipients, who can open: domain, alice, bob)
    cases = [
        ([ALICE], (False, True, False)),
        ([BOB], (False, False, True)),
        ([ALICE, BOB], (False, True, True)),
        ([CAROL], (True, False, False)),
        ([ALICE, CAROL], (True, True, False)),
    ]
    for i, (rcpts, can_open) in enumerate(cases):
        before = set(spool_files(relay.spool))
        msg = message(f"PERMAILBOX-{i}-9e8d")
        assert send(relay.port, rcpts, msg) == {}
        [f] = set(spool_files(relay.spool)) - before
        for key, expected in zip((keys.domain_key, keys.alice_key, keys.bob_key), can_open):
            plain = age_decrypt(key, f)
            assert (plain is not None) == expected, f"{rcpts} opened with {key.name}: {plain}"
            if plain is not None:
                assert split_sealed(plain) == ("sender@client.test", rcpts, msg)
        # (The log is written by a background thread: wait for the line.)
        line = f" recipients={','.join(rcpts)} keys={sum(can_open)}"
        wait_for(lambda: line in relay.log_text(), 10, f"the seal log line {line!r}")
    assert_only_ciphertext(relay.spool, b"PERMAILBOX")


def test_relaying_to_a_foreign_domain_is_refused(relay):
    res = swaks(relay.port, "victim@elsewhere.test", body="OPEN-RELAY-PROBE")
    out = transcript(res)
    assert res.returncode != 0
    assert "550 5.7.1 <victim@elsewhere.test>: Relay access denied" in out, out
    # Not with a served recipient beside it either: that one alone is sealed.
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=20) as s:
        refused = s.sendmail("s@client.test", ["victim@elsewhere.test", CAROL],
                             message("MIXED-5a5a", CAROL))
    assert refused == {"victim@elsewhere.test": (550, b"5.7.1 <victim@elsewhere.test>: "
                                                      b"Relay access denied")}
    [f] = spool_files(relay.spool)
    wait_for(lambda: "refused=rcpt" in relay.log_text(), 10, "the seal's refused=rcpt line")


def test_a_file_in_the_spool_that_xfetch_cannot_name_is_reported_at_start(workdir, keys):
    # A file copied into new/ by hand under a name that is no spool id (it
    # must begin with a letter or digit, proto-spec/fetch.md §4) would never
    # be offered to the home machine: seal names it at start, once.
    spool = workdir / "spool-stray"
    (spool / "new").mkdir(parents=True)
    (spool / "new" / "_restored.age").write_bytes(b"x")
    (spool / "new" / ".editor-backup").write_bytes(b"x")
    with Seal(workdir, keys, spool).start() as relay:
        line = wait_for(lambda: [l for l in relay.log_text().splitlines()
                                 if "warning: spool:" in l], 10, "the stray-file warning")
        assert len(line) == 1, relay.log_text()
        assert "new/_restored.age is not a spool id" in line[0], line[0]
        assert "never fetched" in line[0], line[0]


def test_envelope_edge_cases_of_rfc_5321_and_1870(relay, keys):
    """What a conformance prober sends an MX: an empty EHLO/HELO is 501 (RFC 5321
    §4.1.1.1); a SIZE= too large for any integer is over the limit (552 5.3.4, RFC 1870 §6),
    one that is not a number a syntax error (501); `RCPT TO:<Postmaster>` without a domain
    is accepted (RFC 5321 §4.5.1 MUST) and sealed to the domain key."""
    with RawSMTP(relay.host, relay.port, source=None) as c:
        assert c.reply().code == 220
        for line in ("EHLO", "HELO "):
            r = c.cmd(line)
            assert r.code == 501 and b"5.5.4 Syntax: " in r.lines[-1], (line, r)
        assert c.cmd("EHLO client.test").code == 250
        r = c.cmd("MAIL FROM:<s@client.test> SIZE=99999999999999999999999")
        assert r.code == 552 and r.lines[-1].startswith(b"552 5.3.4"), r
        r = c.cmd("MAIL FROM:<s@client.test> SIZE=huge")
        assert r.code == 501 and r.lines[-1].startswith(b"501 5.5.4"), r
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=100").code == 250
        r = c.cmd("RCPT TO:<Postmaster>")
        assert r.code == 250, r
        assert c.cmd("DATA").code == 354
        r = c.cmd("Subject: to the postmaster\r\n\r\nPOSTMASTER-3c1d\r\n.")
        assert r.code == 250, r
        assert c.cmd("QUIT").code == 221
    [f] = spool_files(relay.spool)
    sender, rcpts, body = split_sealed(age_decrypt(keys.domain_key, f))
    assert (sender, rcpts) == ("s@client.test", ["Postmaster"]), (sender, rcpts)
    assert b"POSTMASTER-3c1d" in body


def test_smuggling_and_nul_refused(workdir, keys):
    spool = workdir / "spool-strict"
    spool.mkdir()
    with Seal(workdir, keys, spool, "--bare-newlines", "reject").start() as s:
        for payload, code in ((b"Subject: x\r\n\r\nbare\nlf\r\n", 550),
                              (b"Subject: x\r\n\r\nnul\x00here\r\n", 550)):
            with smtplib.SMTP("127.0.0.1", s.port, timeout=20) as c:
                c.ehlo("client.test")
                c.mail("s@client.test")
                c.rcpt(CAROL)
                c.putcmd("DATA")
                assert c.getreply()[0] == 354
                c.send(payload + b".\r\n")
                got = c.getreply()
                assert got[0] == code, got
        assert spool_files(spool) == []



@pytest.mark.parametrize("case", ["bad-key", "foreign-mailbox", "no-spool", "spool-is-file",
                                  "no-domain", "fetch-no-host-key", "bad-fetch-key"])
def test_bad_configuration_stops_seal_with_ex_config(workdir, keys, case):
    spool = workdir / "spool-cfg"
    spool.mkdir(exist_ok=True)
    args = {
        "bad-key": ["--domain", DOMAIN, "--recipient-key", "age1notakey", "--spool", str(spool)],
        "foreign-mailbox": ["--domain", DOMAIN, "--recipient-key", keys.domain,
                            "--mailbox-key", f"x@other.test={keys.alice}", "--spool", str(spool)],
        "no-spool": ["--domain", DOMAIN, "--recipient-key", keys.domain,
                     "--spool", str(workdir / "missing")],
        "spool-is-file": ["--domain", DOMAIN, "--recipient-key", keys.domain,
                          "--spool", str(keys.domain_key)],
        "no-domain": ["--recipient-key", keys.domain, "--spool", str(spool)],
        "fetch-no-host-key": ["--domain", DOMAIN, "--recipient-key", keys.domain,
                              "--spool", str(spool), "--fetch-key", "A" * 43 + "="],
        "bad-fetch-key": ["--domain", DOMAIN, "--recipient-key", keys.domain,
                          "--spool", str(spool), "--fetch-key", keys.domain],
    }[case]
    res = subprocess.run([blackpony_bin(), "seal", "--listen", f"127.0.0.1:{free_port()}",
                          *args], capture_output=True, text=True, timeout=20)
    assert res.returncode == 78, (res.returncode, res.stderr)
    expected = {"bad-key": "not an age X25519 recipient", "foreign-mailbox": "other.test is not",
                "no-spool": "does not exist", "spool-is-file": "not a directory",
                "no-domain": "--domain", "fetch-no-host-key": "--fetch-key needs --host-key",
                "bad-fetch-key": "not a base64 X25519 public key"}[case]
    assert expected in res.stderr, res.stderr


def test_postfix_relayhost_delivers_into_the_seal(workdir, keys, relay):
    """A real Postfix relays example.org to `seal` (relayhost, STARTTLS on)."""
    base = workdir / "postfix-relay"
    base.mkdir()
    os.chmod(base, 0o755)
    pf = Postfix(base, domains=["local.test"], settings={
        "relayhost": f"[127.0.0.1]:{relay.port}",
        "default_transport": "smtp", "relay_transport": "smtp",
        "smtp_tls_security_level": "encrypt",
    }, services="smtp      unix  -       -       n       -       -       smtp\n"
                "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n")
    with pf:
        msg = message("POSTFIX-RELAY-4b4b", ALICE)
        with smtplib.SMTP(pf.host, pf.port, timeout=20) as c:
            assert c.sendmail("sender@client.test", [ALICE, BOB], msg) == {}
        wait_for(lambda: spool_files(relay.spool), 60,
                 f"a sealed file; postfix log:\n{pf.log_tail()}\nseal log:\n{relay.log_text()}")
        status = pf.wait_delivery_status(ALICE)
        assert status[0] == "sent", status
    [f] = spool_files(relay.spool)
    assert age_decrypt(keys.domain_key, f) is None
    for key in (keys.alice_key, keys.bob_key):
        sender, rcpts, got = split_sealed(age_decrypt(key, f))
        assert (sender, sorted(rcpts)) == ("sender@client.test", [ALICE, BOB])
        assert_passed_through_postfix(got, msg)
    assert re.search(r"starttls client=\S+ tls=TLSv1\.[23]", relay.log_text()), relay.log_text()
    assert_only_ciphertext(relay.spool, b"POSTFIX-RELAY")


def test_postfix_lmtp_writes_sealed_per_mailbox_maildirs(workdir, keys):
    root = workdir / "maildirs"
    root.mkdir()
    os.chmod(root, 0o755)
    sock = workdir / "seal.lmtp"
    with Seal(workdir, keys, None, "--maildir-root", str(root),
              lmtp=f"unix:{sock}").start() as relay:
        base = workdir / "postfix-lmtp"
        base.mkdir()
        os.chmod(base, 0o755)
        pf = Postfix(base, domains=[DOMAIN], settings={
            "virtual_transport": f"lmtp:unix:{sock}",
        }, services="lmtp      unix  -       -       n       -       -       lmtp\n")
        with pf:
            msg = message("LMTP-MAILDIR-6c6c", ALICE)
            with smtplib.SMTP(pf.host, pf.port, timeout=20) as c:
                assert c.sendmail("sender@client.test", [ALICE, BOB, CAROL], msg) == {}
            for rcpt in (ALICE, BOB, CAROL):
                wait_for(lambda: list((root / rcpt / "new").glob("*.age"))
                         if (root / rcpt / "new").is_dir() else [], 60,
                         f"{rcpt}'s Maildir; postfix log:\n{pf.log_tail()}\n{relay.log_text()}")
            assert pf.wait_delivery_status(CAROL)[0] == "sent"
        for rcpt, own, others in ((ALICE, keys.alice_key, (keys.bob_key, keys.domain_key)),
                                  (BOB, keys.bob_key, (keys.alice_key, keys.domain_key)),
                                  (CAROL, keys.domain_key, (keys.alice_key, keys.bob_key))):
            [f] = list((root / rcpt / "new").glob("*.age"))
            assert (root / rcpt / "cur").is_dir() and (root / rcpt / "tmp").is_dir()
            sender, rcpts, got = split_sealed(age_decrypt(own, f))
            # Each copy names only its own mailbox: no Bcc leaks between mailboxes.
            assert (sender, rcpts) == ("sender@client.test", [rcpt])
            assert_passed_through_postfix(got, msg)
            for other in others:
                assert age_decrypt(other, f) is None
        assert_only_ciphertext(root, b"LMTP-MAILDIR")


def test_sigkill_during_load_loses_no_acknowledged_message(workdir, keys):
    """1,000 messages or more, `seal` SIGKILLed every 0.1–0.4 s (at least six times) and
    restarted on the same port.
    Every message that got 250 is in the spool and decrypts; nothing partial is visible."""
    total = 1000
    spool = workdir / "spool-crash"
    spool.mkdir()
    port = free_port()
    relay = Seal(workdir, keys, spool, port=port).start()
    acked: set[str] = set()
    kills = 0
    stop = threading.Event()
    lock = threading.Lock()

    def killer():
        nonlocal relay, kills
        deadline = time.monotonic() + 240
        while not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.1 + (kills % 4) * 0.1)
            if stop.is_set():
                break
            with lock:
                relay.kill()
                kills += 1
                for _ in range(50):  # the port may take a moment to be free again
                    try:
                        relay = Seal(workdir, keys, spool, port=port).start()
                        break
                    except PeerError:
                        time.sleep(0.1)

    k = threading.Thread(target=killer, daemon=True)
    k.start()
    try:
        # At least `total` messages, and on until the relay has been killed `min_kills`
        # times: on a fast machine 1,000 messages can be through before the fifth kill,
        # so the load is counted in kills survived, not in wall time.
        min_kills = 6
        sent = 0
        deadline = time.monotonic() + 300

        def more() -> bool:
            return sent < total or kills < min_kills

        while more() and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                    while more():
                        ident = f"CRASH-{sent:05d}"
                        msg = f"Subject: {ident}\r\n\r\nbody of {ident}\r\n".encode()
                        c.sendmail("load@client.test", [CAROL], msg)
                        acked.add(ident)  # 250 received
                        sent += 1  # only now: an unacknowledged message is sent again
                        if len(acked) % 7 == 0:
                            break  # a new connection now and then
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)  # the relay is restarting; the message is sent again
        assert not more(), f"{sent} of {total} messages acknowledged, {kills} kills, in time"
    finally:
        stop.set()
        k.join(timeout=30)
        with lock:
            relay.stop()
    assert kills >= 5, f"only {kills} kills during the load"
    # Everything visible is complete and decrypts; every acknowledged message is there.
    found: dict[str, int] = {}
    for f in spool_files(spool):
        plain = age_decrypt(keys.domain_key, f)
        assert plain is not None, f"{f} does not decrypt (partial file visible?)"
        _, _, got = split_sealed(plain)
        m = re.match(rb"Subject: (CRASH-\d{5})\r\n\r\nbody of \1\r\n\Z", got)
        assert m, got
        found[m.group(1).decode()] = found.get(m.group(1).decode(), 0) + 1
    missing = acked - set(found)
    assert not missing, f"acknowledged but not in the spool: {sorted(missing)[:10]}"
    # Duplicates only where a 250 was lost with the process (as SMTP allows).
    print(f"\n{sent} messages, {kills} SIGKILLs, {len(spool_files(spool))} files, "
          f"{sum(n - 1 for n in found.values())} duplicates")


def test_a_reset_connection_is_logged_with_its_cause(relay):
    reset_after_ehlo(relay.host, relay.port)
    wait_for(lambda: re.search(r'session=\S+ client-error="connection reset by peer" '
                               r'client=', relay.log_text()),
             10, "the seal's client-error line for a reset connection")
    wait_for(lambda: re.search(r"session=\S+ disconnect client=\S+ tls=none sealed=0 refused=0 "
                               r"end=client-lost ", relay.log_text()),
             10, "the seal's disconnect line, end=client-lost")


def test_message_memory_is_bounded_across_sessions(workdir, keys):
    """Each message is sealed from memory, so all sessions together hold at most
    --max-message-memory octets: a declared SIZE= that does not fit is 452 4.3.1 at RCPT
    (RFC 1870 §6.1), a message that outgrows it mid-way is 421 4.3.1 and dropped (nothing
    sealed, the client retries); once the first message is sealed, the memory is back.
    Without the bound, 50 connections from one address could hold 50 x 50 MB."""
    spool = workdir / "spool-memory"
    spool.mkdir()
    body = b"".join(b"x" * 98 + b"\r\n" for _ in range(600))  # 60 000 octets
    with Seal(workdir, keys, spool, "--max-message-memory", "100000").start() as s:
        a = RawSMTP(s.host, s.port, source=None)
        b = RawSMTP(s.host, s.port, source=None)
        try:
            for c in (a, b):
                assert c.reply().code == 220
                assert c.cmd("EHLO client.test").code == 250
            # A is in the middle of a 60 000-octet message.
            assert a.cmd("MAIL FROM:<s@client.test>").code == 250
            assert a.cmd(f"RCPT TO:<{CAROL}>").code == 250
            assert a.cmd("DATA").code == 354
            a.send(b"Subject: first\r\n\r\n" + body)
            time.sleep(0.5)
            # B declares 50 000: 40 000 are left.
            assert b.cmd("MAIL FROM:<s@client.test> SIZE=50000").code == 250
            r = b.cmd(f"RCPT TO:<{CAROL}>")
            assert r.code == 452 and r.lines[-1].startswith(b"452 4.3.1"), r
            wait_for(lambda: re.search(r"session=\S+ refused=message-memory size=50000 "
                                       r"in-flight=\d+ max-message-memory=100000",
                                       s.log_text()), 10, "the refusal's log line")
            # B sends one anyway, undeclared: cut mid-way, nothing sealed.
            assert b.cmd("RSET").code == 250
            assert b.cmd("MAIL FROM:<s@client.test>").code == 250
            assert b.cmd(f"RCPT TO:<{CAROL}>").code == 250
            assert b.cmd("DATA").code == 354
            b.send(b"Subject: second\r\n\r\n" + body)
            r = b.reply()
            assert r is not None and r.code == 421 and r.lines[-1].startswith(b"421 4.3.1"), r
            b.read_to_eof()
            assert b.eof
            # A's message ends, is sealed, and its memory is given back.
            r = a.cmd(".")
            assert r is not None and r.code == 250, (r, s.log_text())
            assert a.cmd("MAIL FROM:<s@client.test> SIZE=60000").code == 250
            assert a.cmd(f"RCPT TO:<{CAROL}>").code == 250
        finally:
            a.close()
            b.close()
        assert len(spool_files(spool)) == 1
        wait_for(lambda: "end=message-memory" in s.log_text(), 10, "B's disconnect line")
