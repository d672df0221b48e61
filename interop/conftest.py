"""Fixtures for the real-peer interop suite: private Postfix instances on loopback and
`blackpony inbound` processes in front of them; for the outbound side, the fake internet,
`blackpony outbound` (LMTP and SMTP) on TCP and on a Unix socket, a sending Postfix and an
Exim that hand their mail to blackpony over LMTP, and a relay Postfix (relayhost) and an
Exim (manualroute smarthost) that hand it to `blackpony outbound --protocol smtp`. For
XPONY: host keys from `blackpony keygen` and a second fake internet whose MX hosts are
`blackpony inbound --host-key` processes, some behind a man in the middle (xpony_mitm.py).

Every fixture stops what it started (postfix -c DIR stop + kill leftovers, SIGTERM/SIGKILL
for blackpony), even when a test fails. A missing tool is an error, never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from interop.peers import (Blackpony, BlackponyOutbound, Exim, FakeInternet, MissingTool,
                           Postfix, XponyInternet, blackpony_bin, keygen, make_temp_dir,
                           require_tool)

REPO = Path(__file__).resolve().parent.parent

REQUIRED_TOOLS = ("postfix", "smtp-source", "swaks", "openssl", "script")

# The identity modes and which Postfix each one talks to: PROXY modes need a Postfix that
# expects the PROXY header, xclient needs smtpd_authorized_xclient_hosts, and `none` is
# pointed at that same Postfix to show what a plain forwarder does (it inherits 127.0.0.1).
BACKEND_OF_MODE = {"proxy-v2": "proxy", "proxy-v1": "proxy", "xclient": "xclient",
                   "none": "xclient"}

HOSTNAME = "mx.interop.test"


def pytest_configure(config):
    # A CI timeout or kill sends SIGTERM: turn it into the KeyboardInterrupt pytest handles,
    # so every fixture still stops its Postfix and blackpony processes.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)


@pytest.fixture(scope="session", autouse=True)
def tools():
    """Fail (not skip) every test when a required program is missing."""
    missing = []
    for t in REQUIRED_TOOLS:
        try:
            require_tool(t)
        except MissingTool as e:
            missing.append(str(e))
    try:
        blackpony_bin()
    except MissingTool as e:
        missing.append(str(e))
    if os.geteuid() != 0:
        missing.append("the interop suite runs a private Postfix and must run as root")
    if missing:
        pytest.fail("interop prerequisites missing:\n" + "\n".join(missing), pytrace=False)


@pytest.fixture(scope="module")
def workdir():
    # Not pytest's tmp_path: its parents are mode 0700, and Postfix's daemons (user
    # postfix) and virtual(8) (uid 65534) must reach into the instance directories.
    d = make_temp_dir("blackpony-interop-")
    yield d
    if os.environ.get("BLACKPONY_INTEROP_KEEP"):
        print(f"\nkept interop files in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


def _postfix(workdir: Path, name: str, **kw):
    base = workdir / name
    base.mkdir()
    pf = Postfix(base, **kw)
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture(scope="module")
def pf_proxy(workdir):
    """Postfix expecting a PROXY v1/v2 header (smtpd_upstream_proxy_protocol = haproxy)."""
    yield from _postfix(workdir, "postfix-proxy", proxy=True)


@pytest.fixture(scope="module")
def pf_xclient(workdir):
    """Postfix without PROXY, trusting XCLIENT from 127.0.0.1."""
    yield from _postfix(workdir, "postfix-xclient", xclient=True)


class BlackponyFactory:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.started: list[Blackpony] = []

    def __call__(self, backend, identity, *args: str, name: str = "blackpony",
                 hostname: str | None = HOSTNAME) -> Blackpony:
        if isinstance(backend, Postfix):
            backend = f"{backend.host}:{backend.port}"
        host_args = ["--hostname", hostname] if hostname else []
        bp = Blackpony(self.workdir / "logs", backend=backend, identity=identity,
                       args=[*host_args, *args], name=name)
        self.started.append(bp)
        return bp.start()

    def stop_all(self):
        errors = []
        for bp in self.started:
            try:
                bp.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        self.started.clear()
        if errors:
            raise errors[0]


@pytest.fixture
def start_blackpony(workdir):
    """Start a blackpony for one test: start_blackpony(backend, identity, *args)."""
    f = BlackponyFactory(workdir)
    try:
        yield f
    finally:
        f.stop_all()


@pytest.fixture(scope="module")
def _module_blackponies(workdir):
    f = BlackponyFactory(workdir)
    try:
        yield f
    finally:
        f.stop_all()


@pytest.fixture(scope="module")
def mode_blackpony(_module_blackponies, pf_proxy, pf_xclient):
    """mode_blackpony(mode) -> (blackpony, postfix): one shared blackpony per identity mode
    in front of the Postfix that mode needs, started on first use."""
    cache: dict[str, tuple[Blackpony, Postfix]] = {}

    def get(mode: str):
        if mode not in cache:
            pf = {"proxy": pf_proxy, "xclient": pf_xclient}[BACKEND_OF_MODE[mode]]
            cache[mode] = (_module_blackponies(pf, mode, name=f"bp-{mode}"), pf)
        return cache[mode]
    return get


# --------------------------------------------------------------------------------------
# Outbound: the fake internet, blackpony's LMTP servers, and MTAs that hand mail to them
# --------------------------------------------------------------------------------------

def running(net):
    """Yields net started, and stops it afterwards (a module fixture's body)."""
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def internet(workdir):
    """dnsmasq + MX hosts on 127.0.10.x (interop/peers.py FakeInternet)."""
    yield from running(FakeInternet(workdir / "internet"))


def owned_dir(path: Path, user: str = "root") -> Path:
    """A new directory owned by user (a state directory for blackpony run as that user)."""
    import pwd
    pw = pwd.getpwnam(user)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@pytest.fixture(scope="module")
def public_blackpony(workdir) -> Path:
    """A copy of the blackpony binary, mode 755 in a 755 directory: what an MTA's
    unprivileged delivery user (pipe(8) user=nobody, Exim's user) can execute even when the
    build tree is not reachable for it."""
    d = workdir / "bin"
    d.mkdir(exist_ok=True)
    os.chmod(d, 0o755)
    dst = d / "blackpony"
    shutil.copy2(blackpony_bin(), dst)
    os.chmod(dst, 0o755)
    return dst


def _outbound(workdir: Path, internet, name: str, unix: bool, protocol: str = "lmtp"):
    state = owned_dir(workdir / f"state-{name}")
    sock = None
    if unix:
        sock_dir = workdir / f"sock-{name}"
        sock_dir.mkdir()
        os.chmod(sock_dir, 0o755)
        sock = sock_dir / protocol
    bp = BlackponyOutbound(workdir / "logs", args=internet.outbound_args(state),
                           unix_path=sock, name=name, protocol=protocol)
    bp.start()
    try:
        if sock is not None:
            # MTAs' LMTP clients run unprivileged (Postfix lmtp as postfix, Exim as its
            # user) and connecting needs write permission on the socket: what a service
            # manager's SocketMode= or an admin's chmod gives.
            os.chmod(sock, 0o666)
        yield bp
    finally:
        bp.stop()


@pytest.fixture(scope="module")
def outbound_tcp(workdir, internet):
    """`blackpony outbound --listen 127.0.0.1:PORT --protocol lmtp` on the fake internet."""
    yield from _outbound(workdir, internet, "outbound-tcp", unix=False)


@pytest.fixture(scope="module")
def outbound_unix(workdir, internet):
    """`blackpony outbound --listen unix:PATH --protocol lmtp` on the fake internet."""
    yield from _outbound(workdir, internet, "outbound-unix", unix=True)


@pytest.fixture(scope="module")
def outbound_smtp_tcp(workdir, internet):
    """`blackpony outbound --listen 127.0.0.1:PORT --protocol smtp` on the fake internet."""
    yield from _outbound(workdir, internet, "outbound-smtp-tcp", unix=False, protocol="smtp")


@pytest.fixture(scope="module")
def outbound_smtp_unix(workdir, internet):
    """`blackpony outbound --listen unix:PATH --protocol smtp` on the fake internet."""
    yield from _outbound(workdir, internet, "outbound-smtp-unix", unix=True, protocol="smtp")


# The sending Postfix picks blackpony's transport by envelope sender.
SENDER_DOMAIN = "sender.test"
SENDER_PIPE = f"pipe@{SENDER_DOMAIN}"
SENDER_LMTP_INET = f"lmtp-inet@{SENDER_DOMAIN}"
SENDER_LMTP_UNIX = f"lmtp-unix@{SENDER_DOMAIN}"


@pytest.fixture(scope="module")
def pf_sender(workdir, internet, public_blackpony, outbound_tcp, outbound_unix):
    """A second private Postfix acting as the sending MTA, with blackpony as its transport:
    mail from pipe@sender.test goes through pipe(8) to `blackpony deliver` (as nobody),
    lmtp-inet@ through lmtp:inet: to `blackpony outbound` on TCP, lmtp-unix@ through
    lmtp:unix: to `blackpony outbound` on a Unix socket. Bounces to sender.test stay local."""
    base = workdir / "postfix-sender"
    base.mkdir()
    os.chmod(base, 0o755)
    state = owned_dir(workdir / "state-pipe", "nobody")
    maps = base / "sender_transport"
    maps.write_text(
        f"{SENDER_PIPE} blackpony:\n"
        f"{SENDER_LMTP_INET} lmtp:inet:{outbound_tcp.host}:{outbound_tcp.port}\n"
        f"{SENDER_LMTP_UNIX} lmtp:unix:{outbound_unix.unix_path}\n")
    os.chmod(maps, 0o644)
    # The pipe(8) service is docs/recipes/postfix.md's own lines; only the user (the test
    # has no blackpony user), the binary's path and the fake internet's flags differ.
    recipe = (REPO / "docs" / "recipes" / "postfix.md").read_text()
    pipe = re.search(r"(?m)^```\n(blackpony unix .* pipe .*\n(?:  .*\n)+)```", recipe)
    assert pipe, "no pipe(8) block in docs/recipes/postfix.md"
    recipe_argv = "argv=/usr/local/bin/blackpony deliver "
    assert recipe_argv in pipe.group(1) and "user=blackpony " in pipe.group(1), pipe.group(1)
    services = ("lmtp      unix  -       -       n       -       -       lmtp\n"
                + pipe.group(1).replace("user=blackpony ", "user=nobody ").replace(
                    recipe_argv, " ".join(["argv=" + str(public_blackpony), "deliver",
                                           *internet.outbound_args(state), ""])))
    limit = "blackpony_destination_recipient_limit = 1"
    assert limit in recipe, f"{limit!r} not in docs/recipes/postfix.md"
    pf = Postfix(base, domains=(SENDER_DOMAIN,), services=services, settings={
        "myhostname": "relay.sender.test",
        "mydomain": SENDER_DOMAIN,
        "myorigin": SENDER_DOMAIN,
        "sender_dependent_default_transport_maps": f"texthash:{maps}",
        "blackpony_destination_recipient_limit": "1",
        "delay_warning_time": "0",
        "smtpd_banner": "$myhostname ESMTP Postfix (blackpony interop sender)",
    })
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture(scope="module")
def exim(workdir, internet, public_blackpony, outbound_unix):
    """A private Exim (unpacked from the Debian package) handing mail to blackpony over
    LMTP: from command@sender.test through the lmtp transport's `command` (`blackpony
    lmtp` on a pipe), from socket@sender.test through its `socket` (`blackpony outbound`)."""
    from interop.peers import EXIM_USER
    state = owned_dir(workdir / "state-exim", EXIM_USER)
    command = " ".join([str(public_blackpony), "lmtp", *internet.outbound_args(state)])
    ex = Exim(workdir / "exim", command=command, socket_path=outbound_unix.unix_path)
    res = ex.check_config()
    if res.returncode != 0:
        pytest.fail(f"exim -bV with {ex.conf} failed:\n{res.stdout}\n{res.stderr}",
                    pytrace=False)
    yield ex


# Mail from this sender leaves the relay Postfix through a second smtp(8) transport,
# `bpsingle`, with bpsingle_destination_recipient_limit = 1 (one recipient per delivery).
SENDER_RELAY_SINGLE = f"single@{SENDER_DOMAIN}"


@pytest.fixture(scope="module")
def pf_relay(workdir, internet, outbound_smtp_tcp):
    """A private Postfix whose every outgoing message goes through its smtp(8) client to
    `relayhost = [127.0.0.1]:PORT`, blackpony outbound --protocol smtp (no TLS towards it:
    blackpony's SMTP listener is loopback-only and offers no STARTTLS). Mail from
    single@sender.test takes the `bpsingle` transport to the same place, one recipient per
    delivery. Bounces to sender.test stay in its own Maildir."""
    base = workdir / "postfix-relay"
    base.mkdir()
    os.chmod(base, 0o755)
    nexthop = f"[{outbound_smtp_tcp.host}]:{outbound_smtp_tcp.port}"
    maps = base / "sender_transport"
    maps.write_text(f"{SENDER_RELAY_SINGLE} bpsingle:{nexthop}\n")
    os.chmod(maps, 0o644)
    pf = Postfix(base, domains=(SENDER_DOMAIN,),
                 services="smtp      unix  -       -       n       -       -       smtp\n"
                          "bpsingle  unix  -       -       n       -       -       smtp\n"
                          "  -o syslog_name=postfix/bpsingle\n",
                 settings={
                     "sender_dependent_default_transport_maps": f"texthash:{maps}",
        "blackpony_destination_recipient_limit": "1",
                     "bpsingle_destination_recipient_limit": "1",
                     "myhostname": "relay.sender.test",
                     "mydomain": SENDER_DOMAIN,
                     "myorigin": SENDER_DOMAIN,
                     "relayhost": nexthop,
                     "default_transport": "smtp",
                     "relay_transport": "smtp",
                     "smtp_tls_security_level": "none",
                     "delay_warning_time": "0",
                     "smtpd_banner": "$myhostname ESMTP Postfix (blackpony interop relay)",
                 })
    try:
        pf.start()
        yield pf
    finally:
        pf.stop()


@pytest.fixture(scope="module")
def exim_smarthost(workdir, outbound_smtp_tcp):
    """A private Exim whose mail from smtp@sender.test goes through a manualroute router and
    the smtp transport to `blackpony outbound --protocol smtp` on 127.0.0.1::PORT."""
    ex = Exim(workdir / "exim-smarthost", command="/bin/false",
              socket_path=workdir / "exim-smarthost" / "no-lmtp-socket",
              smarthost=(outbound_smtp_tcp.host, outbound_smtp_tcp.port))
    res = ex.check_config()
    if res.returncode != 0:
        pytest.fail(f"exim -bV with {ex.conf} failed:\n{res.stdout}\n{res.stderr}",
                    pytrace=False)
    yield ex


# --------------------------------------------------------------------------------------
# XPONY: host keys and the XPONY internet (blackpony inbound with a host key as MX hosts)
# --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def xpony_keys(workdir) -> dict:
    """Host keys from `blackpony keygen`: "server" (the inbound of mx.pony.test), "client"
    (blackpony deliver's --host-key), "wrong" (published in DNS for mx.pony3.test, held by
    no server)."""
    d = workdir / "keys"
    d.mkdir()
    os.chmod(d, 0o755)
    return {"server": keygen(d / "server.key", "mx.pony.test"),
            "client": keygen(d / "client.key", "client.test"),
            "wrong": keygen(d / "wrong.key", "mx.pony3.test")}


@pytest.fixture(scope="module")
def pony_net(workdir, xpony_keys):
    """The XPONY internet (interop/peers.py XponyInternet)."""
    yield from running(XponyInternet(workdir / "pony-internet", xpony_keys["server"],
                                     xpony_keys["wrong"]))


@pytest.fixture(scope="module")
def dane_net(workdir):
    """The DANE internet (interop/dane_net.py: nsd with a signed zone, a Postfix MX, nginx
    for MTA-STS)."""
    # Imported here: dane_net.py imports test modules that import this one.
    from interop.dane_net import DaneNet
    yield from running(DaneNet(workdir / "dane"))


@pytest.fixture
def pony_inbounds(pony_net):
    """pony_inbounds(where, key, name, *extra) -> a started `blackpony inbound` on
    PONY_ADDR[where] (see XponyInternet.inbound); every one still running is stopped at the
    end of the test."""
    started = []

    def start(where, key, name, *extra):
        bp = pony_net.inbound(where, key, name, *extra)
        started.append(bp)
        return bp.start()
    try:
        yield start
    finally:
        errors = []
        for bp in started:
            try:
                bp.stop()
            except Exception as e:  # keep stopping the others
                errors.append(e)
        if errors:
            raise errors[0]
