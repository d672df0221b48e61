"""The Debian package, built from this checkout with `scripts/build-deb.sh`, on this machine:
lintian finds no error; `dpkg -i` creates the blackpony user, its directories with their
owners and modes, the commented config file and one systemd unit per role; each unit passes
`systemd-analyze verify` and `systemd-analyze security --offline=yes` shows an exposure of
at most 2.5 (printed); `man blackpony-inbound` renders; an upgrade keeps the operator's
config edits and the state; `dpkg --purge` removes all the package made.

The test installs the package on the machine it runs on (as root, like the rest of the
suite); it purges it again whatever happens, and purges a leftover from an earlier run first.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

from interop.peers import free_port

import pytest

REPO = Path(__file__).resolve().parent.parent
UNITS = ["blackpony-inbound.service", "blackpony-inbound.socket", "blackpony-outbound.service",
         "blackpony-seal.service", "blackpony-fetch.service", "blackpony-fetch.timer"]
SERVICES = [u for u in UNITS if u.endswith(".service")]
UNIT_DIR = Path("/lib/systemd/system")
MAX_EXPOSURE = 2.5


def run(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def purge() -> None:
    run("dpkg", "--purge", "blackpony", timeout=120)


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def owner_mode(path: Path) -> tuple[str, str, int]:
    st = path.stat()
    return (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name,
            stat.S_IMODE(st.st_mode))


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """The package at the checkout's version, and the same at a higher version (an upgrade)."""
    for tool in ("dpkg-deb", "dpkg-shlibdeps", "lintian", "systemd-analyze", "man", "adduser"):
        assert shutil.which(tool), f"{tool} is missing: run scripts/install-deps.sh"
    out = tmp_path_factory.mktemp("deb")
    built = run(str(REPO / "scripts/build-deb.sh"), str(out / "v1"))
    assert built.returncode == 0, built.stderr
    first = Path(built.stdout.strip().splitlines()[-1])
    version = re.search(r"_([^_]+)_[^_]+\.deb$", first.name).group(1)
    again = run(str(REPO / "scripts/build-deb.sh"), str(out / "v2"),
                env={"BLACKPONY_DEB_VERSION": version + "+1"})
    assert again.returncode == 0, again.stderr
    second = Path(again.stdout.strip().splitlines()[-1])
    return first, second


@pytest.fixture
def clean_machine():
    purge()
    assert not user_exists("blackpony"), "a blackpony user exists outside the package"
    yield
    purge()


def test_lintian_finds_no_error(debs):
    deb, _ = debs
    result = run("lintian", "--tag-display-limit", "0", str(deb), timeout=600)
    print(result.stdout)
    errors = [l for l in result.stdout.splitlines() if l.startswith("E:")]
    assert not errors, "\n".join(errors)
    assert result.returncode == 0, result.stdout + result.stderr


def test_binary_is_stripped_and_small(debs):
    deb, _ = debs
    listing = run("dpkg-deb", "-c", str(deb)).stdout
    line = next(l for l in listing.splitlines() if l.endswith("./usr/bin/blackpony"))
    size = int(line.split()[2])
    print(f"/usr/bin/blackpony in the package: {size / 1e6:.1f} MB")
    extract = Path(run("mktemp", "-d").stdout.strip())
    try:
        assert run("dpkg-deb", "-x", str(deb), str(extract)).returncode == 0
        sections = run("readelf", "-S", str(extract / "usr/bin/blackpony")).stdout
        assert ".debug_info" not in sections and ".symtab" not in sections
    finally:
        shutil.rmtree(extract)


