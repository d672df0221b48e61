"""SMTP TLS reporting (RFC 8460) with real peers: `blackpony deliver` on the fake internet
(interop/peers.py FakeInternet) records each session's TLS outcome in the state directory;
`blackpony tlsrpt` turns one day of one domain into the RFC 8460 JSON report, and with
`--send` mails it to the `rua=mailto:` address of the domain's `_smtp._tls` TXT record,
through blackpony's own outbound transport, into the Postfix MX's Maildir.

What is checked:
  - sessions to mx.tls.test (STARTTLS, self-signed certificate) under `may` count as
    successes, and under `verify` as `certificate-not-trusted` failures (reason
    `self-signed`); mx.plain.test (no STARTTLS) as `starttls-not-supported`;
    mx.brokentls.test (garbage instead of a ServerHello) as `validation-failure`;
    every failure with sending-mta-ip, receiving-mx-hostname and receiving-ip;
  - the JSON validates against RFC8460_SCHEMA below, written from RFC 8460 §4.4 (the
    report's fields) and §4.3 (the result types), with python3-jsonschema;
  - `--send`: the mail in the Postfix Maildir is multipart/report; report-type="tlsrpt"
    with TLS-Report-Domain / TLS-Report-Submitter headers, and its application/tlsrpt+gzip
    attachment, named as §5.1 says, un-gzips to a report that validates and equals the one
    written with --out; the same report is POSTed (§5.4) to the domain's `https:` rua,
    an nginx with a certificate from the test CA (ReportSink), as application/tlsrpt+gzip;
    a POST answered 404, or to a certificate blackpony cannot verify, exits 75;
  - the report mail carries a DKIM signature (RFC 8460 §5.3: receivers ignore a report
    without one) that dkimpy, the verifier of Debian's python3-dkim, accepts against the
    TXT record `tlsrpt --dkim-record` prints: an RSA key and an Ed25519 key (RFC 8463),
    both made by openssl;
  - the report goes out "despite any TLS-related failures" (§5.3): under a configured
    `verify` policy, to a rua whose MX breaks the TLS handshake, it is sent again in
    plaintext at once and delivered, and that session is not recorded for the next report;
  - a domain without a TLSRPT record gets nothing (exit 69, said on stderr).
"""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import ipaddress
import json
import os
import re
import subprocess
from pathlib import Path

import dkim
import jsonschema
import pytest

from interop.clients import token
from interop.conftest import owned_dir
from interop.mta_sts_net import nginx_main
from interop.peers import (DNS_RECORDS, NET_ADDR, Dnsmasq, Process, blackpony_bin,
                           free_port, make_ca_signed_cert, require_tool, tcp_open)
from interop.test_outbound import deliver, make_message, show

DATETIME = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$"}
IP = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
COUNT = {"type": "integer", "minimum": 0}
STRINGS = {"type": "array", "items": {"type": "string"}}

