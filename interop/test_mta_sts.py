"""MTA-STS (RFC 8461) in blackpony's outbound side, with `blackpony deliver` against real
peers on loopback: nginx serving each domain's policy file over HTTPS with a certificate
from a test CA (given to blackpony with `--tls-ca-file`), dnsmasq serving the MX, TXT
(`_mta-sts.<domain>`) and address records (the policy host `mta-sts.<domain>` resolves to
nginx's 127.0.31.1 only through blackpony's own `--dns`: /etc/hosts and the system resolver
know nothing of it), and a private Postfix whose listeners are the MX hosts.

  domain           policy (id)                    MX host (listener)
  enforce.test     enforce, mx.enforce.test (e1)  mx.enforce.test: STARTTLS, CA-issued cert
  nomatch.test     enforce, mx.elsewhere.test     mx.nomatch.test: STARTTLS, CA-issued cert
  notls.test       enforce, mx.notls.test         mx.notls.test: no STARTTLS
  testing.test     testing, mx.testing.test       mx.testing.test: STARTTLS, cert for other.test
  fetchfail.test   TXT record, but nginx says 404 mx.plain.test: no STARTTLS
  redirect.test    a 301 to an enforce policy     mx.plain.test
  mediatype.test   enforce policy as text/html    mx.plain.test
  webpki.test      enforce policy, self-signed    mx.plain.test
  rotate.test      changes during the test        mx.rotate.test / mx2.rotate.test

What is checked (issue 12, "How it is checked"): enforce with a matching MX is delivered
over verified TLS; enforce with a non-matching MX and with an MX without STARTTLS is
deferred (4.7.x, exit 75) and the MX never sees MAIL; testing is delivered and the failure
logged with its RFC 8460 result type; a failed fetch without a cached policy delivers as
without MTA-STS, with a cached enforce policy it still enforces; an unchanged id uses the
cache (nginx sees no request), a changed id refetches; redirects are not followed, a
non-text/plain body and an untrusted policy host certificate are not policies; the global
(`--no-mta-sts`) and per-domain (`[outbound.mta_sts_domains]`) switches.
"""

from __future__ import annotations

import os
import re
import smtplib
import time
from pathlib import Path

import pytest

from interop.clients import token
from interop.conftest import owned_dir
from interop.mta_sts_net import NGINX, SERVED, Nginx, make_multi_name_cert, policy
from interop.peers import (BlackponyOutbound, Dnsmasq, Internet, Postfix, common_free_port,
                           make_ca_signed_cert, make_self_signed_cert, make_test_ca)
from interop.test_outbound import (SENDER, arrived, crlf, deliver, log_line, make_message, show,
                                   status_line)
from interop.test_outbound_verify import MxSessions, check_tls_and_mail, no_message

ADDR = {
    "enforce": "127.0.31.2",
    "nomatch": "127.0.31.3",
    "notls": "127.0.31.4",
    "testing": "127.0.31.5",
    "plain": "127.0.31.6",
    "rotate": "127.0.31.7",
    "rotate2": "127.0.31.8",
}
DOMAINS = SERVED + ("webpki.test",)
PLAIN_DOMAINS = ("fetchfail.test", "redirect.test", "mediatype.test", "webpki.test")


POLICIES = {
    "enforce.test": policy("enforce", "mx.enforce.test"),
    "nomatch.test": policy("enforce", "mx.elsewhere.test", "*.other.test"),
    "notls.test": policy("enforce", "*.notls.test"),
    "testing.test": policy("testing", "mx.testing.test"),
    # Served behind a redirect, as text/html and with an untrusted certificate: were they
    # taken, mx.plain.test would not match and the mail would be deferred.
    "redirect-target": policy("enforce", "mx.nowhere.test"),
    "mediatype.test": policy("enforce", "mx.nowhere.test"),
    "webpki.test": policy("enforce", "mx.nowhere.test"),
}