def test_install_upgrade_purge(debs, clean_machine):
    first, second = debs
    installed = run("dpkg", "-i", str(first), timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr

    # The user and group, system ones, with no login.
    user = pwd.getpwnam("blackpony")
    assert user.pw_uid < 1000 and user.pw_dir == "/var/lib/blackpony"
    assert user.pw_shell in ("/usr/sbin/nologin", "/bin/false")
    assert grp.getgrgid(user.pw_gid).gr_name == "blackpony"

    # Directories: state and spool closed to others; the config directory readable by the
    # service's group (keys go there).
    assert owner_mode(Path("/var/lib/blackpony")) == ("blackpony", "blackpony", 0o750)
    assert owner_mode(Path("/var/spool/blackpony")) == ("blackpony", "blackpony", 0o750)
    assert owner_mode(Path("/etc/blackpony")) == ("root", "blackpony", 0o750)

    # The config file: a conffile, the one from the repository, and the binary accepts it.
    config = Path("/etc/blackpony/blackpony.toml")
    assert config.read_text() == (REPO / "packaging/etc/blackpony.toml").read_text()
    conffiles = run("dpkg-query", "-W", "-f=${Conffiles}", "blackpony").stdout
    assert str(config) in conffiles
    assert run("/usr/bin/blackpony", "--config", str(config), "keygen", "--help").returncode == 0

    # Units: present, none enabled, each verified and each sandboxed to exposure <= 2.5.
    for unit in UNITS:
        assert (UNIT_DIR / unit).is_file(), unit
    verify = run("systemd-analyze", "verify", *[str(UNIT_DIR / u) for u in UNITS])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not verify.stderr.strip(), verify.stderr
    figures = {}
    for unit in SERVICES:
        sec = run("systemd-analyze", "security", "--offline=yes", str(UNIT_DIR / unit))
        found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout)
        assert found, sec.stdout + sec.stderr
        figures[unit] = float(found.group(1))
    print("systemd-analyze security --offline=yes exposure:",
          ", ".join(f"{u} {v}" for u, v in figures.items()))
    for unit, exposure in figures.items():
        assert exposure <= MAX_EXPOSURE, f"{unit}: exposure {exposure} > {MAX_EXPOSURE}"

    # Each role's unit points at its own man page, and the page is installed.
    for unit in SERVICES:
        role = unit.removeprefix("blackpony-").removesuffix(".service")
        docs = re.search(r"^Documentation=(.*)$", (UNIT_DIR / unit).read_text(), re.M)
        assert docs and f"man:blackpony-{role}(8)" in docs.group(1).split(), (unit, docs)
        assert run("man", "-w", f"blackpony-{role}").returncode == 0, role

    # Man pages and completions.
    page = run("man", "-P", "cat", "blackpony-inbound", env={"MANWIDTH": "80"})
    assert page.returncode == 0 and not page.stderr.strip(), page.stderr
    assert "--identity" in page.stdout and "BLACKPONY-INBOUND(8)" in page.stdout
    for name in ("blackpony", "blackpony-outbound", "blackpony-keygen", "blackpony-pins"):
        assert run("man", "-w", name).returncode == 0, name
    assert Path("/usr/share/bash-completion/completions/blackpony").is_file()
    assert Path("/usr/share/zsh/vendor-completions/_blackpony").is_file()
    assert Path("/usr/share/fish/vendor_completions.d/blackpony.fish").is_file()

    # The operator edits the config and the services keep state: an upgrade keeps both.
    edited = config.read_text().replace('tls_policy = "may"', 'tls_policy = "encrypt"')
    assert edited != config.read_text()
    config.write_text(edited)
    pin = Path("/var/lib/blackpony/pins/mx.example.org")
    pin.parent.mkdir()
    pin.write_text("kept\n")
    os.chown(pin.parent, user.pw_uid, user.pw_gid)
    spooled = Path("/var/spool/blackpony/kept.age")
    spooled.write_text("ciphertext\n")
    upgraded = run("dpkg", "-i", str(second), timeout=300)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "+1" in run("dpkg-query", "-W", "-f=${Version}", "blackpony").stdout
    assert config.read_text() == edited
    assert pin.read_text() == "kept\n" and spooled.read_text() == "ciphertext\n"
    assert owner_mode(Path("/var/lib/blackpony")) == ("blackpony", "blackpony", 0o750)

    # Purge: everything the package made is gone.
    purged = run("dpkg", "--purge", "blackpony", timeout=120)
    assert purged.returncode == 0, purged.stdout + purged.stderr
    for path in ("/etc/blackpony", "/var/lib/blackpony", "/var/spool/blackpony",
                 "/usr/bin/blackpony", "/usr/share/man/man8/blackpony-inbound.8.gz",
                 *[str(UNIT_DIR / u) for u in UNITS]):
        assert not Path(path).exists(), path
    assert not user_exists("blackpony")
    try:
        grp.getgrnam("blackpony")
        raise AssertionError("group blackpony left behind")
    except KeyError:
        pass


