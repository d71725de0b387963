"""The measurements of scripts/bench_watch.sh, against a running 3-node cluster on loopback
(plain HTTP/1.1 on raw asyncio streams: no dependency beyond Python 3)."""

import argparse
import asyncio
import json
import os
import time

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def open_watch(port, prefix):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/watch?prefix={prefix} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"watch refused: {head[:80]!r}")
    return reader, writer


async def events(reader):
    """Yield the JSON data of each SSE message (chunked transfer encoding undone)."""
    buf = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.strip(), 16)
        if size == 0:
            return
        chunk = await reader.readexactly(size + 2)
        buf += chunk[:-2]
        while b"\n\n" in buf:
            message, buf = buf.split(b"\n\n", 1)
            for line in message.split(b"\n"):
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])


async def measure_window(pid, window):
    start = cpu_seconds(pid)
    await asyncio.sleep(window)
    return 100 * (cpu_seconds(pid) - start) / window


async def idle_cost(args):
    port = args.base_port
    base_rss = rss_mib(args.pid)
    base_cpu = await measure_window(args.pid, args.window)
    print(f"no watch:          RSS {base_rss:7.1f} MiB, CPU {base_cpu:.2f}% of a core over {args.window:.0f} s")
    watches = []
    for i in range(args.idle):
        watches.append(await open_watch(port, f"idle{i % 10}/"))
    await asyncio.sleep(3)
    rss = rss_mib(args.pid)
    cpu = await measure_window(args.pid, args.window)
    print(
        f"{args.idle} idle watches: RSS {rss:7.1f} MiB (+{rss - base_rss:.1f}, "
        f"{1024 * (rss - base_rss) / args.idle:.1f} KiB each), CPU {cpu:.2f}% of a core over {args.window:.0f} s"
    )
    return watches


def open_watches(port):
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith("kv_watches "):
            return float(line.split()[1])
    return 0.0


async def put_loop(port, keys, rate, seconds, sent, acked):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    interval = 1.0 / rate
    deadline = time.monotonic() + seconds
    next_at = time.monotonic()
    i = 0
    while time.monotonic() < deadline:
        key = f"{keys}{i}"
        i += 1
        body = str(time.time_ns()).encode()
        sent[key] = time.time_ns()
        writer.write(
            f"PUT /v1/kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if head.startswith(b"HTTP/1.1 200"):
            acked[key] = time.time_ns()
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    writer.close()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


async def delivery(args):
    reader, writer = await open_watch(args.base_port, "lat/")
    arrived = {}

    async def watch():
        async for event in events(reader):
            if event.get("type") == "put":
                arrived[event["key"]] = time.time_ns()

    watcher = asyncio.create_task(watch())
    sent, acked = {}, {}
    # 16 connections spread over the three nodes, RATE writes/s in all.
    loops = [
        put_loop(args.base_port + n % 3, f"lat/{n}-", args.rate / 16, args.seconds, sent, acked)
        for n in range(16)
    ]
    await asyncio.gather(*loops)
    await asyncio.sleep(2)
    watcher.cancel()
    writer.close()
    from_send = [(arrived[k] - sent[k]) / 1e6 for k in acked if k in arrived]
    from_ack = [max(0, arrived[k] - acked[k]) / 1e6 for k in acked if k in arrived]
    missing = len([k for k in acked if k not in arrived])
    rate = len(acked) / args.seconds
    print(
        f"delivery at {rate:.0f} acknowledged writes/s over {args.seconds:.0f} s, {len(from_send)} events, "
        f"{missing} missing, {open_watches(args.base_port) - 1:.0f} other watches open:"
    )
    print(f"  from send: p50 {pct(from_send, 50):.1f} ms, p99 {pct(from_send, 99):.1f} ms")
    print(f"  from ack:  p50 {pct(from_ack, 50):.1f} ms, p99 {pct(from_ack, 99):.1f} ms")


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--window", type=float, default=20)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    idle = await idle_cost(args)
    # The idle watches stay open (on other prefixes) while one watcher is measured.
    await delivery(args)
    for _, writer in idle:
        writer.close()


asyncio.run(main())
