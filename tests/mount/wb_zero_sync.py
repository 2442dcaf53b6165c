#!/usr/bin/env python3
"""mount.wb.zero_sync: a volatile ovlfs mount makes NO fsync, fdatasync or syncfs call
on its upper, under a write-heavy workload that itself calls fsync, fdatasync, syncfs
(the ioctl and `ovlfs sync`) all the time: the daemon counts its calls at its
host-I/O boundary and `ovlfs status --json` reports them. Its dirty data still reaches
the upper on its own schedule (sync_file_range) and at unmount. A non-volatile mount
under the same workload is the control: its counts are not zero.

Usage: wb_zero_sync.py --ovlfs PATH [--faultyfs PATH]   (root; 77 = skip)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import wbovl  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
FILES = 48
ROUNDS = 4
CHUNK = 256 * KiB


def workload(mnt: str, ovlfs: str) -> dict[str, str]:
    """Writes about FILES*ROUNDS*CHUNK bytes with an fsync-happy application's habits;
    returns the sha256 of every file it leaves."""
    digest: dict[str, str] = {}
    os.makedirs(os.path.join(mnt, "d"), exist_ok=True)
    root = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(FILES):
            path = os.path.join(mnt, "d", f"f{i}")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            h = hashlib.sha256()
            for r in range(ROUNDS):
                block = bytes([(i * 7 + r) % 256]) * CHUNK
                os.pwrite(fd, block, r * CHUNK)
                h.update(block)
                (os.fsync if r % 2 else os.fdatasync)(fd)
            os.close(fd)
            digest[f"d/f{i}"] = h.hexdigest()
            if i % 4 == 0:
                wbovl.syncfs_ioctl_fd(root)
                wblib.syncfs(root)  # the kernel answers this one itself
            if i % 16 == 0:
                subprocess.run([ovlfs, "sync", mnt], check=True, capture_output=True)
        # Copy-up of lower files by writing them; renames; truncation; a directory fsync.
        for j in range(8):
            p = os.path.join(mnt, f"lower{j}")
            fd = os.open(p, os.O_WRONLY | os.O_APPEND)
            os.write(fd, b"appended\n")
            os.fsync(fd)
            os.close(fd)
            with open(p, "rb") as f:
                digest[f"lower{j}"] = hashlib.sha256(f.read()).hexdigest()
        os.rename(os.path.join(mnt, "d", "f0"), os.path.join(mnt, "d", "renamed"))
        digest["d/renamed"] = digest.pop("d/f0")
        os.truncate(os.path.join(mnt, "d", "f1"), CHUNK)
        with open(os.path.join(mnt, "d", "f1"), "rb") as f:
            digest["d/f1"] = hashlib.sha256(f.read()).hexdigest()
        os.fsync(root)
    finally:
        os.close(root)
    return digest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    ap.add_argument("--faultyfs")  # unused: no error is needed here
    args = ap.parse_args()
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    checks = wblib.Checks()
    with wblib.Cleanup() as cleanup:
        with checks.scenario("zero durability calls on the upper in volatile mode"):
            run(cleanup, checks, os.path.realpath(args.ovlfs))
    return checks.summary()


def run(cleanup: wblib.Cleanup, checks: wblib.Checks, ovlfs: str) -> None:
    tmp = cleanup.tmpdir("ovlfs-wbzero.")
    # ext4 on a loop device on a tmpfs big enough for the workload (never filled).
    upper = wblib.enospc_upper(cleanup, tmp, tmpfs_size="384M", image_size=512 * MiB)
    U = upper.mnt
    lower = os.path.join(tmp, "lower")
    os.makedirs(lower)
    for j in range(8):
        with open(os.path.join(lower, f"lower{j}"), "wb") as f:
            f.write(os.urandom(64 * KiB))
    total = FILES * ROUNDS * CHUNK + 8 * 64 * KiB
    for name, volatile in (("vol", True), ("nonvol", False)):
        os.makedirs(os.path.join(U, f"up-{name}"))
        os.makedirs(os.path.join(U, f"wk-{name}"))
        m = wbovl.mount(cleanup, ovlfs, os.path.join(tmp, f"m-{name}"), lower,
                        os.path.join(U, f"up-{name}"), os.path.join(U, f"wk-{name}"),
                        volatile=volatile, interval_ms=200)
        digest = workload(m.mnt, ovlfs)
        st = wbovl.wait_for("the writeback thread to catch up",
                            lambda: (s := m.status())["dirty_files"] == 0 and s)
        calls = st["host_calls"]
        print(f"{name}: wrote {total / MiB:.0f} MiB in {FILES} files (+8 copy-ups) with "
              f"{FILES * ROUNDS} fsync/fdatasync, {FILES // 4} syncfs ioctls, "
              f"{(FILES + 15) // 16} `ovlfs sync`; upper calls: {calls}; "
              f"{st['writeback_passes']} writeback passes", flush=True)
        durable = calls["fsync"] + calls["fdatasync"] + calls["syncfs"]
        if volatile:
            checks.expect(f"{name}: fsync calls on the upper", calls["fsync"], 0)
            checks.expect(f"{name}: fdatasync calls on the upper", calls["fdatasync"], 0)
            checks.expect(f"{name}: syncfs calls on the upper", calls["syncfs"], 0)
            checks.true(f"{name}: dirty data written back with sync_file_range",
                        calls["sync_file_range"] > 0, f"{calls['sync_file_range']} calls")
        else:
            checks.true(f"{name}: the control counts its durability calls", durable > 0,
                        f"{durable} calls")
        checks.expect(f"{name}: no upper error", st["mount"]["errors"], 0)
        m.unmount()
        # What the mount wrote is on the upper, and the page cache holds nothing dirty.
        updir = os.path.join(U, f"up-{name}")
        bad = []
        dirty = 0
        for rel, want in digest.items():
            with open(os.path.join(updir, rel), "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != want:
                    bad.append(rel)
            fd = os.open(os.path.join(updir, rel), os.O_RDONLY)
            dirty += wblib.cachestat(fd)["nr_dirty"]
            os.close(fd)
        checks.expect(f"{name}: files with the content written", bad, [])
        checks.expect(f"{name}: dirty upper pages after unmount", dirty, 0)


if __name__ == "__main__":
    sys.exit(main())
