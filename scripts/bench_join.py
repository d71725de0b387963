#!/usr/bin/env python3
"""How long a node takes to join a loaded cluster, and how many bytes move to it.

Starts three release `kv-node`s on loopback (fresh data dirs under --dir), writes --keys keys of
--value-bytes each (every key once), then starts a fourth node with --join and measures the time
until every partition's voters equal the map's replicas with no move left, every node hosts
exactly its share, and node 4's `kv_raft_received_bytes_total` (what replication streamed to
it). Build first: cargo build --release -p kv-node.

    python3 scripts/bench_join.py --keys 100000 --value-bytes 1024
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "kv-node")


def request(port, method, path, body=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, resp.read(), dict(resp.getheaders())
    finally:
        conn.close()


def wait(what, check, timeout=600, every=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(every)
    sys.exit(f"timed out waiting for {what}")


def start(node_id, port, data, extra, log_dir):
    log = open(os.path.join(log_dir, f"n{node_id}.log"), "w")
    args = [BIN, "--id", str(node_id), "--listen", f"127.0.0.1:{port}",
            "--data-dir", os.path.join(data, f"n{node_id}"), "--log", "warn"] + extra
    return subprocess.Popen(args, stdout=log, stderr=log)


def status(port):
    code, body, _ = request(port, "GET", "/v1/cluster")
    return json.loads(body) if code == 200 else None


def settled(port, joiner):
    s = status(port)
    if not s or s.get("moves"):
        return None
    groups = [g for g in s["groups"] if g["partition"] is not None]
    if any(sorted(g["voters"]) != sorted(g["replicas"]) or g["learners"] for g in groups):
        return None
    if not any(joiner in g["replicas"] for g in groups):
        return None
    return s


def hosted(port):
    code, body, _ = request(port, "GET", "/v1/cluster?scope=local")
    s = json.loads(body)
    return {g["partition"] for g in s["groups"] if g["partition"] is not None and g["role"] != "none"}


def received_bytes(port):
    _, body, _ = request(port, "GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        m = re.match(r'kv_raft_received_bytes_total\{([^}]*)\} (\S+)', line)
        if m and 'groups="partition"' in m.group(1):
            total += float(m.group(2))
    return int(total)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--value-bytes", type=int, default=1024)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--writers", type=int, default=32)
    ap.add_argument("--dir", default="/tmp/kv-bench-join")
    args = ap.parse_args()

    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    ports = {1: 7301, 2: 7302, 3: 7303, 4: 7304}
    initial = ",".join(f"{i}=127.0.0.1:{ports[i]}" for i in (1, 2, 3))
    common = ["--partitions", str(args.partitions)]
    procs = [start(i, ports[i], args.dir, common + ["--initial-cluster", initial], args.dir)
             for i in (1, 2, 3)]
    try:
        for i in (1, 2, 3):
            wait(f"node {i} ready", lambda i=i: request(ports[i], "GET", "/ready")[0] == 200)

        value = b"v" * args.value_bytes
        data_per_partition = {}

        def put(k):
            key = f"data/{k:08d}"
            for _ in range(20):
                try:
                    code, _, headers = request(ports[1 + k % 3], "PUT", f"/v1/kv/{key}", value)
                    if code == 200:
                        p = int(headers.get("x-kv-partition") or headers.get("X-Kv-Partition"))
                        return key, p, len(key) + len(value)
                except OSError:
                    pass
                time.sleep(0.05)
            sys.exit(f"could not write {key}")

        started = time.time()
        with concurrent.futures.ThreadPoolExecutor(args.writers) as pool:
            partition_of = {}
            for key, p, n in pool.map(put, range(args.keys), chunksize=64):
                data_per_partition[p] = data_per_partition.get(p, 0) + n
                partition_of[key] = p
        load_s = time.time() - started
        total = sum(data_per_partition.values())
        print(f"loaded {args.keys} keys x {args.value_bytes} B = {total / 2**20:.1f} MiB "
              f"in {load_s:.1f} s ({args.keys / load_s:.0f} writes/s)")

        started = time.time()
        procs.append(start(4, ports[4], args.dir, common + ["--join", f"127.0.0.1:{ports[1]}"],
                           args.dir))
        s = wait("moves settled", lambda: settled(ports[1], 4), every=0.05)
        settle_s = time.time() - started
        share = [g["partition"] for g in s["groups"]
                 if g["partition"] is not None and 4 in g["replicas"]]
        for i in (1, 2, 3, 4):
            want = {g["partition"] for g in s["groups"]
                    if g["partition"] is not None and i in g["replicas"]}
            wait(f"node {i} hosts its share", lambda i=i, want=want: hosted(ports[i]) == want)
        dropped_s = time.time() - started
        expected = sum(data_per_partition.get(p, 0) for p in share)
        got = received_bytes(ports[4])
        # Node 4's own replica (a stale read is served locally) holds the keys of its share.
        sample = [k for k in list(partition_of)[::97] if partition_of[k] in share]
        for key in sample:
            code, body, _ = request(ports[4], "GET", f"/v1/kv/{key}?consistency=stale")
            if code != 200 or body != value:
                sys.exit(f"node 4 lacks {key}: {code}")
        print(f"node 4's replica holds all {len(sample)} sampled keys of its partitions")
        print(f"join: node 4 got {len(share)}/{args.partitions} partitions; voters settled in "
              f"{settle_s:.1f} s, old copies dropped after {dropped_s:.1f} s")
        print(f"bytes streamed to node 4: {got / 2**20:.1f} MiB for a share of "
              f"{expected / 2**20:.1f} MiB of key+value data ({got / max(expected, 1):.3f}x)")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


if __name__ == "__main__":
    main()
