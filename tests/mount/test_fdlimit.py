#!/usr/bin/env python3
"""Many more files than fds: every node the kernel holds keeps fds of its real
objects once it is used (a lower file only looked up holds none), so a daemon limited to 4,096 open files must still serve 20,000 lower
and 20,000 new files (created, looked up, read, listed) without EMFILE: past a
quarter of its limit it has the kernel drop cached entries of files, and the
nodes close their fds. The files come in batches of 1,000 new ones, each started
once the daemon is back under half its limit: the reclaim is asynchronous, and a
burst of fresh lookups faster than the kernel forgets can still run out (the
README says so)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import overlay_dirs, read, start, write  # noqa: E402

N = 20000
LIMIT = 4096


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-fdlimit.")
        L, U, W, M = overlay_dirs(t)
        for i in range(N):
            write(f"{L}/lower{i}", str(i))
        wblib.run(["prlimit", f"--nofile={LIMIT}:{LIMIT}", args.ovlfs, "-o",
                   f"lowerdir={L},upperdir={U},workdir={W}", M])
        cl.push(f"umount {M}", lambda: wblib.umount(M))
        errors: dict[str, int] = {}
        pid = int(subprocess.run(["pgrep", "-o", "-f", f"lowerdir={t}/l"], capture_output=True,
                                 text=True, check=True).stdout.split()[0])

        def settle(i: int) -> None:
            """Every 1,000 files: wait (5 s at most) until the daemon is under half its fds."""
            if i % 1000:
                return
            deadline = time.monotonic() + 5
            while len(os.listdir(f"/proc/{pid}/fd")) > LIMIT // 2 and time.monotonic() < deadline:
                time.sleep(0.01)

        def attempt(what, fn, *a):
            try:
                return fn(*a)
            except OSError as e:
                errors[f"{what}: {os.strerror(e.errno)}"] = errors.get(
                    f"{what}: {os.strerror(e.errno)}", 0) + 1
                return None

        fds_before = len(os.listdir(f"/proc/{pid}/fd"))
        for i in range(N):
            settle(i)
            attempt("stat lower", os.stat, f"{M}/lower{i}")
        fds_after = len(os.listdir(f"/proc/{pid}/fd"))
        # A lower file only looked up is stat'ed, not opened: no fd per file.
        c.expect(fds_after <= fds_before + 64,
                 f"stat of {N} lower files leaves the daemon's fds as they were: "
                 f"{fds_before} before, {fds_after} after")
        for i in range(N):
            settle(i)
            attempt("create", write, f"{M}/new{i}", str(i))
        ok = 0
        for name in ("lower", "new"):
            for i in range(N):
                settle(i)
                ok += attempt("read", read, f"{M}/{name}{i}") == str(i).encode()
        peak = len(os.listdir(f"/proc/{pid}/fd"))
        names = attempt("listdir", os.listdir, M) or []
        c.expect(not errors, f"no operation failed: {errors}")
        c.expect(ok == 2 * N, f"all {2 * N} files read back: {ok}")
        c.expect(len(names) == 2 * N, f"the directory lists {2 * N} names: {len(names)}")
        print(f"{2 * N} files under a {LIMIT}-fd daemon: {ok} read back, "
              f"{len(errors)} kinds of failure, {peak} fds open at the end", flush=True)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