# RFC 8460 §4.4 (JSON Report Schema) as a JSON Schema; result types from §4.3.
RFC8460_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "SMTP TLS report (RFC 8460 §4.4)",
    "type": "object",
    "required": ["organization-name", "date-range", "contact-info", "report-id", "policies"],
    "additionalProperties": False,
    "properties": {
        "organization-name": {"type": "string", "minLength": 1},
        "date-range": {
            "type": "object",
            "required": ["start-datetime", "end-datetime"],
            "additionalProperties": False,
            "properties": {"start-datetime": DATETIME, "end-datetime": DATETIME},
        },
        "contact-info": {"type": "string", "minLength": 1},
        "report-id": {"type": "string", "minLength": 1},
        "policies": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["policy", "summary"],
                "additionalProperties": False,
                "properties": {
                    "policy": {
                        "type": "object",
                        "required": ["policy-type", "policy-domain"],
                        "additionalProperties": False,
                        "properties": {
                            "policy-type": {"enum": ["tlsa", "sts", "no-policy-found"]},
                            "policy-string": STRINGS,
                            "policy-domain": {"type": "string", "minLength": 1},
                            "mx-host": STRINGS,
                        },
                    },
                    "summary": {
                        "type": "object",
                        "required": ["total-successful-session-count",
                                     "total-failure-session-count"],
                        "additionalProperties": False,
                        "properties": {"total-successful-session-count": COUNT,
                                       "total-failure-session-count": COUNT},
                    },
                    "failure-details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["result-type", "failed-session-count"],
                            "additionalProperties": False,
                            "properties": {
                                "result-type": {"enum": [
                                    "starttls-not-supported", "certificate-host-mismatch",
                                    "certificate-expired", "certificate-not-trusted",
                                    "validation-failure", "tlsa-invalid", "dnssec-invalid",
                                    "dane-required", "sts-policy-fetch-error",
                                    "sts-policy-invalid", "sts-webpki-invalid"]},
                                "sending-mta-ip": IP,
                                "receiving-mx-hostname": {"type": "string"},
                                "receiving-mx-helo": {"type": "string"},
                                "receiving-ip": IP,
                                "failed-session-count": COUNT,
                                "additional-information": {"type": "string"},
                                "failure-reason-code": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}


def validate(report: dict):
    jsonschema.Draft7Validator.check_schema(RFC8460_SCHEMA)
    jsonschema.Draft7Validator(RFC8460_SCHEMA,
                               format_checker=jsonschema.FormatChecker()).validate(report)


def test_schema_rejects_what_the_rfc_does_not_allow():
    """The schema is not a rubber stamp: it refuses a wrong result type, a missing summary,
    a bad address."""
    good = {"organization-name": "o", "contact-info": "c", "report-id": "r",
            "date-range": {"start-datetime": "2026-12-03T00:00:00Z",
                           "end-datetime": "2026-12-03T23:59:59Z"},
            "policies": [{"policy": {"policy-type": "no-policy-found", "policy-domain": "d"},
                          "summary": {"total-successful-session-count": 1,
                                      "total-failure-session-count": 1},
                          "failure-details": [{"result-type": "starttls-not-supported",
                                               "sending-mta-ip": "192.0.2.1",
                                               "failed-session-count": 1}]}]}
    validate(good)
    for broken in (
        lambda r: r["policies"][0]["failure-details"][0].update({"result-type": "tls-bad"}),
        lambda r: r["policies"][0].pop("summary"),
        lambda r: r["policies"][0]["failure-details"][0].update({"sending-mta-ip": "x.y"}),
        lambda r: r["policies"][0]["policy"].update({"policy-type": "dane"}),
        lambda r: r.pop("report-id"),
    ):
        r = json.loads(json.dumps(good))
        broken(r)
        with pytest.raises(jsonschema.ValidationError):
            validate(r)


def today() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


def tlsrpt(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([blackpony_bin(), "tlsrpt", *args], capture_output=True,
                          timeout=timeout)


# (domain, extra deliver flags, expected exit): the sessions recorded once for the module.
SESSIONS = [
    ("tls.test", [], 0),                          # STARTTLS, self-signed: success (may)
    ("tls.test", [], 0),
    ("tls.test", ["--tls-policy", "verify"], 75),  # certificate-not-trusted (self-signed)
    ("plain.test", [], 0),                        # starttls-not-supported
    ("brokentls.test", [], 75),                   # validation-failure (handshake)
]


@pytest.fixture(scope="module")
def recorded(workdir, internet) -> Path:
    """A state directory holding the TLS outcomes of SESSIONS."""
    state = owned_dir(workdir / "state-tlsrpt")
    for domain, extra, code in SESSIONS:
        rcpt = f"tlsrpt-{token()}@{domain}"
        message, _ = make_message(token(), [rcpt])
        res = deliver(internet, state, [rcpt], message, *extra)
        assert res.returncode == code, show(res)
    return state


def report_of(internet, state: Path, domain: str, tmp: Path) -> dict:
    out = tmp / f"{domain}.json"
    res = tlsrpt("--domain", domain, "--date", today(), "--out", str(out),
                 *internet.outbound_args(state))
    assert res.returncode == 0, show(res)
    report = json.loads(out.read_text())
    validate(report)
    return report


def only_policy(report: dict) -> dict:
    assert len(report["policies"]) == 1, report
    p = report["policies"][0]
    assert p["policy"]["policy-type"] == "no-policy-found", p
    return p


def test_successes_and_certificate_failure(internet, recorded, tmp_path):
    report = report_of(internet, recorded, "tls.test", tmp_path)
    day = today()
    assert report["date-range"] == {"start-datetime": f"{day}T00:00:00Z",
                                    "end-datetime": f"{day}T23:59:59Z"}
    assert report["organization-name"] == "client.test"
    assert report["contact-info"] == "postmaster@client.test"
    p = only_policy(report)
    assert p["policy"]["policy-domain"] == "tls.test"
    assert p["summary"] == {"total-successful-session-count": 2,
                            "total-failure-session-count": 1}, p
    [f] = p["failure-details"]
    assert f["result-type"] == "certificate-not-trusted", f
    assert f["failure-reason-code"] == "self-signed", f
    assert f["receiving-mx-hostname"] == "mx.tls.test"
    assert f["receiving-ip"] == NET_ADDR["tls"]
    assert ipaddress.ip_address(f["sending-mta-ip"]).is_loopback, f


@pytest.mark.parametrize("domain,mx,result", [
    ("plain.test", "mx.plain.test", "starttls-not-supported"),
    ("brokentls.test", "mx.brokentls.test", "validation-failure"),
])
def test_negotiation_failures(internet, recorded, tmp_path, domain, mx, result):
    p = only_policy(report_of(internet, recorded, domain, tmp_path))
    assert p["summary"] == {"total-successful-session-count": 0,
                            "total-failure-session-count": 1}, p
    [f] = p["failure-details"]
    assert (f["result-type"], f["receiving-mx-hostname"]) == (result, mx), f
    assert f["receiving-ip"] == NET_ADDR[domain.split(".")[0]], f


def test_a_day_without_sessions_is_an_empty_valid_report(internet, recorded, tmp_path):
    out = tmp_path / "empty.json"
    res = tlsrpt("--domain", "tls.test", "--date", "2001-01-01", "--out", str(out),
                 *internet.outbound_args(recorded))
    assert res.returncode == 0, show(res)
    report = json.loads(out.read_text())
    validate(report)
    assert report["policies"] == []
    res = tlsrpt("--domain", "tls.test", "--date", "2001-02-30",
                 *internet.outbound_args(recorded))
    assert res.returncode == 64 and b"not a day" in res.stderr, show(res)


RUA = "tlsrpt-reports@plain.test"
# The HTTPS report receiver (RFC 8460 §5.4): nginx, a certificate from the interop test CA.
SINK_HOST, SINK_ADDR = "reports.tlsrpt.test", "127.0.32.1"


class ReportSink(Process):
    """nginx taking POSTs at https://SINK_HOST:port/tlsrpt (each body kept in a file of
    `bodies`, answered 204 by a plain server behind it: nginx reads a body only to pass it
    on) and answering 404 elsewhere; access.log has `method uri status "content type"`."""

    def __init__(self, base: Path, ca: tuple[Path, Path]):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o755)
        self.port, behind = free_port(SINK_ADDR), free_port(SINK_ADDR)
        self.bodies = base / "bodies"
        for d in (self.bodies, base / "tmp"):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o777)  # nginx's workers run as nobody
        chain, key = make_ca_signed_cert(base, SINK_HOST, ca)
        temp = "".join(f"    {k}_temp_path {base}/tmp;\n"
                       for k in ("proxy", "fastcgi", "uwsgi", "scgi"))
        conf = base / "nginx.conf"
        conf.write_text(f"""\
{nginx_main(base)}
http {{
{temp}    client_body_temp_path {self.bodies};
    log_format posts '$request_method $request_uri $status "$content_type"';
    access_log {base}/access.log posts;
    server {{
        listen {SINK_ADDR}:{self.port} ssl;
        server_name {SINK_HOST};
        ssl_certificate {chain};
        ssl_certificate_key {key};
        location = /tlsrpt {{
            client_body_in_file_only on;
            proxy_pass http://{SINK_ADDR}:{behind}/ok;
        }}
        location / {{ return 404; }}
    }}
    server {{
        listen {SINK_ADDR}:{behind};
        access_log off;
        location = /ok {{ return 204; }}
    }}
}}
""")
        super().__init__([require_tool("nginx"), "-p", str(base), "-e",
                          str(base / "error.log"), "-c", str(conf)], base / "nginx.out",
                         "nginx (TLS report sink)")

    def url(self, path: str) -> str:
        return f"https://{SINK_HOST}:{self.port}{path}"

    def requests(self) -> list[str]:
        try:
            return (self.base / "access.log").read_text().splitlines()
        except FileNotFoundError:
            return []

    def posted(self) -> list[bytes]:
        """The bodies POSTed to /tlsrpt, oldest first."""
        return [f.read_bytes() for f in sorted(p for p in self.bodies.rglob("*")
                                                if p.is_file())]

    def start(self, timeout: float = 20):
        return super().start(lambda: tcp_open(SINK_ADDR, self.port), timeout)


@pytest.fixture(scope="module")
def report_sink(workdir, internet):
    sink = ReportSink(workdir / "tlsrpt-sink", (internet.ca_cert, internet.ca_key))
    sink.start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture(scope="module")
def rua_dns(workdir, report_sink):
    """The fake internet's DNS plus TLSRPT records: tls.test reports to a mailbox of the
    Postfix MX and to the report sink over HTTPS, brokentls.test to a URL of the sink that
    answers 404, plain.test publishes none."""
    records = DNS_RECORDS + (
        f'txt-record=_smtp._tls.tls.test,"v=TLSRPTv1; rua=mailto:{RUA},'
        f'{report_sink.url("/tlsrpt")}"\n'
        f'txt-record=_smtp._tls.brokentls.test,"v=TLSRPTv1; rua={report_sink.url("/missing")}"\n'
        f"host-record={SINK_HOST},{SINK_ADDR}\n")
    dns = Dnsmasq(workdir / "dns-tlsrpt", records)
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()


def with_dns(internet, state: Path, dns, trust_ca: bool = True) -> list[str]:
    """The outbound flags with the TLSRPT DNS, and the test CA trusted (the sink's
    certificate) unless trust_ca is false."""
    args = internet.outbound_args(state)
    args[args.index("--dns") + 1] = dns.address
    return args + (["--tls-ca-file", str(internet.ca_cert)] if trust_ca else [])


def dkim_key(tmp: Path, algorithm: str) -> list[str]:
    """A fresh DKIM key made by openssl, and the tlsrpt flags that sign with it."""
    key = tmp / f"dkim-{algorithm}.pem"
    opts = ["-pkeyopt", "rsa_keygen_bits:2048"] if algorithm == "RSA" else []
    subprocess.run([require_tool("openssl"), "genpkey", "-algorithm", algorithm, *opts,
                    "-out", str(key)], check=True, capture_output=True)
    return ["--dkim-key", str(key), "--dkim-selector", f"rpt-{algorithm.lower()}",
            "--dkim-domain", "client.test"]


def dkim_verifies(raw: bytes, flags: list[str], internet, state: Path) -> bool:
    """dkimpy's verdict on raw, the key's record as `tlsrpt --dkim-record` prints it
    served for the selector's name (and nothing else)."""
    res = tlsrpt("--dkim-record", *flags, *internet.outbound_args(state))
    assert res.returncode == 0, show(res)
    name, value = re.fullmatch(r'(\S+)\. IN TXT "(.*)"\n', res.stdout.decode()).groups()
    selector = flags[flags.index("--dkim-selector") + 1]
    assert name == f"{selector}._domainkey.client.test", name
    assert "s=tlsrpt" in value, value

    if b"\r\n" not in raw:
        # A Maildir file has LF line ends; on the wire (what DKIM signs) they are CRLF.
        raw = raw.replace(b"\n", b"\r\n")

    def dnsfunc(qname, timeout=5):
        qname = qname.decode() if isinstance(qname, bytes) else qname
        return value.encode() if qname.rstrip(".") == name else None
    # tlsrpt=True: verified as a TLS report, which a key with s=tlsrpt may sign (dkimpy
    # refuses such a key for other mail).
    return dkim.verify(raw, dnsfunc=dnsfunc, tlsrpt=True)


def test_send_mails_the_gzipped_report_to_the_rua(internet, recorded, rua_dns, report_sink,
                                                   tmp_path):
    out = tmp_path / "sent.json"
    signing = dkim_key(tmp_path, "RSA")
    res = tlsrpt("--domain", "tls.test", "--date", today(), "--out", str(out), "--send",
                 *signing, *with_dns(internet, recorded, rua_dns))
    assert res.returncode == 0, show(res)
    err = res.stderr.decode(errors="replace")
    assert re.search(rf"tlsrpt: domain=tls.test .*rua=mailto:{RUA} dkim=d=client.test dsn=2\.",
                     err), show(res)
    url = report_sink.url("/tlsrpt")
    assert re.search(rf"tlsrpt: domain=tls.test report-id=\S+ rua={re.escape(url)} status=204",
                     err), show(res)
    written = json.loads(out.read_text())

    # The HTTPS destination (RFC 8460 §5.4): one POST of the gzipped report.
    assert report_sink.requests() == ['POST /tlsrpt 204 "application/tlsrpt+gzip"'], \
        report_sink.requests()
    [body] = report_sink.posted()
    posted = json.loads(gzip.decompress(body))
    validate(posted)
    assert posted == written

    internet.postfix.wait_messages(RUA)
    [(path, raw)] = internet.postfix.messages(RUA)
    # Signed as RFC 8460 §5.3 requires, and the signature holds after Postfix's delivery.
    assert raw.count(b"DKIM-Signature:") == 1, raw[:400]
    assert dkim_verifies(raw, signing, internet, recorded), raw[:600]
    tampered = raw.replace(b"Report Domain: tls.test", b"Report Domain: tls.tesT")
    assert not dkim_verifies(tampered, signing, internet, recorded)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report", msg["Content-Type"]
    assert msg.get_param("report-type") == "tlsrpt", msg["Content-Type"]
    assert msg["TLS-Report-Domain"] == "tls.test"
    assert msg["TLS-Report-Submitter"] == "client.test"
    assert "Report Domain: tls.test" in msg["Subject"], msg["Subject"]
    assert "Submitter: client.test" in msg["Subject"], msg["Subject"]
    attachments = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    assert len(attachments) == 1, [p.get_content_type() for p in msg.walk()]
    [part] = attachments
    assert re.fullmatch(r"client\.test!tls\.test!\d+!\d+\.json\.gz", part.get_filename()), \
        part.get_filename()
    fields = part.get_filename().removesuffix(".json.gz").split("!")
    start, end = int(fields[2]), int(fields[3])
    assert (start % 86400, end - start) == (0, 86399), fields
    report = json.loads(gzip.decompress(part.get_payload(decode=True)))
    validate(report)
    assert report == written
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 2


def test_send_to_a_domain_without_a_tlsrpt_record(internet, recorded, rua_dns):
    res = tlsrpt("--domain", "plain.test", "--date", today(), "--send",
                 *with_dns(internet, recorded, rua_dns))
    assert res.returncode == 69, show(res)
    assert b"no TLSRPT record" in res.stderr, show(res)


@pytest.mark.parametrize("trust_ca", [True, False])
def test_a_failed_post_exits_75(internet, recorded, rua_dns, report_sink, trust_ca):
    """brokentls.test's rua is a URL of the sink that answers 404 (trusted certificate), or
    one blackpony cannot verify (the test CA not given): the POST fails, the log says why,
    and the exit status is 75 so that the report is sent again later. No mail is sent (the
    record has no mailto:)."""
    before = len(report_sink.requests())
    res = tlsrpt("--domain", "brokentls.test", "--date", today(), "--send",
                 *with_dns(internet, recorded, rua_dns, trust_ca))
    assert res.returncode == 75, show(res)
    err = res.stderr.decode(errors="replace")
    url = report_sink.url("/missing")
    why = "HTTP 404 Not Found" if trust_ca else "invalid peer certificate"
    line = [l for l in err.splitlines() if f"rua={url} failed (POST {url}: " in l]
    assert len(line) == 1 and why in line[0], show(res)
    assert res.stdout.decode().startswith("4.0.0 POST "), show(res)
    requests = report_sink.requests()[before:]
    assert requests == (['POST /missing 404 "application/tlsrpt+gzip"'] if trust_ca else []), \
        requests


BROKEN_RUA = "tlsrpt-reports@brokentls.test"


@pytest.fixture(scope="module")
def broken_rua_dns(workdir):
    """tls.test's reports go to a mailbox whose MX (fake_mx.py broken-tls) offers STARTTLS
    and then breaks every handshake, but takes mail in plaintext."""
    records = DNS_RECORDS + f'txt-record=_smtp._tls.tls.test,"v=TLSRPTv1; rua=mailto:{BROKEN_RUA}"\n'
    dns = Dnsmasq(workdir / "dns-tlsrpt-broken", records)
    dns.start()
    try:
        yield dns
    finally:
        dns.stop()


def test_the_report_goes_out_despite_tls_failures(internet, recorded, broken_rua_dns,
                                                   tmp_path):
    """RFC 8460 §5.3: "Sending MTAs MUST deliver reports despite any TLS-related failures
    and SHOULD NOT include this SMTP session in the next report." The operator's policy is
    `verify`; the rua's MX breaks the TLS handshake. Before the change the report was
    deferred (exit 75) and its failed session recorded under brokentls.test."""
    before = report_of(internet, recorded, "brokentls.test", tmp_path)
    signing = dkim_key(tmp_path, "ED25519")
    args = internet.outbound_args(recorded, "--tls-policy", "verify")
    args[args.index("--dns") + 1] = broken_rua_dns.address
    res = tlsrpt("--domain", "tls.test", "--date", today(), "--send", *signing, *args)
    assert res.returncode == 0, show(res)
    err = res.stderr.decode(errors="replace")
    assert re.search(rf"tlsrpt: {re.escape(BROKEN_RUA)} deferred under policy may .*"
                     r"sending in plaintext now \(RFC 8460 §5\.3\)", err), show(res)
    assert re.search(rf"rua=mailto:{re.escape(BROKEN_RUA)} dkim=d=client.test dsn=2\.\S+ "
                     r"tls=none", err), show(res)
    # The MX took it in plaintext, signed with the Ed25519 key (RFC 8463).
    mine = [m for m in internet.broken.messages() if BROKEN_RUA in str(m["rcpts"])]
    assert len(mine) == 1 and mine[0]["tls"] is False, internet.broken.messages()
    raw = mine[0]["data"].encode("latin-1")
    assert dkim_verifies(raw, signing, internet, recorded), raw[:600]
    # Neither the failed handshake nor the plaintext session became a record.
    assert report_of(internet, recorded, "brokentls.test", tmp_path) == before
