#!/usr/bin/env python3
"""Memory per idle keep-alive connection of a running proxy.

Usage: idle_conns.py PID PORT HOST [N]

Opens N client connections (default 10000) to 127.0.0.1:PORT, sends one
keep-alive GET with Host: HOST on each, reads each whole response (every one
must be 200), then holds them all open and idle. IDLE_PROTO=h2 speaks
HTTP/2 with prior knowledge instead (one GET on stream 1; the connection is
then read on, PINGs answered as a browser would, so a server's keep-alive
ping does not close it). Prints one line:

    conns=N rss_start_kib=… rss_half_kib=… rss_all_kib=… per_conn_bytes=… failed=… step_bytes=…

RSS is the proxy's VmRSS from /proc/PID/status. The connections are opened
in IDLE_STEPS equal parts (default 4), each left idle IDLE_SETTLE seconds
(default 10) before RSS is read: per_conn_bytes is the RSS growth over the
last part divided by its connections; step_bytes the same for every part.
The earlier parts absorb what is not per client connection: a proxy's
upstream pool filling (each batch of 500 requests in flight opens upstream
connections that stay pooled) and RSS moving on its own after start.
rss_half_kib is the reading before the last part. `failed` counts
connections that did not get a 200 (must be 0).
"""

import asyncio
import os
import resource
import sys


# Seconds the connections stay idle before RSS is read: gatehouse parks an
# idle HTTP/1 connection after 1 s (hyper's buffers freed) and mimalloc
# returns freed pages after its 1 s purge delay, at its next collection; 10 s
# of idleness measures the steady state, not the moment after the requests.
SETTLE = float(os.environ.get("IDLE_SETTLE", "10"))


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


PROTO = os.environ.get("IDLE_PROTO", "h1")


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


async def read_frame(r) -> tuple:
    head = await r.readexactly(9)
    length = int.from_bytes(head[:3], "big")
    payload = await r.readexactly(length) if length else b""
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload


def acknowledge(w, kind: int, flags: int, payload: bytes) -> None:
    """Acknowledge a SETTINGS or PING frame (not itself an acknowledgement)."""
    if kind in (4, 6) and not flags & 1:
        w.write(frame(kind, 1, 0, payload if kind == 6 else b""))


async def answer_pings(r, w) -> None:
    """Read frames until the connection ends, acknowledging SETTINGS and PING."""
    try:
        while True:
            kind, flags, _, payload = await read_frame(r)
            acknowledge(w, kind, flags, payload)
    except (OSError, asyncio.IncompleteReadError):
        pass


async def one_h2(port: int, host: str, held: list) -> bool:
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    # :method GET, :scheme http, :path / (static table), :authority literal.
    name = host.encode()
    block = bytes([0x82, 0x86, 0x84, 0x41, len(name)]) + name
    w.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    await w.drain()
    status = None
    try:
        while True:
            kind, flags, stream, payload = await asyncio.wait_for(read_frame(r), 30)
            acknowledge(w, kind, flags, payload)
            if kind == 7:
                break
            elif stream == 1 and kind == 1 and status is None:
                # :status 200 is static-table entry 8 on every encoder.
                status = payload[:1] == b"\x88"
            if stream == 1 and kind in (0, 1) and flags & 1:
                break
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        w.close()
        return False
    held.append(w)
    held.append(asyncio.ensure_future(answer_pings(r, w)))
    return bool(status)


async def one(port: int, host: str, held: list) -> bool:
    if PROTO == "h2":
        return await one_h2(port, host, held)
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await w.drain()
    try:
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 30)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError):
        w.close()
        return False
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await r.readexactly(length)
    held.append(w)
    return head.startswith(b"HTTP/1.1 200")


async def main() -> None:
    pid, port, host = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1024)), hard))
    await asyncio.sleep(0.5)
    start_rss = rss_kib(pid)
    held: list = []

    async def open_idle(count: int) -> int:
        ok = 0
        # In batches, so the listen backlog never overflows.
        for start in range(0, count, 500):
            batch = [one(port, host, held) for _ in range(min(500, count - start))]
            ok += sum(await asyncio.gather(*batch))
        await asyncio.sleep(SETTLE)
        return ok

    # In IDLE_STEPS equal parts (default 4), RSS read after each has idled: the
    # growth over the last part is what it costs. A process's RSS also moves
    # on its own just after start (a 10k-route table's compile garbage being
    # returned), which a plain before/after would count; the earlier parts
    # absorb that. Every step's growth is printed (step_bytes) to show it.
    steps = max(2, int(os.environ.get("IDLE_STEPS", "4")))
    readings = [start_rss]
    ok = opened = 0
    for i in range(steps):
        count = n * (i + 1) // steps - opened
        ok += await open_idle(count)
        opened += count
        readings.append(rss_kib(pid))
    last = n - n * (steps - 1) // steps
    before, after = readings[-2], readings[-1]
    per = (after - before) * 1024 / max(last, 1)
    step_bytes = ",".join(
        f"{(readings[i + 1] - readings[i]) * 1024 * steps / n:.0f}" for i in range(steps)
    )
    print(
        f"conns={ok} rss_start_kib={start_rss} rss_half_kib={before} rss_all_kib={after}"
        f" per_conn_bytes={per:.0f} failed={n - ok} step_bytes={step_bytes}"
    )
    for w in held:
        if isinstance(w, asyncio.Future):
            w.cancel()
        else:
            w.close()


asyncio.run(main())