def test_check_passes_on_the_installed_config(debs, clean_machine, pf_proxy, pf_xclient):
    """`blackpony check` run as the service user on the shipped config (only the two
    addresses changed to ones this test owns): passes in front of a Postfix set up as the
    inbound recipe says, and fails with the fix in front of one that was not told about the
    PROXY header."""
    first, _ = debs
    installed = run("dpkg", "-i", str(first), timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    shipped = Path("/etc/blackpony/blackpony.toml").read_text()
    user = pwd.getpwnam("blackpony")

    def check_against(backend) -> subprocess.CompletedProcess:
        config = shipped.replace('listen = "0.0.0.0:25"', f'listen = "127.0.0.1:{free_port()}"')
        config = config.replace('backend = "127.0.0.1:10025"',
                                f'backend = "{backend.host}:{backend.port}"')
        assert config.count("127.0.0.1:") >= 2, "the shipped config's addresses moved"
        path = Path("/etc/blackpony/check-test.toml")
        path.write_text(config)
        os.chown(path, 0, user.pw_gid)
        os.chmod(path, 0o640)
        result = run("runuser", "-u", "blackpony", "--", "/usr/bin/blackpony", "--config",
                     str(path), "check", "--timeout", "5", timeout=60)
        print(result.stdout, result.stderr)
        return result

    good = check_against(pf_proxy)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "error" not in good.stdout
    assert "[outbound] state_dir = /var/lib/blackpony" in good.stdout
    broken = check_against(pf_xclient)
    assert broken.returncode == 1, broken.stdout
    assert "answers the PROXY header as an SMTP command" in broken.stdout
    assert "smtpd_upstream_proxy_protocol=haproxy" in broken.stdout


def test_check_finds_a_key_the_service_cannot_read(debs, clean_machine):
    """The README's inbound quick start as root: `blackpony keygen` writes a key only root
    can read; `blackpony check` run as root says the service user cannot read it, with the
    fix (the README's `chown blackpony:`); after it the check passes and the service user
    can read the key."""
    first, _ = debs
    installed = run("dpkg", "-i", str(first), timeout=300)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    key = Path("/etc/blackpony/host.key")
    made = run("/usr/bin/blackpony", "keygen", "--out", str(key), "--hostname", "mx.example.org")
    assert made.returncode == 0, made.stderr
    config = Path("/etc/blackpony/check-key.toml")
    config.write_text(f'[inbound]\nlisten = "127.0.0.1:{free_port()}"\n'
                      'backend = "127.0.0.1:10025"\nidentity = "proxy-v2"\n'
                      f'host_key = "{key}"\n')

    def check() -> subprocess.CompletedProcess:
        result = run("/usr/bin/blackpony", "--config", str(config), "check", "--no-probe",
                     timeout=60)
        print(result.stdout, result.stderr)
        return result

    before = check()
    assert before.returncode == 1, before.stdout
    assert "cannot be read by blackpony" in before.stdout, before.stdout
    assert f"fix: chown blackpony: {key}" in before.stdout, before.stdout
    # The README's next line.
    assert run("chown", "blackpony:", str(key)).returncode == 0
    after = check()
    assert after.returncode == 0, after.stdout
    assert run("runuser", "-u", "blackpony", "--", "head", "-c1", str(key)).returncode == 0
