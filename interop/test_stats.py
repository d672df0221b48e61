"""`blackpony stats` on the logs of real sessions: the test makes a known mix of inbound
sessions (swaks and smtplib through `blackpony inbound` in front of Postfix: plaintext,
STARTTLS with one and with two messages, one refused command) and outbound deliveries
(`blackpony deliver` into the fake internet: TLS, plaintext, a 450 and a 550), counts them
itself, and checks that `blackpony stats --json` over those log lines says the same; the
text output names the same figures; the `--html` page, opened in headless Chromium
(Debian's chromium), is screenshotted and the chart's bar colours are found in the image.
"""

from __future__ import annotations

import json
import re
import smtplib
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from interop.clients import swaks, token, transcript, unverified_tls_context
from interop.peers import (CLIENT_IP, REFUSED_LOCALPART, PeerError, blackpony_bin,
                           require_tool, run_deliver, wait_for)

DISCONNECT = re.compile(r"blackpony/inbound\[\d+\]: session=\S+ disconnect ")


@pytest.fixture(scope="module")
def inbound(_module_blackponies, pf_proxy):
    bp = _module_blackponies(pf_proxy, "proxy-v2", name="bp-stats")
    # The start-up probe is a session of its own: count only what comes after it.
    wait_for(lambda: DISCONNECT.search(bp.log_text()), 10, "the start-up probe's session")
    bp.offset = len(bp.log_text())
    return bp


def inbound_lines(bp, sessions: int) -> str:
    """bp's log after the probe, once `sessions` sessions have ended."""
    def done():
        text = bp.log_text()[bp.offset:]
        return text if len(DISCONNECT.findall(text)) >= sessions else None
    return wait_for(done, 30, f"{sessions} disconnect lines\n{bp.log_text()}")


def smtp_session(bp, messages: int, tls: bool):
    with smtplib.SMTP(bp.host, bp.port, local_hostname="client.test",
                      source_address=(CLIENT_IP, 0), timeout=30) as s:
        s.ehlo()
        if tls:
            assert s.starttls(context=unverified_tls_context())[0] == 220
            s.ehlo()
        for i in range(messages):
            s.sendmail("a@client.test", [f"stats-{token()}@example.test"],
                       f"Subject: {i}\r\n\r\nhello\r\n".encode())


def refused_command(bp):
    """XCLIENT from a client: refused by blackpony (refused=command), the session goes on."""
    with smtplib.SMTP(bp.host, bp.port, local_hostname="client.test",
                      source_address=(CLIENT_IP, 0), timeout=30) as s:
        s.ehlo()
        code, _ = s.docmd("XCLIENT", "ADDR=192.0.2.1")
        assert code == 550, code


