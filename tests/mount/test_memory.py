#!/usr/bin/env python3
"""Memory: what the daemon no longer needs goes back to the system.

A lower layer of 100,000 files in 100 directories. Each round lists every
directory and stats every file through the mount (the daemon then holds a node
per file), then makes the kernel forget every node (echo 2 >
/proc/sys/vm/drop_caches: the kernel drops the unused entries and inodes and sends
FORGETs). The daemon's resident memory (VmRSS) is read at the mount, with the
nodes cached and after they were forgotten:

- after forgetting, RSS <= 2 x RSS at the mount + 6 MiB (glibc keeps freed memory
  in its heaps; the daemon shares few arenas among its threads and calls
  malloc_trim after a bulk of FORGETs);
- flat over the rounds: no round ends (or peaks) more than 3 MiB above the first
  (plus 256 KiB for each serving thread started since).

What stays after forgetting (about 2-5 MiB over the mount's 3.8 MiB here): the
node table's bucket array at its peak size (1.3 MiB for 100,000 nodes), heap
pages that still hold a live allocation, and the serving threads' stacks.

Both transports: FUSE over io_uring (the default; 4 rounds) and /dev/fuse
(io_uring=off; 2 rounds). It prints the daemon's memory per cached node."""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start  # noqa: E402

DIRS, PER_DIR = 100, 1000
MIB = 1 << 20
SLACK = 6 * MIB  # the stated bound: 2 x the mount's RSS + this
FLAT = 3 * MIB  # a later round may end (or peak) this much above the first
THREAD = 256 << 10  # a serving thread's own memory, at most (flatness allows for new ones)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB"


def walk(mnt: str) -> int:
    n = 0
    for d in range(DIRS):
        with os.scandir(f"{mnt}/d{d}") as it:
            for e in it:
                e.stat(follow_symlinks=False)
                n += 1
    return n


def settle(pid: int, timeout: float = 10) -> int:
    """The lowest RSS seen until it has not fallen for 2.5 s (the daemon trims at
    most once a second, after FORGETs pause), or at the timeout."""
    deadline = time.monotonic() + timeout
    best, since = rss(pid), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 2.5:
        time.sleep(0.05)
        now = rss(pid)
        if now < best:
            best, since = now, time.monotonic()
    return best


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def one(args, c, cl, t: str, transport: str, rounds: int) -> None:
    lower = f"{t}/l"
    t = f"{t}/{'uring' if transport == 'io_uring' else 'devfuse'}"
    os.mkdir(t)
    upper, work, mnt = f"{t}/u", f"{t}/w", f"{t}/m"
    for d in (upper, work, mnt):
        os.mkdir(d)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if transport != "io_uring":
        opts += ",io_uring=off"
    wblib.run([args.ovlfs, "-o", opts, mnt])
    cl.push(f"umount {mnt}", lambda: wblib.umount(mnt))
    st = json.loads(wblib.run([args.ovlfs, "status", mnt, "--json"]).stdout)
    pid = st["pid"]
    c.expect(st["transport"] == transport, f"{transport}: the transport is {st['transport']}")
    time.sleep(0.2)
    start_rss = rss(pid)
    bound = 2 * start_rss + SLACK
    print(f"{transport}: RSS at the mount {mib(start_rss)}; bound after forgetting "
          f"{mib(bound)}", flush=True)
    cached, after, nthreads = [], [], []
    t0 = time.monotonic()
    for r in range(rounds):
        nodes = walk(mnt) + DIRS
        cached.append(rss(pid))
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2")
        after.append(settle(pid))
        nthreads.append(threads(pid))
        print(f"{transport}: round {r}: {nodes} nodes cached {mib(cached[-1])}, after the "
              f"kernel forgot them {mib(after[-1])} ({nthreads[-1]} threads)", flush=True)
        if r == 0:
            per_node = (cached[0] - start_rss) / nodes
            print(f"{transport}: memory per cached node: {per_node:.0f} bytes "
                  f"(RSS {mib(cached[0] - start_rss)} over {nodes} nodes)", flush=True)
    took = time.monotonic() - t0
    c.expect(max(after) <= bound, f"{transport}: after the kernel forgot every node, RSS "
             f"{', '.join(mib(a) for a in after)} <= 2 x {mib(start_rss)} + {mib(SLACK)}")
    # Flat: a later round may hold more serving threads (a queue grows under load,
    # up to its limit), each with its stack and request buffer: live state, not
    # memory kept after use, allowed for at THREAD each.
    def allowed(r: int) -> int:
        return FLAT + THREAD * max(0, nthreads[r] - nthreads[0])
    flat = all(after[r] <= after[0] + allowed(r) and cached[r] <= cached[0] * 1.1 + allowed(r)
               for r in range(1, rounds))
    c.expect(flat, f"{transport}: flat over {rounds} rounds ({took:.1f} s): cached "
             f"{', '.join(mib(x) for x in cached)}; forgotten "
             f"{', '.join(mib(x) for x in after)}; threads {nthreads}")


def main() -> int:
    args, c = start([("--rounds", {"type": int, "default": 4})])
    with wblib.Cleanup() as cl:
        # On a tmpfs of the test's own: 100,000 files are made in a second or two
        # whatever the disk is doing, and go with one unmount.
        t = cl.tmpdir("ovlfs-memory.")
        wblib.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0755", "ovlfs-memory", t])
        cl.push(f"umount {t}", lambda: wblib.umount(t))
        lower = f"{t}/l"
        os.mkdir(lower)
        t0 = time.monotonic()
        for d in range(DIRS):
            os.mkdir(f"{lower}/d{d}")
            for i in range(PER_DIR):
                os.close(os.open(f"{lower}/d{d}/f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
        print(f"made {DIRS * PER_DIR} lower files in {time.monotonic() - t0:.1f} s", flush=True)
        for transport, rounds in (("io_uring", args.rounds), ("/dev/fuse", max(2, args.rounds // 2))):
            with wblib.Cleanup() as cl2:
                one(args, c, cl2, t, transport, rounds)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
