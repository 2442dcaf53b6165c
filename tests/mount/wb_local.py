#!/usr/bin/env python3
"""mount.wb.local: an error the kernel keeps on one file is that file's, not the upper
filesystem's. A direct write that collides with a shared mapping of the same page
(diocollide) makes the kernel put EIO in the file's errseq only
(dio_warn_stale_pagecache), never in its filesystem's. The kernel's overlayfs, the
reference, then reports it only to an fsync of that file in a non-volatile mount.
ovlfs must do the same: its detector finds the error, and it must not become an
upper error that fails every volatile mount on the upper and refuses their workdirs.

  0. On the bare ext4 upper: the collision marks the file (sync_file_range EIO) and
     syncfs of the filesystem reports nothing: the error is file-local here.
  1. The kernel's overlayfs on the same upper, volatile and not.
  2. ovlfs, volatile (A) and non-volatile (N) on the same upper, with a third mount (B,
     volatile) that only watches: the same answers as 1, no upper error in anyone's
     status, and A's workdir is reused after a clean unmount.

Usage: wb_local.py --ovlfs PATH --diocollide PATH   (root; 77 = skip)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import wbovl  # noqa: E402

WRITES = "4096"  # direct writes per collision: the first check of the bare run sees it


def fsync_new_fd(path: str) -> str:
    """fsync of a new open file description of path ("0" or an errno name)."""
    fd = wbovl.open_fd(path, os.O_RDONLY)
    try:
        return wbovl.errno_of(os.fsync, fd)
    finally:
        os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--diocollide", required=True)
    args = ap.parse_args()
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    checks = wblib.Checks()
    with wblib.Cleanup() as cleanup:
        with checks.scenario("a file-local error of direct I/O stays the file's"):
            if not run(cleanup, checks, args):
                return 77
    return checks.summary()


def run(cleanup: wblib.Cleanup, checks: wblib.Checks, args) -> bool:
    ovlfs = os.path.realpath(args.ovlfs)
    collide = os.path.realpath(args.diocollide)
    tmp = cleanup.tmpdir("ovlfs-wblocal.")
    backing = os.path.join(tmp, "backing")
    os.mkdir(backing)
    wblib.mount(cleanup, "tmpfs", backing, "tmpfs", "size=200M,mode=0700")
    image = os.path.join(backing, wblib.image_name(tmp))
    with open(image, "wb") as f:
        f.truncate(128 << 20)
    os.mkdir(os.path.join(tmp, "ext4"))
    upper = wblib.Ext4OnLoop(cleanup, image, os.path.join(tmp, "ext4"), "errors=continue")
    U = upper.mnt
    lower = os.path.join(tmp, "lower")
    os.makedirs(lower)

    # 0. The bare upper: is the error file-local on this kernel?
    rc = subprocess.run([collide, "--check", upper.path("bare"), "20"]).returncode
    if rc == 1:
        print("SKIP: this kernel did not mark a file after 20 s of colliding direct writes")
        return False
    checks.expect("bare upper: the collision marks the file", rc, 0)
    with wblib.fd_open(U, os.O_RDONLY | os.O_DIRECTORY) as fd:
        checks.expect("bare upper: syncfs of the filesystem", wbovl.errno_of(wblib.syncfs, fd), "0")

    def dirs(tag: str) -> tuple[str, str]:
        up, wk = os.path.join(U, f"up-{tag}"), os.path.join(U, f"wk-{tag}")
        os.makedirs(up)
        os.makedirs(wk)
        return up, wk

    def collide_in(path: str) -> None:
        wblib.run([collide, path, WRITES], timeout=60)

    # 1. The kernel's overlayfs.
    for volatile in (True, False):
        tag = "kv" if volatile else "kn"
        up, wk = dirs(tag)
        mnt = os.path.join(tmp, tag)
        os.mkdir(mnt)
        opts = f"lowerdir={lower},upperdir={up},workdir={wk}" + (",volatile" if volatile else "")
        wblib.mount(cleanup, "overlay", mnt, "overlay", opts)
        collide_in(os.path.join(mnt, "f"))
        name = "kernel overlayfs, " + ("volatile" if volatile else "non-volatile")
        checks.expect(f"{name}: fsync of a new fd of the file", fsync_new_fd(os.path.join(mnt, "f")),
                      "0" if volatile else "EIO")
        with wblib.fd_open(mnt, os.O_RDONLY | os.O_DIRECTORY) as fd:
            checks.expect(f"{name}: syncfs", wbovl.errno_of(wblib.syncfs, fd), "0")
        wblib.umount(mnt)

    # 2. ovlfs.
    mounts = {}
    for tag, volatile in (("A", True), ("B", True), ("N", False)):
        up, wk = dirs(tag)
        mounts[tag] = wbovl.mount(cleanup, ovlfs, os.path.join(tmp, tag), lower, up, wk,
                                  shm=tag == "A", volatile=volatile, interval_ms=100)
    A, B, N = mounts["A"], mounts["B"], mounts["N"]
    fds = wbovl.Fds(cleanup)
    b_file = fds.open(os.path.join(B.mnt, "watching"), os.O_RDWR | os.O_CREAT)

    collide_in(os.path.join(A.mnt, "f"))
    s = wbovl.wait_for("A's writeback to find the error",
                       lambda: (s := A.status())["mount"]["file_errors"] >= 1 and s)
    checks.expect("A (volatile) found it, as the file's own",
                  s["mount"]["local_errors"] == s["mount"]["file_errors"], True)
    checks.expect("A: no upper error", (s["upper"]["errors"], s["mount"]["errors"]), (0, 0))
    checks.expect("A: made no syncfs", s["host_calls"]["syncfs"], 0)
    checks.expect("A: fsync of a new fd of the file", fsync_new_fd(os.path.join(A.mnt, "f")), "0")
    checks.expect("A: syncfs (ioctl)", wbovl.syncfs_ioctl(A.mnt), "0")

    collide_in(os.path.join(N.mnt, "g"))
    checks.expect("N (non-volatile): fsync of a new fd of the file",
                  fsync_new_fd(os.path.join(N.mnt, "g")), "EIO")
    checks.expect("N: the next fsync", fsync_new_fd(os.path.join(N.mnt, "g")), "0")
    s = N.status()
    checks.expect("N: found it, as the file's own",
                  s["mount"]["file_errors"] >= 1 and s["mount"]["local_errors"] == s["mount"]["file_errors"],
                  True)
    checks.expect("N: no upper error", s["upper"]["errors"], 0)
    checks.expect("N: syncfs (ioctl)", wbovl.syncfs_ioctl(N.mnt), "0")

    checks.expect("B (volatile, only watching): fsync", wbovl.errno_of(os.fsync, b_file), "0")
    checks.expect("B: syncfs (ioctl)", wbovl.syncfs_ioctl(B.mnt), "0")
    checks.expect("B: no upper error", B.status()["upper"]["errors"], 0)

    # A's workdir: reused after a clean unmount (an upper error would refuse it).
    A.unmount()
    up, wk = os.path.join(U, "up-A"), os.path.join(U, "wk-A")
    again, rc, msg = wbovl.try_mount(cleanup, ovlfs, A.mnt,
                                     wbovl.options(lower, up, wk, volatile=True), shm=False)
    checks.expect("A's workdir mounts again (volatile)", (rc, msg), (0, ""))
    fds.close_all()
    for m in (again, B, N):
        if m:
            m.unmount()
    return True


if __name__ == "__main__":
    sys.exit(main())