def dns_records(rotate: dict) -> str:
    lines = []
    for domain, host, addr in [
            ("enforce.test", "mx.enforce.test", ADDR["enforce"]),
            ("nomatch.test", "mx.nomatch.test", ADDR["nomatch"]),
            ("notls.test", "mx.notls.test", ADDR["notls"]),
            ("testing.test", "mx.testing.test", ADDR["testing"])]:
        lines += [f"mx-host={domain},{host},10", f"host-record={host},{addr}"]
    lines.append(f"host-record=mx.plain.test,{ADDR['plain']}")
    for domain in PLAIN_DOMAINS:
        lines.append(f"mx-host={domain},mx.plain.test,10")
    ids = {"enforce.test": "e1", "nomatch.test": "n1", "notls.test": "t1",
           "testing.test": "g1", "fetchfail.test": "f1", "redirect.test": "r1",
           "mediatype.test": "m1", "webpki.test": "w1", "rotate.test": rotate["id"]}
    for domain, id_ in ids.items():
        lines.append(f'txt-record=_mta-sts.{domain},"v=STSv1; id={id_};"')
        lines.append(f"host-record=mta-sts.{domain},{NGINX}")
    lines += [f"mx-host=rotate.test,{rotate['mx']},10",
              f"host-record=mx.rotate.test,{ADDR['rotate']}",
              f"host-record=mx2.rotate.test,{ADDR['rotate2']}"]
    return "\n".join(lines) + "\n"


class StsDns(Dnsmasq):
    """dnsmasq whose records can be replaced (a restart on the same port)."""

    def __init__(self, base: Path, records: str):
        super().__init__(base, records, probe="enforce.test")

    def replace(self, records: str):
        self.stop()
        text = self.conf.read_text()
        head = text[:text.index("pid-file=")]
        head += text[text.index("pid-file="):].split("\n", 1)[0] + "\n"
        self.conf.write_text(head + records)
        self.start()


class StsInternet(Internet):
    def __init__(self, base: Path):
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.smtp_port = common_free_port([*ADDR.values(), NGINX])
        self.https_port = common_free_port([NGINX])
        ca_dir = self.base / "ca"
        self.ca_cert, self.ca_key = make_test_ca(ca_dir)
        ca = (self.ca_cert, self.ca_key)
        certs = {name: make_ca_signed_cert(ca_dir, name, ca) for name in
                 ("mx.enforce.test", "mx.nomatch.test", "mx.rotate.test", "other.test")}
        policy_chain, policy_key = make_multi_name_cert(
            ca_dir, [f"mta-sts.{d}" for d in SERVED], ca)
        self_signed = make_self_signed_cert(self.base / "self-signed", "mta-sts.webpki.test")
        self.rotate = {"id": "x1", "mx": "mx.rotate.test"}
        self.dns = StsDns(self.base / "dns", dns_records(self.rotate))
        port = self.smtp_port

        def tls(name: str, service: str) -> dict:
            chain, key = certs[name]
            return {"smtpd_tls_security_level": "may", "smtpd_tls_cert_file": str(chain),
                    "smtpd_tls_key_file": str(key), "syslog_name": f"postfix/{service}"}
        plain = lambda service: {"smtpd_tls_security_level": "none",  # noqa: E731
                                 "syslog_name": f"postfix/{service}"}
        enforce_chain, enforce_key = certs["mx.enforce.test"]
        pf_base = self.base / "postfix-mx"
        pf_base.mkdir(exist_ok=True)
        self.postfix = Postfix(
            pf_base, host=ADDR["enforce"], port=port, domains=DOMAINS,
            listeners=[(ADDR["nomatch"], port, tls("mx.nomatch.test", "nomatch")),
                       (ADDR["notls"], port, plain("notls")),
                       (ADDR["testing"], port, tls("other.test", "testing")),
                       (ADDR["plain"], port, plain("plain")),
                       (ADDR["rotate"], port, tls("mx.rotate.test", "rotate")),
                       (ADDR["rotate2"], port, plain("rotate2"))],
            settings={"myhostname": "mx.enforce.test", "mydomain": "enforce.test",
                      "myorigin": "enforce.test",
                      "smtpd_tls_security_level": "may",
                      "smtpd_tls_cert_file": str(enforce_chain),
                      "smtpd_tls_key_file": str(enforce_key),
                      "smtpd_tls_received_header": "yes",
                      "smtpd_tls_loglevel": "1",
                      "syslog_name": "postfix/enforce"},
            services="tlsmgr    unix  -       -       n       1000?   1       tlsmgr")
        self.nginx = Nginx(self.base / "nginx", self.https_port, policy_chain, policy_key,
                           self_signed)
        for domain, text in POLICIES.items():
            if domain == "redirect-target":
                self.nginx.serve("mta-sts.enforce.test", text, "redirect-target/mta-sts.txt")
            else:
                self.nginx.serve(f"mta-sts.{domain}", text)
        self._parts = [self.dns, self.postfix, self.nginx]

    def set_rotate(self, id_: str, mx: str):
        self.rotate = {"id": id_, "mx": mx}
        self.dns.replace(dns_records(self.rotate))


