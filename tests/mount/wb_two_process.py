#!/usr/bin/env python3
"""mount.wb.two_process: an upper error that one ovlfs process finds is known at once
to every other ovlfs process on the same upper filesystem (the shared record in
/dev/shm), and reported by it as SPEC 2 says. Real errors, EIO rig:

  1. P1 (volatile) writes its file; P1's writeback thread finds EIO. P2 (non-volatile,
     another daemon, another upper directory, never touched the failing file) shows
     it in its status and reports it: syncfs once, fsync of its own files nothing.
  2. P2 writes its own file; a non-volatile fsync in P2 finds ENOSPC (the rig fails
     that file's blocks with ENOSPC). P1's fsync now reports ENOSPC, the latest.
  3. P3, mounted afterwards, counts both in its status and reports neither.

Usage: wb_two_process.py --ovlfs PATH --faultyfs PATH   (root; 77 = skip)
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import wbovl  # noqa: E402

MiB = 1 << 20


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--faultyfs", required=True)
    args = ap.parse_args()
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    checks = wblib.Checks()
    with wblib.Cleanup() as cleanup:
        with checks.scenario("an error found by one ovlfs process, seen by another"):
            run(cleanup, checks, args)
    return checks.summary()


def run(cleanup: wblib.Cleanup, checks: wblib.Checks, args) -> None:
    ovlfs = os.path.realpath(args.ovlfs)
    tmp = cleanup.tmpdir("ovlfs-wb2p.")
    upper = wblib.eio_upper(cleanup, tmp, faultyfs=os.path.realpath(args.faultyfs))
    U = upper.mnt
    lower = os.path.join(tmp, "lower")
    os.makedirs(lower)
    for n in ("1", "2", "3"):
        os.makedirs(os.path.join(U, f"up{n}"))
        os.makedirs(os.path.join(U, f"wk{n}"))
    with open(os.path.join(U, "up2", "mine"), "w") as f:
        f.write("P2's own file\n")
    v1 = upper.preallocate("up1/victim", MiB)
    v2 = upper.preallocate("up2/victim", MiB)

    def mount(n: str, volatile: bool) -> wbovl.Mount:
        return wbovl.mount(cleanup, ovlfs, os.path.join(tmp, f"m{n}"), lower,
                           os.path.join(U, f"up{n}"), os.path.join(U, f"wk{n}"),
                           volatile=volatile, interval_ms=100)

    p1 = mount("1", True)
    p2 = mount("2", False)
    checks.true("two daemons", p1.pid != p2.pid and p1.pid > 0 and p2.pid > 0,
                f"pids {p1.pid} and {p2.pid}")
    fds = wbovl.Fds(cleanup)
    f1 = fds.open(os.path.join(p1.mnt, "victim"), os.O_RDWR)
    f2 = fds.open(os.path.join(p2.mnt, "victim"), os.O_RDWR)
    f2mine = fds.open(os.path.join(p2.mnt, "mine"), os.O_RDWR)
    d2 = fds.open(p2.mnt, os.O_RDONLY | os.O_DIRECTORY)

    # 1. Found by P1's writeback thread.
    upper.arm(v1)
    os.pwrite(f1, b"1" * MiB, 0)
    s1 = wbovl.wait_for("P1 to find the error",
                        lambda: (s := p1.status())["mount"]["errors"] >= 1 and s)
    upper.disarm()
    s2 = p2.status()
    checks.expect("P1 found it", (s1["mount"]["file_errors"], s1["mount"]["latest_errno"]),
                  (1, "EIO"))
    checks.expect("P2 knows it at once: upper errors, latest",
                  (s2["upper"]["errors"], s2["upper"]["latest_errno"]), (1, "EIO"))
    checks.expect("P2 did not find it itself", s2["mount"]["file_errors"], 0)
    checks.expect("P2 status: errors since its mount", (s2["mount"]["errors"],
                  s2["mount"]["latest_errno"]), (1, "EIO"))
    checks.expect("P2 syncfs (ioctl), first", wbovl.syncfs_ioctl_fd(d2), "EIO")
    checks.expect("P2 syncfs (ioctl), second", wbovl.syncfs_ioctl_fd(d2), "0")
    checks.expect("P2 fsync of its own file (no error of its own)",
                  wbovl.errno_of(os.fsync, f2mine), "0")
    checks.expect("P1 fsync (volatile)", wbovl.errno_of(os.fsync, f1), "EIO")

    # 2. Found by P2's fsync (non-volatile), with another errno.
    upper.arm(v2, "ENOSPC")
    os.pwrite(f2, b"2" * MiB, 0)
    checks.expect("P2 fsync of its victim finds it", wbovl.errno_of(os.fsync, f2), "ENOSPC")
    upper.disarm()
    checks.expect("P2 fsync again", wbovl.errno_of(os.fsync, f2), "0")
    checks.expect("P1 fsync now reports the latest", wbovl.errno_of(os.fsync, f1), "ENOSPC")
    checks.expect("P1 syncfs", wbovl.syncfs_ioctl(p1.mnt), "EIO")
    s1 = p1.status()
    checks.expect("P1 status: upper errors, latest, P1 found",
                  (s1["upper"]["errors"], s1["upper"]["latest_errno"], s1["mount"]["file_errors"]),
                  (2, "ENOSPC", 1))

    # 3. A third process, mounted afterwards.
    p3 = mount("3", False)
    s3 = p3.status()
    checks.expect("P3 status: upper errors, latest; since its mount",
                  (s3["upper"]["errors"], s3["upper"]["latest_errno"], s3["mount"]["errors"]),
                  (2, "ENOSPC", 0))
    checks.expect("P3 syncfs", wbovl.syncfs_ioctl(p3.mnt), "0")
    checks.expect("P3 shares P1's record", s3["upper"]["shm"], s1["upper"]["shm"])
    fds.close_all()
    for m in (p1, p2, p3):
        m.unmount()


if __name__ == "__main__":
    sys.exit(main())
