#!/usr/bin/env python3
"""Crash safety: the daemon is killed (SIGKILL) while clients copy up files and
rename files and lower directories; after a remount every file is wholly old or
wholly new, at exactly one of its names, and nothing half-made is visible.
--rootless: all of it as a normal user in a user namespace (rootless.py)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import rootless  # noqa: E402
from fslib import (Checker, foreground_daemon, mount_ovlfs, read,  # noqa: E402
                   rerun_as_user, start, write)

NFILES, NDIRS, FILE_SIZE = 24, 8, 4 << 20

WORKER = r"""
import os, sys, random
mnt, seed = sys.argv[1], int(sys.argv[2])
rnd = random.Random(seed)
ops = []
for i in range(%(nfiles)d):
    ops += [("open", i), ("chmod", i), ("rename", i), ("xattr", i)]
for i in range(%(ndirs)d):
    ops.append(("rdir", i))
rnd.shuffle(ops)
print("ready", flush=True)
for op, i in ops:
    try:
        if op == "open":
            os.close(os.open(f"{mnt}/f{i}", os.O_WRONLY))
        elif op == "chmod":
            os.chmod(f"{mnt}/f{i}", 0o640)
        elif op == "rename":
            os.rename(f"{mnt}/f{i}", f"{mnt}/g{i}")
        elif op == "xattr":
            os.setxattr(f"{mnt}/f{i}", "user.t", b"v")
        else:
            os.rename(f"{mnt}/d{i}", f"{mnt}/e{i}")
    except OSError:
        pass
"""


def content(i: int) -> bytes:
    return random.Random(i).randbytes(FILE_SIZE)


def one_round(c: Checker, cl: wblib.Cleanup, ovlfs: str, t: str, rnd: random.Random,
              delay: float) -> None:
    upper, work, mnt = f"{t}/u", f"{t}/w", f"{t}/m"
    for d in (upper, work):
        shutil.rmtree(d, ignore_errors=True)
        os.mkdir(d)
    lower = f"{t}/l"
    daemon = foreground_daemon(cl, ovlfs, mnt, lower, upper, work)
    worker = subprocess.Popen([sys.executable, "-c",
                               WORKER % {"nfiles": NFILES, "ndirs": NDIRS}, mnt,
                               str(rnd.randrange(1 << 30))], stdout=subprocess.PIPE, text=True)
    worker.stdout.readline()  # "ready": the operations start now
    time.sleep(delay)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    worker.wait(timeout=60)
    wblib.umount(mnt)

    mount_ovlfs(cl, ovlfs, mnt, [lower], upper, work)
    names = sorted(os.listdir(mnt))
    for i in range(NFILES):
        where = [n for n in (f"f{i}", f"g{i}") if n in names]
        c.expect(len(where) == 1, f"delay {delay}: file {i} at exactly one name: {where}")
        if where:
            c.expect(read(f"{mnt}/{where[0]}") == content(i),
                     f"delay {delay}: {where[0]} holds its whole content")
    for i in range(NDIRS):
        where = [n for n in (f"d{i}", f"e{i}") if n in names]
        c.expect(len(where) == 1, f"delay {delay}: dir {i} at exactly one name: {where}")
        if where:
            got = sorted(os.listdir(f"{mnt}/{where[0]}"))
            c.expect(got == ["a", "b", "c"], f"delay {delay}: {where[0]} lists {got}")
            for n in got:
                c.expect(read(f"{mnt}/{where[0]}/{n}") == f"{i}{n}".encode(),
                         f"delay {delay}: {where[0]}/{n} content")
    extra = [n for n in names if n[0] not in "fgde"]
    c.expect(not extra, f"delay {delay}: nothing else visible: {extra}")
    c.expect(os.listdir(f"{work}/work") == [], f"delay {delay}: work dir cleaned at mount: "
             f"{os.listdir(work + '/work')}")
    copied = sum(1 for n in os.listdir(upper) if n[0] in "fg")
    print(f"delay {delay:.3f}s: {copied} files in the upper after the crash, "
          f"{len(names)} names visible, all whole", flush=True)
    wblib.umount(mnt)


def main() -> int:
    args, c = start([("--rounds", {"type": int, "default": 6}),
                     ("--seed", {"type": int, "default": int(time.time())})], rootless=True)
    if args.rootless and not rootless.in_user_part():
        # The whole test, as a normal user in a user namespace (the same seed).
        if "--seed" not in sys.argv:
            sys.argv += ["--seed", str(args.seed)]
        with wblib.Cleanup() as cl:
            return rerun_as_user(cl, __file__)
    if rootless.in_user_part():
        print(rootless.describe(), flush=True)
    print(f"seed {args.seed} (replay with --seed {args.seed})", flush=True)
    rnd = random.Random(args.seed)
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-crash.")
        os.mkdir(f"{t}/l")
        os.mkdir(f"{t}/m")
        for i in range(NFILES):
            write(f"{t}/l/f{i}", content(i))
        for i in range(NDIRS):
            os.mkdir(f"{t}/l/d{i}")
            for n in "abc":
                write(f"{t}/l/d{i}/{n}", f"{i}{n}")
        for r in range(args.rounds):
            one_round(c, cl, args.ovlfs, t, rnd, r * 0.025 + rnd.random() * 0.02)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
