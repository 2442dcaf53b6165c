#!/usr/bin/env python3
"""Space comes back at once: on a full upper, the blocks of a removed file are free
right after unlink(2) (or a rename over it), so that the next write, fsync and
copy-up succeed, as under the kernel's overlayfs. The file was just written: its
writeback-error check still had it open (overlay/wb.hpp) and must let go of it at
the unlink, or at the file's last release, after looking for an error of it.

The kernel's overlayfs frees the blocks inside the unlink; through FUSE the last
reference goes when the kernel's FORGET of the node reaches the daemon, which the
kernel sends as the unlink returns (and the release of a file closed just before
is asynchronous too). So the space must be back within SETTLE seconds, far below
the writeback interval that used to hold it (1.7 s here), and the time it took
is printed. The kernel's overlayfs runs the same steps first, as the reference."""
from __future__ import annotations

import errno
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import mount_ovlfs, start, write  # noqa: E402

MiB = 1 << 20
SETTLE = 0.5  # seconds


def fill(path: str) -> int:
    """Writes `path` in 1 MiB pieces until the upper is full; returns its size."""
    size = 0
    chunk = b"f" * MiB
    with wblib.fd_open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) as fd:
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    return size
                raise
            size += n
            if n < len(chunk):
                return size


def free_bytes(path: str) -> int:
    s = os.statvfs(path)
    return s.f_bavail * s.f_frsize


def round_trip(c, label: str, mnt: str, upper_fs: str, how: str) -> None:
    """Fills the upper through mnt, removes the big file (`how`: unlink or rename
    over it), then needs the space at once."""
    big = os.path.join(mnt, "big")
    size = fill(big)
    c.true(f"{label}: the upper filled up", size >= 16 * MiB, f"{size} bytes written")
    before = free_bytes(upper_fs)
    if how == "unlink":
        os.unlink(big)
    else:
        write(os.path.join(mnt, "small"), "s")
        os.rename(os.path.join(mnt, "small"), big)
    start = time.monotonic()
    while (after := free_bytes(upper_fs)) - before < size // 2 and \
            time.monotonic() - start < SETTLE:
        time.sleep(0.0005)
    took = time.monotonic() - start
    c.true(f"{label}: {how} gives the space back within {SETTLE} s",
           after - before >= size // 2,
           f"{before} -> {after} bytes free after {took * 1000:.1f} ms, file {size}")
    try:
        with wblib.fd_open(os.path.join(mnt, "new"), os.O_WRONLY | os.O_CREAT, 0o644) as fd:
            os.write(fd, b"n" * MiB)
            os.fsync(fd)
        with open(os.path.join(mnt, "lower_file"), "ab") as f:  # a copy-up of 4 MiB
            f.write(b"+")
        ok, why = True, ""
    except OSError as e:
        ok, why = False, os.strerror(e.errno)
    c.true(f"{label}: a 1 MiB write + fsync and a copy-up after the {how}", ok, why)
    for name in ("big", "new"):
        if os.path.lexists(os.path.join(mnt, name)):
            os.unlink(os.path.join(mnt, name))


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-space.")
        lower = f"{t}/lower"
        os.mkdir(lower)
        write(f"{lower}/lower_file", b"l" * (4 * MiB))
        img = f"{t}/upper.img"
        with open(img, "wb") as f:
            f.truncate(96 * MiB)
        os.mkdir(f"{t}/fs")
        fs = wblib.Ext4OnLoop(cl, img, f"{t}/fs", "errors=continue")
        configs = [("kernel", None), ("ovlfs", ""), ("ovlfs volatile", "volatile")]
        for label, extra in configs:
            for how in ("unlink", "rename"):
                tag = f"{label.replace(' ', '-')}-{how}"
                up, wk, mnt = (f"{fs.mnt}/{tag}-u", f"{fs.mnt}/{tag}-w", f"{t}/{tag}-m")
                for d in (up, wk, mnt):
                    os.mkdir(d)
                if extra is None:
                    wblib.mount(cl, "overlay", mnt, "overlay",
                                f"lowerdir={lower},upperdir={up},workdir={wk}")
                else:
                    mount_ovlfs(cl, args.ovlfs, mnt, [lower], up, wk, extra)
                round_trip(c, f"{label}, {how}", mnt, fs.mnt, how)
                wblib.umount(mnt)
                wblib.run(["rm", "-rf", up, wk])
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