def chart_colours_in_png(data: bytes) -> dict[tuple[int, int, int], int]:
    """Pixel counts per RGB colour of a PNG (8-bit RGB or RGBA, as Chromium writes them)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * bpp
    counts: dict[tuple[int, int, int], int] = {}
    prev = bytearray(stride)
    for row in range(height):
        f = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        for i in range(0, stride, bpp):
            rgb = (line[i], line[i + 1], line[i + 2])
            counts[rgb] = counts.get(rgb, 0) + 1
        prev = line
    return counts


def test_stats_match_the_sessions_made(inbound, internet, workdir, tmp_path):
    # Inbound: what the test does, and so what it expects.
    for _ in range(2):
        res = swaks(inbound.port, f"stats-{token()}@example.test")
        assert res.returncode == 0, transcript(res)
    res = swaks(inbound.port, f"stats-{token()}@example.test", "--tls")
    assert res.returncode == 0, transcript(res)
    smtp_session(inbound, messages=2, tls=True)
    refused_command(inbound)
    want_sessions = {"plaintext": 3, "tls": 2, "xpony": 0}
    want_messages = {"plaintext": 2, "tls": 3, "xpony": 0}
    in_log = tmp_path / "inbound.log"
    in_log.write_text(inbound_lines(inbound, 5))

    # Outbound: one blackpony deliver per recipient, its log lines kept.
    state = workdir / "stats-state"
    state.mkdir(exist_ok=True)
    tok = token()
    deliveries = [(f"a-{tok}@tls.test", 0), (f"b-{tok}@plain.test", 0),
                  (f"c-{tok}@plain.test", 0), (f"d-{tok}@tempfail.test", 75),
                  (f"{REFUSED_LOCALPART}-{tok}@tls.test", 69)]
    out_lines = []
    for rcpt, code in deliveries:
        res = run_deliver([*internet.outbound_args(state), "-f", "s@client.test", "--", rcpt],
                          b"Subject: stats\r\n\r\nhello\r\n")
        assert res.returncode == code, res
        out_lines += [l for l in res.stderr.decode().splitlines() if "blackpony/deliver[" in l]
    assert len(out_lines) == 5, out_lines
    out_log = tmp_path / "outbound.log"
    out_log.write_text("\n".join(out_lines) + "\n")

    res = subprocess.run([blackpony_bin(), "stats", "--json", str(in_log), str(out_log)],
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res
    got = json.loads(res.stdout)
    days = list(got["days"])
    assert len(days) == 1 and re.fullmatch(r"\d{4}-\d\d-\d\d", days[0]), got["days"]
    day = got["days"][days[0]]
    for key, want in want_sessions.items():
        assert day["inbound_sessions"][key] == want, (key, day, in_log.read_text())
    for key, want in want_messages.items():
        assert day["inbound_messages"][key] == want, (key, day)
    assert day["outbound_delivered"] == {"total": 3, "plaintext": 2, "tls": 1, "xpony": 0,
                                         "encrypted": 1, "authenticated": 0}, day
    assert got["refusals"] == {"command": 1}, got["refusals"]
    assert got["outbound_results"] == {"sent": 3, "deferred": 1, "bounced": 1}
    assert got["senders"][CLIENT_IP]["sessions"]["plaintext"] == 3
    assert got["plaintext_senders"] == [CLIENT_IP]
    assert got["plaintext_receivers"] == ["plain.test"]
    assert got["receivers"]["plain.test"]["messages"]["plaintext"] == 2

    # The same figures as text, from standard input.
    text = subprocess.run([blackpony_bin(), "stats"], input=in_log.read_bytes()
                          + out_log.read_bytes(), capture_output=True, timeout=60)
    out = text.stdout.decode()
    assert text.returncode == 0, text
    assert re.search(r"inbound sessions +total 5 +plaintext 3 +tls 2 +xpony 0 +encrypted 40\.0%",
                     out), out
    assert re.search(r"outbound delivered +total 3 +plaintext 2 +tls 1 .*encrypted 33\.3%", out)

    # The HTML page in a real browser: the chart is drawn (its bar colours are in the
    # screenshot), and the page asked for nothing from outside (no scripts, no links).
    page = tmp_path / "stats.html"
    res = subprocess.run([blackpony_bin(), "stats", "--html", str(page), str(in_log),
                          str(out_log)], capture_output=True, timeout=60)
    assert res.returncode == 0, res
    html = page.read_text()
    assert "<svg" in html and "<script" not in html and "src=" not in html
    shot = tmp_path / "shot.png"
    profile = tmp_path / "chromium-profile"
    cmd = [require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--window-size=900,700",
           f"--screenshot={shot}", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    if not shot.exists():
        raise PeerError(f"chromium made no screenshot (exit {res.returncode}):\n"
                        f"{res.stdout.decode(errors='replace')}{res.stderr.decode(errors='replace')}")
    colours = chart_colours_in_png(shot.read_bytes())
    white = colours.get((255, 255, 255), 0)
    assert white < sum(colours.values()), "blank screenshot"
    # The bars (src/stats/report.rs): inbound sessions #1b7f3b, inbound messages #58b368,
    # outbound #1f5fa8, the unencrypted rest #d9d9d9; each bar is 16 px wide and the
    # encrypted parts here are 40%, 60% and 33% of 200 px high.
    for name, rgb in (("inbound sessions", (0x1b, 0x7f, 0x3b)),
                      ("inbound messages", (0x58, 0xb3, 0x68)),
                      ("outbound", (0x1f, 0x5f, 0xa8)), ("plaintext rest", (0xd9, 0xd9, 0xd9))):
        assert colours.get(rgb, 0) > 16 * 50, (name, sorted(colours.items(),
                                                            key=lambda kv: -kv[1])[:8])


def settled_offset(proc, timeout: float = 20) -> int:
    """The length of proc's log once every session it logged has ended (fixtures' port
    probes are sessions too): what comes after is the test's own."""
    def settled():
        text = proc.log_text()
        starts = len(re.findall(r" connect client=", text))
        ends = len(re.findall(r" disconnect client=", text))
        return len(text) if starts == ends else None
    return wait_for(settled, timeout, f"the sessions in {proc.log_path} to end")


def test_stats_count_xpony_and_authenticated(pony_net, xpony_keys, workdir, tmp_path):
    """Two deliveries over XPONY to a blackpony inbound: the first is a first contact
    (level=encrypted, the key is pinned), the second authenticated by the pin; both
    sides' logs, counted by `blackpony stats`, say XPONY, and one authenticated."""
    net, client = pony_net, xpony_keys["client"]
    offset = settled_offset(net.pony)
    state = workdir / "stats-pony-state"
    state.mkdir(exist_ok=True)
    out_lines = []
    for i in range(2):
        rcpt = f"stats{i}-{token()}@pony.test"
        res = run_deliver([*net.outbound_args(state), "--host-key", str(client.path),
                           "-f", "s@client.test", "--", rcpt], b"Subject: x\r\n\r\nhi\r\n")
        assert res.returncode == 0, res
        out_lines += [l for l in res.stderr.decode().splitlines() if "blackpony/deliver[" in l]
    assert len(out_lines) == 2 and "level=authenticated" in out_lines[1], out_lines

    def two_sessions():
        text = net.pony.log_text()[offset:]
        return text if len(DISCONNECT.findall(text)) >= 2 else None
    logs = tmp_path / "pony.log"
    logs.write_text(wait_for(two_sessions, 30, "two inbound sessions") + "\n".join(out_lines))
    res = subprocess.run([blackpony_bin(), "stats", "--json", str(logs)], capture_output=True,
                         timeout=60)
    assert res.returncode == 0, res
    [day] = json.loads(res.stdout)["days"].values()
    assert day["inbound_sessions"]["xpony"] == 2 and day["inbound_sessions"]["total"] == 2, day
    assert day["inbound_messages"]["xpony"] == 2, day
    assert day["outbound_delivered"] == {"total": 2, "plaintext": 0, "tls": 0, "xpony": 2,
                                         "encrypted": 2, "authenticated": 1}, day
