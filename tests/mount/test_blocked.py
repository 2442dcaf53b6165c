#!/usr/bin/env python3
"""A request that blocks in the daemon holds up no other: the lower layer is on a
FUSE filesystem (faultyfs) whose daemon is stopped (SIGSTOP), so a lookup of a lower
name waits inside ovlfs for as long as it stays stopped; meanwhile another process
creates, writes, reads, lists and stats files in the upper, and each of those
finishes. Then faultyfs continues and the blocked lookup completes with the right
answer.

Both transports: FUSE over io_uring (src/fuse/uring.*: the blocked request holds
one thread of its CPU's queue, and the queue gets another) and /dev/fuse
(io_uring=off; src/fuse/loop.*: the reading is handed on to another thread). The
blocked caller and the other process run on the same CPU, so that with io_uring
their requests go to the same queue."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import mount_ovlfs, read, start, write  # noqa: E402


def status(ovlfs: str, mnt: str) -> dict:
    return json.loads(wblib.run([ovlfs, "status", mnt, "--json"]).stdout)


def one(args, c, cl, transport: str) -> None:
    t = cl.tmpdir(f"ovlfs-blocked-{transport.strip('/').replace('/', '-')}.")
    for d in ("back", "back/lower", "slow", "u", "w", "m"):
        os.mkdir(f"{t}/{d}")
    for i in range(3):
        write(f"{t}/back/lower/f{i}", f"lower {i}")
    fs = wblib.FaultyFs(args.faultyfs, f"{t}/back", f"{t}/slow", f"{t}/faultyfs.log")
    fs.start()
    cl.push("stop faultyfs", fs.stop)
    M = f"{t}/m"
    mount_ovlfs(cl, args.ovlfs, M, [f"{t}/slow/lower"], f"{t}/u", f"{t}/w",
                "" if transport == "io_uring" else "io_uring=off")
    st = status(args.ovlfs, M)
    c.expect(st["transport"] == transport, f"{transport}: the mount's transport is "
             f"{st['transport']}")
    c.expect(read(f"{M}/f0") == b"lower 0", f"{transport}: the FUSE lower is readable")
    # A directory of the upper alone (opaque: made in a merged one), made now: what
    # happens in it later never looks at the lower.
    os.mkdir(f"{M}/new")

    # Stop the lower's daemon: a lookup of f1 now waits inside ovlfs.
    os.kill(fs.proc.pid, signal.SIGSTOP)
    cl.push("continue faultyfs", lambda: os.kill(fs.proc.pid, signal.SIGCONT))
    blocked: dict = {}

    def lookup() -> None:
        try:
            os.sched_setaffinity(0, {0})  # this thread only: the caller's CPU
            blocked["data"] = read(f"{M}/f1")
        except OSError as e:
            blocked["error"] = e

    th = threading.Thread(target=lookup, daemon=True)
    th.start()
    time.sleep(0.3)
    c.expect(th.is_alive(), f"{transport}: the lookup of a lower name waits while the "
             "lower is stopped")

    # Another caller, on the same CPU, is served meanwhile (in its own process, so
    # that a stuck one cannot stall the test beyond its timeout).
    script = (
        "import os, sys\n"
        "os.sched_setaffinity(0, {0})\n"
        "m = sys.argv[1]\n"
        "for i in range(200):\n"
        "    p = f'{m}/new/file{i}'\n"
        "    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)\n"
        "    os.write(fd, b'upper %d' % i); os.close(fd)\n"
        "    assert open(p, 'rb').read() == b'upper %d' % i\n"
        "    os.stat(p)\n"
        "assert len(os.listdir(f'{m}/new')) == 200\n"
        "print('done')\n")
    t0 = time.monotonic()
    try:
        p = wblib.run([sys.executable, "-c", script, M], check=False, timeout=30)
        outcome = f"exit {p.returncode} {p.stderr.strip()[-200:]}"
        ok = p.returncode == 0 and "done" in p.stdout
    except subprocess.TimeoutExpired:
        outcome, ok = "still not done after 30 s (killed)", False
    took = time.monotonic() - t0
    c.expect(ok, f"{transport}: 200 files created, written, read back, stat'ed and "
                 f"listed while a request is blocked: {outcome}")
    c.expect(took < 20, f"...in {took:.1f} s")
    c.expect(th.is_alive(), f"{transport}: the blocked lookup still waits")

    os.kill(fs.proc.pid, signal.SIGCONT)
    th.join(30)
    c.expect(not th.is_alive() and blocked.get("data") == b"lower 1",
             f"{transport}: once the lower continues, the blocked lookup completes: "
             f"{blocked}")
    print(f"{transport}: served 200 files in {took:.2f} s while one request was "
          "blocked", flush=True)


def main() -> int:
    args, c = start([("--faultyfs", {"required": True})])
    for transport in ("io_uring", "/dev/fuse"):
        with wblib.Cleanup() as cl:
            one(args, c, cl, transport)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