@pytest.fixture(scope="module")
def sts(workdir):
    net = StsInternet(workdir / "sts-internet")
    with net:
        yield net


def sts_deliver(net: StsInternet, state: Path, rcpt: str, *extra: str):
    """blackpony deliver one message to rcpt, trusting the test CA, policy hosts at nginx."""
    tok = rcpt.split("@")[0]
    message, body = make_message(tok, [rcpt])
    res = deliver(net, state, [rcpt], message, "--tls-ca-file", str(net.ca_cert),
                  "--mta-sts-port", str(net.https_port), *extra)
    return res, body


def log_lines(res, pattern: str) -> list[str]:
    return [l for l in res.stderr.decode(errors="replace").splitlines() if re.search(pattern, l)]


def one_log_line(res, pattern: str) -> str:
    lines = log_lines(res, pattern)
    assert len(lines) == 1, f"expected one log line matching {pattern!r}, got {lines!r}" + show(res)
    return lines[0]


def check_deferred(res, rcpt: str, code: str, *says: str):
    assert res.returncode == 75, show(res)
    status = status_line(res)
    assert status.startswith(f"{code} ") and rcpt in status, status + show(res)
    line = log_line(res, rcpt)
    assert " status=deferred " in line, line + show(res)
    for text in says:
        assert text in status, f"expected {text!r} in the status line {status!r}" + show(res)


def state_dir(workdir: Path, name: str) -> Path:
    return owned_dir(workdir / f"sts-state-{name}-{token()}")


# --------------------------------------------------------------------------------------
# enforce
# --------------------------------------------------------------------------------------

def test_enforce_with_a_matching_mx_delivers_over_verified_tls(sts, workdir):
    rcpt = f"e-{token()}@enforce.test"
    state = state_dir(workdir, "enforce")
    mx = MxSessions(sts.postfix, "postfix/enforce")
    before = len(sts.nginx.requests("mta-sts.enforce.test"))
    res, body = sts_deliver(sts, state, rcpt)
    assert res.returncode == 0, show(res)
    line = log_line(res, rcpt)
    assert " status=sent (250 " in line and " verified=yes level=authenticated " in line, (
        line + show(res))
    one_log_line(res, r"mta-sts: domain=enforce\.test policy=fetched id=e1 mode=enforce "
                      r"max_age=86400 mx=mx\.enforce\.test$")
    one_log_line(res, rf"mta-sts: domain=enforce\.test sts=enforce id=e1 "
                      rf"mx=mx\.enforce\.test\[{ADDR['enforce']}\] mx_match=yes "
                      r"level=authenticated result=success$")
    arrived(sts.postfix, rcpt, body)
    check_tls_and_mail(mx, show(res))
    # One GET, by name, through blackpony's resolver; the policy cached in the state dir.
    got = sts.nginx.requests("mta-sts.enforce.test")[before:]
    assert got == ["mta-sts.enforce.test 200 /.well-known/mta-sts.txt"], got
    cached = (state / "mta-sts" / "enforce.test").read_text()
    assert cached.startswith("id: e1\n") and "mode: enforce" in cached, cached


