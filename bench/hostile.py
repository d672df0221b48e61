#!/usr/bin/env python3
"""Attackers and the normal client for bench/hostile.sh (asyncio, stdlib only).

  hostile.py trickle HOST PORT N ADDRS EVERY SECONDS
      N connections spread over ADDRS source addresses 127.1.k.1 (one /24
      each), each sending "EHLO trickle.test" one byte every EVERY seconds
      and connecting again when cut, for SECONDS. Prints a JSON summary.
  hostile.py burst HOST PORT N WAIT
      N connections at once from 127.3.x.y (200 /24s); each waits up to WAIT seconds
      for a greeting, then QUIT. Prints how many were greeted, refused (4xx
      greeting) or got nothing.
  hostile.py junk HOST PORT N SECONDS
      N connections from 127.2.k.1 sending random bytes as fast as the
      server takes them, reconnecting when cut, for SECONDS.
  hostile.py client HOST PORT MSGS [TIMEOUT [BUDGET]]
      The normal client, from 127.0.0.1: MSGS messages one after another,
      one connection each (greeting, EHLO, MAIL, RCPT, DATA, 1 KiB, QUIT),
      each within TIMEOUT seconds (5), all within BUDGET seconds (60; the
      rest are not attempted and count as not served). Prints served (250
      after the dot), attempted, messages per second over the run, latency
      percentiles in ms and the errors by kind.

Every loop is bounded by its SECONDS/MSGS/TIMEOUT.
"""
import asyncio
import json
import os
import random
import signal
import socket
import sys
import time


async def run_all(coros):
    """Runs the attackers until they end or SIGINT/SIGTERM stops them."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: [t.cancel() for t in tasks])
    await asyncio.gather(*tasks, return_exceptions=True)


async def open_from(host, port, src):
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((src, 0))
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (host, port))
    return await asyncio.open_connection(sock=sock)


async def reply(r):
    """One whole reply; its code, or None at EOF."""
    while True:
        line = await r.readline()
        if not line:
            return None
        if line[3:4] != b"-":
            return int(line[:3]) if line[:3].isdigit() else None


async def trickle(host, port, n, addrs, every, seconds):
    end = time.monotonic() + seconds
    stats = {"connects": 0, "cut": 0, "failed": 0}
    text = b"EHLO trickle.test\r\n"

    async def one(i):
        src = f"127.1.{i % addrs}.1"
        while time.monotonic() < end:
            try:
                r, w = await asyncio.wait_for(open_from(host, port, src), 10)
            except Exception:
                stats["failed"] += 1
                await asyncio.sleep(1)
                continue
            stats["connects"] += 1
            try:
                k = 0
                while time.monotonic() < end:
                    w.write(text[k % len(text):k % len(text) + 1])
                    await w.drain()
                    k += 1
                    # Read whatever came (greeting, a 421) without waiting.
                    try:
                        data = await asyncio.wait_for(r.read(4096), every)
                        if not data:
                            stats["cut"] += 1
                            break
                    except asyncio.TimeoutError:
                        pass
            except Exception:
                stats["cut"] += 1
            finally:
                w.close()
            await asyncio.sleep(0.5)

    await run_all([one(i) for i in range(n)])
    print(json.dumps(stats))


async def burst(host, port, n, wait):
    stats = {"greeted": 0, "refused": 0, "nothing": 0}

    async def one(i):
        src = f"127.3.{i % 200}.{i // 200 + 1}"
        try:
            r, w = await asyncio.wait_for(open_from(host, port, src), wait)
        except Exception:
            stats["nothing"] += 1
            return
        try:
            code = await asyncio.wait_for(reply(r), wait)
            if code == 220:
                stats["greeted"] += 1
                w.write(b"QUIT\r\n")
                await w.drain()
                await asyncio.wait_for(reply(r), wait)
            elif code is not None:
                stats["refused"] += 1
            else:
                stats["nothing"] += 1
        except Exception:
            stats["nothing"] += 1
        finally:
            w.close()

    await run_all([one(i) for i in range(n)])
    print(json.dumps(stats))


async def junk(host, port, n, seconds):
    end = time.monotonic() + seconds
    stats = {"connects": 0, "bytes": 0}
    noise = os.urandom(1 << 16)

    async def one(i):
        src = f"127.2.{i}.1"
        while time.monotonic() < end:
            try:
                r, w = await asyncio.wait_for(open_from(host, port, src), 5)
            except Exception:
                await asyncio.sleep(0.5)
                continue
            stats["connects"] += 1
            try:
                while time.monotonic() < end:
                    off = random.randrange(0, len(noise) - 4096)
                    w.write(noise[off:off + 4096])
                    await asyncio.wait_for(w.drain(), 5)
                    stats["bytes"] += 4096
                    # Swallow replies so the server is not blocked by us.
                    try:
                        await asyncio.wait_for(r.read(65536), 0.001)
                    except asyncio.TimeoutError:
                        pass
            except Exception:
                pass
            finally:
                w.close()

    await run_all([one(i) for i in range(n)])
    print(json.dumps(stats))


async def client(host, port, msgs, timeout, budget):
    body = (b"x" * 78 + b"\r\n") * 13
    lat = []
    served = 0
    attempted = 0
    errors = {}
    started = time.monotonic()

    async def message():
        r, w = await open_from(host, port, "127.0.0.1")
        try:
            steps = [
                (None, 220),
                (b"EHLO client.bench.test\r\n", 250),
                (b"MAIL FROM:<a@client.bench.test>\r\n", 250),
                (b"RCPT TO:<b@bench.test>\r\n", 250),
                (b"DATA\r\n", 354),
                (b"Subject: bench\r\n\r\n" + body + b".\r\n", 250),
            ]
            for send, want in steps:
                if send:
                    w.write(send)
                    await w.drain()
                code = await reply(r)
                if code != want:
                    return f"{code}"
            w.write(b"QUIT\r\n")
            await w.drain()
            await reply(r)
            return None
        finally:
            w.close()

    for _ in range(msgs):
        t0 = time.monotonic()
        if t0 - started > budget:
            break
        attempted += 1
        try:
            err = await asyncio.wait_for(message(), timeout)
        except asyncio.TimeoutError:
            err = "timeout"
        except Exception as e:
            err = type(e).__name__
        if err is None:
            served += 1
            lat.append((time.monotonic() - t0) * 1000)
        else:
            errors[err] = errors.get(err, 0) + 1
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 1) if lat else None

    elapsed = time.monotonic() - started
    print(json.dumps({"served": served, "of": msgs, "attempted": attempted,
                      "msg_s": round(served / elapsed, 1) if elapsed > 0 else None,
                      "p50_ms": pct(0.5),
                      "p99_ms": pct(0.99), "max_ms": round(lat[-1], 1) if lat else None,
                      "errors": errors}))


def main():
    a = sys.argv[1:]
    if not a:
        sys.exit(__doc__)
    cmd, host, port = a[0], a[1], int(a[2])
    if cmd == "trickle":
        asyncio.run(trickle(host, port, int(a[3]), int(a[4]), float(a[5]), float(a[6])))
    elif cmd == "burst":
        asyncio.run(burst(host, port, int(a[3]), float(a[4])))
    elif cmd == "junk":
        asyncio.run(junk(host, port, int(a[3]), float(a[4])))
    elif cmd == "client":
        asyncio.run(client(host, port, int(a[3]), float(a[4]) if len(a) > 4 else 5,
                           float(a[5]) if len(a) > 5 else 60))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
