#!/usr/bin/env python3
"""What one small durable append costs on this disk: a 200-byte pwrite plus fdatasync, in a
file that grows with each write (every fsync also commits the new size to the file system's
journal) and in one allocated whole beforehand (posix_fallocate; what the Raft log's segments
are, see kv-storage's `wal` module). Prints wall time and system-wide busy CPU per fsync
(from /proc/stat, so the journal thread's work counts too).

    python3 scripts/fsync_cost.py [DIR]      # DIR defaults to the current directory
"""
import os
import sys
import time

N = 4000
RECORD = b"x" * 200


def busy_ticks():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def run(preallocated, path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if preallocated:
            os.posix_fallocate(fd, 0, N * len(RECORD) + 4096)
            os.fsync(fd)
        busy, start = busy_ticks(), time.monotonic()
        for i in range(N):
            os.pwrite(fd, RECORD, i * len(RECORD))
            os.fdatasync(fd)
        wall = time.monotonic() - start
        cpu = (busy_ticks() - busy) / os.sysconf("SC_CLK_TCK")
    finally:
        os.close(fd)
        os.unlink(path)
    kind = "preallocated" if preallocated else "growing     "
    print(f"{kind}  {wall / N * 1e6:6.0f} us per fsync  {cpu / N * 1e6:5.0f} us busy CPU")


def main():
    path = os.path.join(sys.argv[1] if len(sys.argv) > 1 else ".", "fsync_cost.tmp")
    for _ in range(3):
        run(False, path)
        run(True, path)


if __name__ == "__main__":
    main()
