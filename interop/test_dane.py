"""DANE for SMTP (RFC 7672) in `blackpony deliver --tls-policy dane|dane-only`, against real
DNSSEC and a real Postfix MX (interop/dane_net.py, fixture `dane_net`):

  the signed zone, its unsigned child, the MX Postfix and the table of domains, MX hosts
  and TLSA records are described there.

Each test checks the outcome (exit code, the status line and `dane:` log line, the
message in the MX's Maildir or not) and, where the host must not get the message, what
the MX itself logged: a failed match never turns into plaintext or into MAIL.
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from interop.clients import token
from interop.conftest import owned_dir
from interop.dane_net import DANE_ADDR, UNSIGNED, ZONE, DaneNet, mx_of
from interop.peers import BlackponyOutbound, run_deliver
from interop.test_outbound import SENDER, arrived, crlf, log_line, make_message, show
from interop.test_outbound_reuse import lmtp_send
from interop.test_outbound_smtp import bp_line
from interop.test_outbound_verify import MxSessions, no_message


def send(net: DaneNet, workdir: Path, domain: str, policy: str, dnssec: str | None = None,
         *extra: str):
    """`blackpony deliver --dnssec ANCHORS (or dnssec) --tls-policy POLICY` of a fresh
    message to DOMAIN: (result, recipient, body)."""
    tok = token()
    rcpt = f"dane-{tok}@{domain}"
    message, body = make_message(tok, [rcpt])
    state = owned_dir(workdir / f"state-dane-{tok}")
    args = ["--dns", net.zone.address, "--smtp-port", str(net.port), "--helo-name",
            "client.test", "--state-dir", str(state), "--tls-policy", policy,
            "--dnssec", dnssec or str(net.zone.anchors), *extra, "-f", SENDER, "--", rcpt]
    return run_deliver(args, message), rcpt, body


def dane_line(res, host: str) -> str:
    lines = [l for l in res.stderr.decode(errors="replace").splitlines()
             if f"dane: {host}: " in l]
    assert len(lines) == 1, f"expected one 'dane: {host}:' line, got {lines!r}" + show(res)
    return lines[0]


def check_sent(res, rcpt: str, *words: str) -> str:
    assert res.returncode == 0, show(res)
    line = log_line(res, rcpt)
    assert "status=sent" in line, line + show(res)
    for w in words:
        assert w in line, f"{w!r} not in {line!r}" + show(res)
    return line


def check_deferred(res, rcpt: str, *words: str) -> str:
    assert res.returncode == 75, show(res)  # EX_TEMPFAIL: the MTA keeps it and retries
    line = log_line(res, rcpt)
    assert "status=deferred" in line, line + show(res)
    for w in words:
        assert w in line, f"{w!r} not in {line!r}" + show(res)
    return line


def no_session(mx: MxSessions, context: str):
    """Nothing connected to the MX: the host was given up before any connection."""
    time.sleep(1.0)
    lines = mx.lines()
    assert not any(" connect from " in l for l in lines), (
        "the MX was connected to:\n" + "\n".join(lines) + context)


def one_session_without_mail(mx: MxSessions, context: str) -> list[str]:
    """Exactly one connection and no MAIL in it (nor in another, plaintext, one)."""
    lines = mx.wait_done()
    time.sleep(1.0)  # a second, plaintext, connection would show up by now
    lines = mx.lines()
    text = "\n".join(lines)
    context = f"\nMX log ({mx.service}/smtpd):\n{text}" + context
    assert sum(" connect from " in l for l in lines) == 1, "not ONE connection" + context
    assert not any(": client=" in l for l in lines), "the MX accepted a MAIL" + context
    [disconnect] = [l for l in lines if " disconnect from " in l]
    for verb in ("mail", "rcpt", "data", "bdat"):
        assert f" {verb}=" not in disconnect, f"{verb.upper()} was sent" + context
    return lines


# --------------------------------------------------------------------------------------
# Usable TLSA records: TLS required, the certificate must match
# --------------------------------------------------------------------------------------

def test_dane_ee_3_1_1_delivers_authenticated(dane_net, workdir):
    """3 1 1 of the leaf's key: delivered over TLS, `verified=yes (DANE-EE)
    level=authenticated` (no CA is given to blackpony: DANE alone vouches)."""
    domain = f"ee.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, f"relay={mx_of(domain)}[{DANE_ADDR['tls']}]",
               "verified=yes (DANE-EE) level=authenticated")
    assert f"usable (1 of 1 TLSA records: {dane_net.leaf_311})" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)
    lines = mx.wait_done()
    assert any("TLS connection established from" in l for l in lines), "\n".join(lines)
    # dane-only: the same.
    res, rcpt, body = send(dane_net, workdir, domain, "dane-only")
    check_sent(res, rcpt, "verified=yes (DANE-EE) level=authenticated")
    arrived(dane_net.postfix, rcpt, body)


def tls_report_days(workdir: Path, domain: str) -> set[Path]:
    """The files of today's (UTC) TLS report records (RFC 8460) for domain in the state
    directories of this module's deliveries."""
    import datetime
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return set(workdir.glob(f"state-dane-*/tlsrpt/{domain}/{day}"))


def test_a_dane_session_is_one_tlsa_report_record(dane_net, workdir):
    """RFC 8460 §4.4: a session DANE judged is reported under its policy, `tlsa`, once: not
    also under `no-policy-found` (the type of sessions no DANE or MTA-STS policy judged)."""
    import json
    domain = f"ee.{ZONE}"
    before = tls_report_days(workdir, domain)
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "verified=yes (DANE-EE) level=authenticated")
    arrived(dane_net.postfix, rcpt, body)
    [day] = tls_report_days(workdir, domain) - before  # send() uses a new state directory
    records = [json.loads(l) for l in day.read_text().splitlines() if l.strip()]
    assert [(r["policy-type"], r["result"]) for r in records] == [("tlsa", "success")], records


def test_dane_ta_2_0_1_private_ca_delivers_authenticated(dane_net, workdir):
    """2 0 1 of the private CA that issued the leaf (sent in the chain) and a leaf that
    names the MX host: delivered, `verified=yes (DANE-TA) level=authenticated`."""
    domain = f"ta.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "verified=yes (DANE-TA) level=authenticated")
    assert "usable (1 of 1 TLSA records: 2 0 1 " in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)


def test_dane_ta_name_mismatch_deferred(dane_net, workdir):
    """DANE-TA checks names (RFC 7672 §3.2.2): the CA matches, but the leaf names neither
    the MX host nor the domain: deferred, no MAIL."""
    domain = f"taname.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.5", "does not match its TLSA records (DANE)",
                   f"names none of {mx_of(domain)}, {domain}", "level=plaintext")
    one_session_without_mail(mx, show(res))
    no_message(dane_net.postfix, rcpt)


def test_non_matching_tlsa_deferred_never_plaintext(dane_net, workdir):
    """3 1 1 of another key: the handshake is refused, the host deferred (4.7.5), and
    blackpony neither sends MAIL nor comes back without TLS, under dane and dane-only."""
    domain = f"wrong.{ZONE}"
    for policy in ("dane", "dane-only"):
        mx = MxSessions(dane_net.postfix, "postfix")
        res, rcpt, _ = send(dane_net, workdir, domain, policy)
        check_deferred(res, rcpt, f"relay={mx_of(domain)}[{DANE_ADDR['tls']}]", "4.7.5",
                       "does not match its TLSA records (DANE): no TLSA record matches")
        one_session_without_mail(mx, show(res))
        no_message(dane_net.postfix, rcpt)


def test_usable_tlsa_without_starttls_deferred(dane_net, workdir):
    """A host with usable TLSA records that does not offer STARTTLS is deferred (RFC 7672
    §2.2: TLS is mandatory), never delivered in plaintext."""
    domain = f"notls.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix/notls")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.4 TLS is required by DANE (usable TLSA records) but",
                   "did not offer STARTTLS")
    one_session_without_mail(mx, show(res))
    no_message(dane_net.postfix, rcpt)


# --------------------------------------------------------------------------------------
# Bogus answers: the host is deferred without being connected to
# --------------------------------------------------------------------------------------

def test_bogus_tlsa_deferred_without_connecting(dane_net, workdir):
    """TLSA records changed after signing fail validation: the host is deferred and never
    connected to, under dane (not the fallback to `may`)."""
    domain = f"bogus.{ZONE}"
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.5", "DANE", "bogus")
    assert "failed (" in dane_line(res, mx_of(domain))
    no_session(mx, show(res))
    no_message(dane_net.postfix, rcpt)


def test_bogus_mx_deferred(dane_net, workdir):
    """An MX record changed after signing: the domain is deferred (RFC 7672 §2.2.1)."""
    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, f"bogusmx.{ZONE}", "dane")
    check_deferred(res, rcpt, "bogus")
    no_session(mx, show(res))
    no_message(dane_net.postfix, rcpt)


# --------------------------------------------------------------------------------------
# DANE that does not apply: the configured policy's fallback
# --------------------------------------------------------------------------------------

def test_tlsa_in_unsigned_zone_ignored(dane_net, workdir):
    """The TLSA records of a host in an unsigned zone (they name another key) are ignored:
    under dane the delivery is opportunistic TLS (`may`), encrypted, not authenticated; the
    log says why DANE was not used. Under dane-only it is deferred without a connection."""
    domain = UNSIGNED
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "verified=no (untrusted issuer) level=encrypted")
    assert "not used (the MX RRset is not signed)" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)

    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane-only")
    check_deferred(res, rcpt, "4.7.5", "policy dane-only, but DANE does not apply",
                   "the MX RRset is not signed")
    no_session(mx, show(res))


def test_no_tlsa_records_dane_falls_back_dane_only_defers(dane_net, workdir):
    """A signed zone without TLSA records: dane delivers as `may` would, dane-only defers
    (Postfix's names and meaning)."""
    domain = f"nodane.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "level=encrypted")
    assert "not used (no TLSA records)" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)

    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send(dane_net, workdir, domain, "dane-only")
    check_deferred(res, rcpt, "policy dane-only, but DANE does not apply: no TLSA records")
    no_session(mx, show(res))
    no_message(dane_net.postfix, rcpt)


def test_unusable_tlsa_encrypt_without_authentication(dane_net, workdir):
    """Only a PKIX-EE(1) record, unusable for SMTP (RFC 7672 §3.1.3): TLS is still
    mandatory but unauthenticated (RFC 7672 §2.2), so the delivery is `encrypted`;
    dane-only defers."""
    domain = f"unusable.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane")
    check_sent(res, rcpt, "level=encrypted")
    assert "unusable (1 TLSA records, none usable: 1 1 1 " in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)

    res, rcpt, _ = send(dane_net, workdir, domain, "dane-only")
    check_deferred(res, rcpt, "none of its TLSA records is usable")
    no_message(dane_net.postfix, rcpt)


def test_dane_needs_validation(dane_net, workdir):
    """Without `--dnssec` nothing is secure: dane is `may`, dane-only defers everything."""
    domain = f"ee.{ZONE}"
    res, rcpt, body = send(dane_net, workdir, domain, "dane", dnssec="off")
    check_sent(res, rcpt, "level=encrypted")
    assert "not used (DNSSEC validation is off" in dane_line(res, mx_of(domain))
    arrived(dane_net.postfix, rcpt, body)


# --------------------------------------------------------------------------------------
# DANE and MTA-STS for one domain: DANE wins where both apply (RFC 8461 §2)
# --------------------------------------------------------------------------------------

def send_sts(net: DaneNet, workdir: Path, domain: str, policy: str):
    """send() with the CA (MX certificates and the policy host's) and nginx for MTA-STS."""
    return send(net, workdir, domain, policy, None, "--tls-ca-file", str(net.ca_cert),
                "--mta-sts-port", str(net.https_port))


def test_dane_match_delivers_where_mta_sts_would_refuse(dane_net, workdir):
    """A signed TLSA record that matches decides, whatever the domain's MTA-STS policy (mode
    enforce) would say: the certificate does not name mx.stsee (PKIX, which MTA-STS uses,
    refuses it), and stsother's policy does not even list its MX host (MTA-STS would not
    connect). Under dane both are delivered authenticated by DANE-EE; under may (no DANE)
    the same policies defer both, which shows what MTA-STS alone would have done."""
    for label, sts_says in [("stsee", "not verified: name mismatch"),
                            ("stsother", "lists none of its MX hosts")]:
        domain = f"{label}.{ZONE}"
        res, rcpt, body = send_sts(dane_net, workdir, domain, "dane")
        check_sent(res, rcpt, f"relay={mx_of(domain)}[{DANE_ADDR['tls']}]",
                   "verified=yes (DANE-EE) level=authenticated")
        assert "usable (1 of 1 TLSA records: " in dane_line(res, mx_of(domain))
        stderr = res.stderr.decode(errors="replace")
        # MTA-STS judged no session with the host (and recorded no failure for it).
        assert f"mx={mx_of(domain)}[" not in stderr, stderr
        arrived(dane_net.postfix, rcpt, body)

        res, rcpt, _ = send_sts(dane_net, workdir, domain, "may")
        check_deferred(res, rcpt, "4.7.5", sts_says, "MTA-STS policy of")
        no_message(dane_net.postfix, rcpt)


def test_dane_mismatch_defers_where_mta_sts_would_accept(dane_net, workdir):
    """stswrong's TLSA record names another key; its certificate verifies for the MX host,
    which the enforce policy lists: MTA-STS would accept it (delivered under may, verified),
    but under dane the mismatch defers it, with one session and no MAIL (MTA-STS never
    overrides a failing DANE validation)."""
    domain = f"stswrong.{ZONE}"
    res, rcpt, body = send_sts(dane_net, workdir, domain, "may")
    check_sent(res, rcpt, "verified=yes level=authenticated")
    assert "sts=enforce" in res.stderr.decode(errors="replace"), show(res)
    arrived(dane_net.postfix, rcpt, body)

    mx = MxSessions(dane_net.postfix, "postfix")
    res, rcpt, _ = send_sts(dane_net, workdir, domain, "dane")
    check_deferred(res, rcpt, "4.7.5", "does not match its TLSA records (DANE)")
    one_session_without_mail(mx, show(res))
    no_message(dane_net.postfix, rcpt)


# --------------------------------------------------------------------------------------
# The connection cache of `blackpony outbound` (issue 12)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["lmtp", "smtp"])
def test_outbound_reuses_a_dane_session(dane_net, workdir, protocol):
    """`blackpony outbound --tls-policy dane`: two messages to a domain whose MX host has
    usable TLSA records, from two MTA connections, go over ONE MX session (one STARTTLS,
    DANE-authenticated once, RSET before the second MAIL), and both are logged
    `verified=yes (DANE-EE) level=authenticated` (the session DANE authenticated is kept
    under the domain's policy `dane` and found again by the next `dane` delivery)."""
    domain = f"ee.{ZONE}"
    tok = token()
    state = owned_dir(workdir / f"state-dane-reuse-{protocol}-{tok}")
    bp = BlackponyOutbound(workdir / "logs", args=dane_net.outbound_args(
        state, "--tls-policy", "dane"), name=f"outbound-dane-{protocol}-{tok}",
        protocol=protocol)
    bp.start()
    try:
        mx = MxSessions(dane_net.postfix, "postfix")
        rcpts = [f"dreuse{i}-{tok}@{domain}" for i in range(2)]
        for i, rcpt in enumerate(rcpts):
            message, body = make_message(f"{tok}{i}", [rcpt])
            if protocol == "lmtp":
                [(code, text)] = lmtp_send(bp, [rcpt], message)
            else:
                with smtplib.SMTP(bp.host, bp.port, local_hostname="client.test",
                                  timeout=60) as s:
                    s.ehlo()
                    assert s.mail(SENDER)[0] == 250
                    assert s.rcpt(rcpt)[0] == 250, bp.log_text()[-3000:]
                    code, text = s.data(crlf(message))
            assert code == 250, (code, text, bp.log_text()[-3000:])
            arrived(dane_net.postfix, rcpt, body)
            line = bp_line(bp, rcpt)
            assert "verified=yes (DANE-EE) level=authenticated" in line, line
            assert "status=sent" in line, line
        # The kept session ends with QUIT after its idle time; then smtpd logs its counts.
        lines = mx.wait_done()
        time.sleep(0.5)
        lines = mx.lines()
        context = "\nMX log:\n" + "\n".join(lines) + "\nblackpony log:\n" + bp.log_text()[-3000:]
        assert sum(" connect from " in l for l in lines) == 1, "not ONE MX session" + context
        assert sum("TLS connection established from" in l for l in lines) == 1, context
        [disconnect] = [l for l in lines if " disconnect from " in l]
        assert " mail=2 " in disconnect and " rset=1 " in disconnect, disconnect + context
    finally:
        bp.stop()
