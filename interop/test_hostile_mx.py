"""The outbound transport against an MX that breaks the protocol: the MTA gets a temporary
failure and keeps the message, never a "delivered" for mail the MX was not sent.

An MX that answers DATA with 250 instead of 354 (RFC 5321 §4.3.2 allows 354, 4xx or 5xx:
a server out of step, or one reply too many pipelined ahead) is interop/fake_mx.py
`data-250` on an address of its own, reached as an address literal (`bob@[127.0.10.40]`,
no DNS) on a port chosen at run time. Each mode (deliver, the LMTP server, the SMTP proxy)
must defer with `451 4.5.0 … does not speak SMTP: reply 250 to DATA …`, and the MX must
not see a line of the message.

An MX that greets with 554 (RFC 5321 §3.1, "no SMTP service here"; fake_mx.py `greet-554`)
says nothing about the message: the host is skipped and the mail deferred (451-class, exit
75), never bounced, as Postfix's smtp_skip_5xx_greeting does by default.

No Debian-packaged MTA misbehaves this way, hence the fake MX.
"""

from __future__ import annotations

import re
import smtplib

import pytest

from interop.clients import token
from interop.conftest import owned_dir
from interop.peers import (BlackponyOutbound, FakeMX, free_port, make_self_signed_cert,
                           run_deliver, wait_for)

# Addresses of their own (not in peers.NET_ADDR), so no other fixture's server is there.
HOST = "127.0.10.40"
GREET_554_HOST = "127.0.10.41"
SENDER = "sender@client.test"
MESSAGE = b"Subject: never sent\r\n\r\nthe body line the MX must never see\r\n"
DEFERRED = "4.5.0 "
WHY = "does not speak SMTP: reply 250 to DATA"


def fake_mx(workdir, host: str, mode: str):
    cert, key = make_self_signed_cert(workdir / f"hostile-tls-{mode}", f"fake-{mode}.test")
    mx = FakeMX(workdir, host, free_port(host), mode, cert, key)
    mx.start()
    try:
        yield mx
    finally:
        mx.stop()


@pytest.fixture(scope="module")
def data250_mx(workdir):
    yield from fake_mx(workdir, HOST, "data-250")


@pytest.fixture(scope="module")
def greet554_mx(workdir):
    yield from fake_mx(workdir, GREET_554_HOST, "greet-554")


def outbound_args(mx, workdir, name: str) -> list[str]:
    # Literals are never looked up: the resolver points where nothing answers.
    return ["--smtp-port", str(mx.port), "--dns", "127.0.0.1:9", "--helo-name", "client.test",
            "--state-dir", str(owned_dir(workdir / f"state-{name}"))]


def assert_message_not_sent(mx, rcpt: str):
    """The MX's session for rcpt got DATA and then nothing of the message (QUIT next)."""
    def session():
        for s in mx.sessions():
            lines = [c["line"] for c in s["commands"]]
            if f"RCPT TO:<{rcpt}>" in lines and s.get("end"):
                return lines
        return None
    lines = wait_for(session, 10, f"the fake MX's session for {rcpt}")
    assert lines[lines.index("DATA") + 1:] == ["QUIT"], lines
    assert mx.messages() == [], mx.messages()


def deliver_deferred(mx, workdir, rcpt: str) -> str:
    """`blackpony deliver` to rcpt through mx: exit 75 (deferred); its output."""
    res = run_deliver(["-f", SENDER, *outbound_args(mx, workdir, f"deliver-{mx.mode}"),
                       "--", rcpt], MESSAGE)
    out = res.stdout.decode(errors="replace") + res.stderr.decode(errors="replace")
    assert res.returncode == 75, out
    return out


def test_deliver_defers_on_a_250_to_data(data250_mx, workdir):
    rcpt = f"bob-{token()}@[{HOST}]"
    out = deliver_deferred(data250_mx, workdir, rcpt)
    assert out.startswith(DEFERRED), out
    assert WHY in out and "status=deferred" in out, out
    assert_message_not_sent(data250_mx, rcpt)


@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_outbound_server_defers_on_a_250_to_data(data250_mx, workdir, protocol):
    name = f"data250-{protocol}"
    bp = BlackponyOutbound(workdir / "logs", args=outbound_args(data250_mx, workdir, name),
                           name=name, protocol=protocol).start()
    try:
        rcpt = f"bob-{token()}@[{HOST}]"
        cls = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
        with cls(bp.host, bp.port, timeout=60) as c:
            # LMTP: the reply for the one recipient after the message (RFC 2033 §4.2);
            # SMTP: the proxy answers the MTA's DATA with the MX's failure.
            with pytest.raises(smtplib.SMTPDataError) as e:
                c.sendmail(SENDER, [rcpt], MESSAGE)
            code, text = e.value.smtp_code, e.value.smtp_error
        assert code == 451 and text.startswith(DEFERRED.encode()), (code, text)
        assert WHY.encode() in text, text
        assert_message_not_sent(data250_mx, rcpt)
        bp.wait_log(rf"to=<{re.escape(rcpt)}> .*status=deferred")
    finally:
        bp.stop()


def test_a_5xx_greeting_defers(greet554_mx, workdir):
    out = deliver_deferred(greet554_mx, workdir, f"bob-{token()}@[{GREET_554_HOST}]")
    assert out.startswith("4.7.1 "), out
    assert "454 4.7.1 " in out and "refused greeting: 554 No SMTP service here" in out, out
    assert "status=deferred" in out and "status=bounced" not in out, out
    # RFC 5321 §3.1: the client waits for the server and sends QUIT, nothing else.
    # (The fixture's readiness probe connected too, and said nothing.)
    sessions = wait_for(lambda: [s for s in greet554_mx.sessions()
                                 if s.get("end") and s["commands"]], 10,
                        "the fake MX's session with blackpony")
    assert [[c["line"] for c in s["commands"]] for s in sessions] == [["QUIT"]], sessions
