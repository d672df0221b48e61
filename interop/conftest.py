"""Fixtures for the real-peer interop suite: private Postfix instances on loopback and
`blackpony inbound` processes in front of them.

Every fixture stops what it started (postfix -c DIR stop + kill leftovers, SIGTERM/SIGKILL
for blackpony), even when a test fails. A missing tool is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from interop.peers import Blackpony, MissingTool, Postfix, blackpony_bin, make_temp_dir, require_tool

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
