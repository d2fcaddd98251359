#!/usr/bin/env python3
"""Memory per idle keep-alive connection of a running proxy.

Usage: idle_conns.py PID PORT HOST [N]

Opens N client connections (default 10000) to 127.0.0.1:PORT, sends one
keep-alive GET with Host: HOST on each, reads each whole response (every one
must be 200), then holds them all open and idle. Prints one line:

    conns=N rss_start_kib=… rss_half_kib=… rss_all_kib=… per_conn_bytes=… failed=…

RSS is the proxy's VmRSS from /proc/PID/status. The connections are opened
in two halves, each left idle IDLE_SETTLE seconds (default 10) before RSS is
read: per_conn_bytes is the RSS growth from the first reading to the second
over the second half's connections (robust to RSS changes of the process
itself just after its start). `failed` counts
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


async def one(port: int, host: str, held: list) -> bool:
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

    # Two halves, RSS after each has idled: the difference is what the
    # second half costs. A process's RSS also moves on its own just after
    # start (a 10k-route table's compile garbage being returned), which a
    # plain before/after would count; the first half absorbs that.
    first = await open_idle(n // 2)
    before = rss_kib(pid)
    second = await open_idle(n - n // 2)
    after = rss_kib(pid)
    ok = first + second
    per = (after - before) * 1024 / max(second, 1)
    print(
        f"conns={ok} rss_start_kib={start_rss} rss_half_kib={before} rss_all_kib={after}"
        f" per_conn_bytes={per:.0f} failed={n - ok}"
    )
    for w in held:
        w.close()


asyncio.run(main())