def test_enforce_without_the_ca_file_defers(sts, workdir):
    """The same domain without --tls-ca-file: the policy host's certificate does not verify
    (sts-webpki-invalid), so no policy applies; the default policy (may) then delivers,
    unverified. With a cached enforce policy (from a run that trusted the CA) the MX
    certificate must verify, and without the CA it does not: deferred."""
    state = state_dir(workdir, "noca")
    rcpt = f"n-{token()}@enforce.test"
    message, _ = make_message(rcpt.split("@")[0], [rcpt])
    res = deliver(sts, state, [rcpt], message, "--mta-sts-port", str(sts.https_port))
    assert res.returncode == 0, show(res)
    one_log_line(res, r"mta-sts: domain=enforce\.test id=e1 result=sts-webpki-invalid \(.*"
                      r"no cached policy: delivering as without MTA-STS$")
    assert " verified=no (untrusted issuer) level=encrypted " in log_line(res, rcpt), show(res)
    # Cache the policy with the CA, then deliver without it.
    res, _ = sts_deliver(sts, state, f"n2-{token()}@enforce.test")
    assert res.returncode == 0, show(res)
    rcpt = f"n3-{token()}@enforce.test"
    message, _ = make_message(rcpt.split("@")[0], [rcpt])
    res = deliver(sts, state, [rcpt], message, "--mta-sts-port", str(sts.https_port))
    check_deferred(res, rcpt, "4.7.5", "Server certificate of mx.enforce.test not verified: "
                   "untrusted issuer (MTA-STS policy of enforce.test: mode enforce, id e1)")
    one_log_line(res, r"sts=enforce id=e1 mx=mx\.enforce\.test\S* mx_match=yes "
                      r"level=encrypted result=certificate-not-trusted \(untrusted issuer\)")


def test_enforce_with_a_non_matching_mx_defers(sts, workdir):
    rcpt = f"m-{token()}@nomatch.test"
    state = state_dir(workdir, "nomatch")
    mx = MxSessions(sts.postfix, "postfix/nomatch")
    res, _ = sts_deliver(sts, state, rcpt)
    check_deferred(res, rcpt, "4.7.5", "MTA-STS policy of nomatch.test (mode enforce, id n1) "
                   "lists none of its MX hosts (mx.nomatch.test; the policy allows "
                   "mx.elsewhere.test,*.other.test)")
    one_log_line(res, r"mta-sts: domain=nomatch\.test sts=enforce id=n1 mx=mx\.nomatch\.test "
                      r"mx_match=no result=validation-failure .*; skipped$")
    assert mx.lines() == [], "the MX was connected to:\n" + "\n".join(mx.lines())
    no_message(sts.postfix, rcpt)
    # --no-mta-sts: delivered (the deferral was the policy's doing).
    res, body = sts_deliver(sts, state, rcpt, "--no-mta-sts")
    assert res.returncode == 0, show(res)
    assert not log_lines(res, "mta-sts"), show(res)
    arrived(sts.postfix, rcpt, body)


def test_enforce_with_an_mx_without_starttls_defers(sts, workdir):
    rcpt = f"t-{token()}@notls.test"
    state = state_dir(workdir, "notls")
    mx = MxSessions(sts.postfix, "postfix/notls")
    res, _ = sts_deliver(sts, state, rcpt)
    check_deferred(res, rcpt, "4.7.4", "did not offer STARTTLS",
                   "(MTA-STS policy of notls.test: mode enforce, id t1)")
    one_log_line(res, rf"sts=enforce id=t1 mx=mx\.notls\.test\[{ADDR['notls']}\] mx_match=yes "
                      r"level=plaintext result=starttls-not-supported \(no STARTTLS\); "
                      r"not delivered to this host$")
    lines = mx.wait_done()
    [disconnect] = [l for l in lines if " disconnect from " in l]
    assert " mail=" not in disconnect, disconnect
    no_message(sts.postfix, rcpt)
    # MTA-STS off for this domain in the config file: delivered in plaintext.
    config = state / "blackpony.toml"
    config.write_text('[outbound]\n[outbound.mta_sts_domains]\n"notls.test" = false\n')
    res, body = sts_deliver(sts, state, rcpt, "--config", str(config))
    assert res.returncode == 0, show(res)
    assert " level=plaintext " in log_line(res, rcpt), show(res)
    arrived(sts.postfix, rcpt, body)


# --------------------------------------------------------------------------------------
# testing
# --------------------------------------------------------------------------------------

def test_testing_mode_delivers_and_logs_the_failure(sts, workdir):
    rcpt = f"g-{token()}@testing.test"
    res, body = sts_deliver(sts, state_dir(workdir, "testing"), rcpt)
    assert res.returncode == 0, show(res)
    assert " verified=no (name mismatch) level=encrypted " in log_line(res, rcpt), show(res)
    one_log_line(res, rf"mta-sts: domain=testing\.test sts=testing id=g1 "
                      rf"mx=mx\.testing\.test\[{ADDR['testing']}\] mx_match=yes level=encrypted "
                      r"result=certificate-host-mismatch \(name mismatch\); testing: delivering "
                      r"as without a policy$")
    arrived(sts.postfix, rcpt, body)


# --------------------------------------------------------------------------------------
# Policies that are not: fetch errors, redirects, media type, untrusted policy host
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("domain,result,why", [
    ("fetchfail.test", "sts-policy-fetch-error", r"HTTP 404 Not Found"),
    ("redirect.test", "sts-policy-fetch-error",
     r"HTTP 301 Moved Permanently, a redirect to https://mta-sts\.enforce\.test:\d+"
     r"/redirect-target/mta-sts\.txt \(not followed, RFC 8461 §3\.3\)"),
    ("mediatype.test", "sts-policy-invalid", r'media type "text/html", not text/plain'),
    ("webpki.test", "sts-webpki-invalid", r"certificate"),
])
def test_no_policy_without_a_valid_fetch(sts, workdir, domain, result, why):
    """Without a cached policy, delivered as without MTA-STS (to mx.plain.test, which no
    policy served here would allow), the failure logged with its RFC 8460 result type."""
    rcpt = f"f-{token()}@{domain}"
    state = state_dir(workdir, domain.split(".")[0])
    target_before = len(sts.nginx.requests("mta-sts.enforce.test"))
    res, body = sts_deliver(sts, state, rcpt)
    assert res.returncode == 0, show(res)
    assert " status=sent (250 " in log_line(res, rcpt), show(res)
    line = one_log_line(res, rf"mta-sts: domain={re.escape(domain)} id=\w+ result={result} ")
    assert re.search(why, line), f"expected {why!r} in {line!r}" + show(res)
    assert line.endswith("no cached policy: delivering as without MTA-STS"), line
    arrived(sts.postfix, rcpt, body)
    assert not (state / "mta-sts" / domain).exists()
    if domain == "redirect.test":
        assert sts.nginx.requests("mta-sts.redirect.test")[-1].split()[1] == "301"
        assert len(sts.nginx.requests("mta-sts.enforce.test")) == target_before, (
            "the redirect was followed")


# --------------------------------------------------------------------------------------
# The cache: unchanged id, changed id, a failed refetch
# --------------------------------------------------------------------------------------

def test_cache_unchanged_id_changed_id_and_a_failed_refetch(sts, workdir):
    state = state_dir(workdir, "rotate")
    host = "mta-sts.rotate.test"
    requests = lambda: len(sts.nginx.requests(host))  # noqa: E731

    # 1. id x1, enforce for mx.rotate.test: fetched, delivered over verified TLS.
    sts.nginx.serve(host, policy("enforce", "mx.rotate.test"))
    rcpt = f"r1-{token()}@rotate.test"
    res, body = sts_deliver(sts, state, rcpt)
    assert res.returncode == 0, show(res)
    assert " level=authenticated " in log_line(res, rcpt), show(res)
    one_log_line(res, r"policy=fetched id=x1 mode=enforce")
    arrived(sts.postfix, rcpt, body)
    assert requests() == 1

    # 2. The file changes, the id does not: the cached policy is used, nothing is fetched.
    sts.nginx.serve(host, policy("enforce", "mx9.rotate.test"))
    rcpt = f"r2-{token()}@rotate.test"
    res, body = sts_deliver(sts, state, rcpt)
    assert res.returncode == 0, show(res)
    assert not log_lines(res, "policy=fetched"), show(res)
    one_log_line(res, r"sts=enforce id=x1 mx=mx\.rotate\.test\S* mx_match=yes "
                      r"level=authenticated result=success")
    arrived(sts.postfix, rcpt, body)
    assert requests() == 1, sts.nginx.requests(host)

    # 3. A new id: fetched again; the new policy does not list mx.rotate.test: deferred.
    sts.set_rotate("x2", "mx.rotate.test")
    rcpt = f"r3-{token()}@rotate.test"
    res, _ = sts_deliver(sts, state, rcpt)
    one_log_line(res, r"policy=fetched id=x2 mode=enforce max_age=86400 mx=mx9\.rotate\.test")
    check_deferred(res, rcpt, "4.7.5", "MTA-STS policy of rotate.test (mode enforce, id x2) "
                   "lists none of its MX hosts")
    assert requests() == 2

    # 4. The MX moves to mx2.rotate.test (plaintext), a new id, and the policy host answers
    # 404: the cached enforce policy (x2) still applies: deferred, not sent in plaintext.
    sts.nginx.serve(host, None)
    sts.set_rotate("x3", "mx2.rotate.test")
    mx2 = MxSessions(sts.postfix, "postfix/rotate2")
    rcpt = f"r4-{token()}@rotate.test"
    res, _ = sts_deliver(sts, state, rcpt)
    one_log_line(res, r"mta-sts: domain=rotate\.test id=x3 result=sts-policy-fetch-error "
                      r"\(.*HTTP 404 Not Found\); using the cached policy id=x2 mode=enforce "
                      r"\(expires in \d+ s\)$")
    check_deferred(res, rcpt, "4.7.5", "lists none of its MX hosts (mx2.rotate.test")
    assert mx2.lines() == [], "\n".join(mx2.lines())
    no_message(sts.postfix, rcpt)
    assert requests() == 3
    # Without the cache (a new state directory), the same answers mean no policy: delivered
    # in plaintext. It was the cached policy that deferred.
    res, body = sts_deliver(sts, state_dir(workdir, "rotate-fresh"), rcpt)
    assert res.returncode == 0, show(res)
    assert " level=plaintext " in log_line(res, rcpt), show(res)
    arrived(sts.postfix, rcpt, body)


# --------------------------------------------------------------------------------------
# A session kept between transactions (`blackpony outbound`, both protocols) is checked
# against the policy in force when it is taken
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_kept_session_not_reused_once_a_policy_applies(sts, workdir, protocol):
    """A plaintext session to mx.plain.test is kept after a delivery made without a policy
    (fetchfail.test: its policy host answers 404, nothing cached). Within the 2 s it may be
    kept, an enforce policy that does not list mx.plain.test appears in the state directory
    (as another blackpony process sharing it would cache one): the next transaction must not
    go over the kept session, in either protocol; it is deferred, and the MX sees nothing."""
    state = state_dir(workdir, f"kept-{protocol}")
    bp = BlackponyOutbound(workdir / "logs", name=f"outbound-sts-kept-{protocol}",
                           protocol=protocol,
                           args=sts.outbound_args(state, "--tls-ca-file", str(sts.ca_cert),
                                                  "--mta-sts-port", str(sts.https_port)))
    bp.start()
    try:
        plain = MxSessions(sts.postfix, "postfix/plain")
        first = f"k1-{token()}@fetchfail.test"
        message, body = make_message(first.split("@")[0], [first])
        code, text = send_one(bp, protocol, first, message)
        assert code == 250, f"{code} {text}\n{bp.log_text()}"
        (state / "mta-sts").mkdir(exist_ok=True)
        (state / "mta-sts" / "fetchfail.test").write_text(
            f"id: f1\nfetched: {int(time.time())}\n\n"
            + policy("enforce", "mx.nowhere.test"))
        second = f"k2-{token()}@fetchfail.test"
        message, _ = make_message(second.split("@")[0], [second])
        code, text = send_one(bp, protocol, second, message)
        log = bp.log_text()
        assert code == 451 and text.startswith("4.7.5 ") and "lists none of its MX hosts" in text, (
            f"{code} {text}\n{log}")
        no_message(sts.postfix, second)
        # One session with mx.plain.test: the first transaction's, closed by the check.
        assert len([l for l in plain.lines() if ": connect from " in l]) == 1, (
            "\n".join(plain.lines()))
        arrived(sts.postfix, first, body)
    finally:
        bp.stop()


def send_one(bp, protocol: str, rcpt: str, message: bytes) -> tuple[int, str]:
    """One transaction with one recipient; the reply that decided it (the RCPT reply when
    the recipient was refused, else the reply after the message)."""
    cls = smtplib.LMTP if protocol == "lmtp" else smtplib.SMTP
    with cls(bp.host, bp.port, local_hostname="client.test", timeout=60) as c:
        assert c.ehlo()[0] == 250
        assert c.mail(SENDER)[0] == 250
        code, text = c.rcpt(rcpt)
        if code >= 300:
            return code, text.decode(errors="replace")
        code, text = c.data(crlf(message))
        return code, text.decode(errors="replace")
