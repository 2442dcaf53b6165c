#!/usr/bin/env python3
"""O_DIRECT through the mount, as the kernel's overlayfs does it: files still in the
lower layer, copied up and new, opened with O_DIRECT and read (and the upper ones
written) at page-aligned offsets into page-aligned buffers, with default options,
with `passthrough=off,io_uring=off` (every read through the daemon) and with
`volatile`. A shared mapping of a file opened with O_DIRECT, written and synced
(msync) up to a short last page, keeps what was written (fstests generic/263 under
`passthrough=off`: the page cache's writeback came to the daemon on the O_DIRECT
handle and failed with EINVAL). Buffered readers racing asynchronous direct writes
of one file (tests/tools/aiorace) never leave data from before a completed write in
the page cache (fstests generic/451 under `passthrough=off`). Each result (the bytes, or the errno) must be what
the kernel's overlayfs gives on its own copy of the same layers."""
from __future__ import annotations

import errno
import mmap
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import same_as_kernel, start  # noqa: E402

PAGE = 4096
MODES = ["", "passthrough=off,io_uring=off", "passthrough=off", "volatile"]
RACE_SECONDS = 3


def make_lower(lower: str) -> None:
    for name, pages in (("lower", 16), ("copied", 8), ("big", 300)):
        with open(f"{lower}/{name}", "wb") as f:
            for p in range(pages):
                f.write(f"{name} page {p} ".encode().ljust(PAGE, b"."))


def direct(path: str, flags: int, fn) -> str:
    try:
        fd = os.open(path, flags | os.O_DIRECT)
    except OSError as e:
        return f"open: {errno.errorcode[e.errno]}"
    try:
        return fn(fd)
    except OSError as e:
        return errno.errorcode[e.errno]
    finally:
        os.close(fd)


def read_at(fd: int, off: int, size: int) -> str:
    buf = mmap.mmap(-1, size)
    n = os.preadv(fd, [buf], off)
    return f"{n} bytes: {bytes(buf[:n])[:24]!r}...{bytes(buf[max(0, n - 8):n])!r}"


def aio_race(aiorace: str, path: str) -> str:
    """aiorace's verdict on `path`: the same line wherever no read-back was stale."""
    r = subprocess.run([aiorace, path, str(RACE_SECONDS)], capture_output=True, text=True,
                       timeout=RACE_SECONDS + 60)
    if r.returncode == 0 and r.stdout.endswith("writes, no stale data\n"):
        return "no stale data"
    return f"exit {r.returncode}: {(r.stdout + r.stderr).strip()}"


def scenario(aiorace: str, mnt: str, _upper: str) -> list[str]:
    out = []
    with open(f"{mnt}/copied", "r+b") as f:  # copied up, not through O_DIRECT
        f.write(b"COPIED")
    with open(f"{mnt}/new", "wb") as f:
        f.write(b"n" * (3 * PAGE))
    for name in ("lower", "copied", "new", "big"):
        for off, size in ((0, PAGE), (PAGE, 2 * PAGE), (0, 64 * PAGE), (100 * PAGE, PAGE)):
            out.append(f"{name} read {off}+{size}: "
                       + direct(f"{mnt}/{name}", os.O_RDONLY,
                                lambda fd, o=off, s=size: read_at(fd, o, s)))

    def write_then_read(fd: int) -> str:
        buf = mmap.mmap(-1, 2 * PAGE)
        buf.write(b"W" * (2 * PAGE))
        n = os.pwritev(fd, [buf], PAGE)
        return f"wrote {n}; " + read_at(fd, 0, 4 * PAGE)

    for name in ("new", "copied", "lower"):
        out.append(f"{name} write: " + direct(f"{mnt}/{name}", os.O_RDWR, write_then_read))
    with open(f"{mnt}/lower", "rb") as f:  # and as a buffered reader sees it after
        data = f.read()
    out.append(f"lower buffered after: {len(data)} bytes, {data[PAGE:PAGE + 8]!r}")

    def mapped_write(fd: int) -> str:
        size = 5 * PAGE + 1168  # a short last page
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as m:
            m[4 * PAGE:size] = b"M" * (size - 4 * PAGE)
            m.flush()  # msync(MS_SYNC)
        return "msync 0"

    out.append("mapped write of an O_DIRECT open: " + direct(f"{mnt}/mapped", os.O_RDWR | os.O_CREAT,
                                                              mapped_write))
    with open(f"{mnt}/mapped", "rb") as f:
        data = f.read()
    out.append(f"mapped after: {len(data)} bytes, {data.count(b'M')} written")
    out.append("aio direct writes racing buffered readers: " + aio_race(aiorace, f"{mnt}/raced"))
    return out


def main() -> int:
    args, c = start([("--aiorace", {"required": True, "help": "tests/tools/aiorace"})])
    with wblib.Cleanup() as cl:
        top = os.path.realpath(cl.tmpdir("ovlfs-direct."))
        # On /tmp's disk: a tmpfs refuses O_DIRECT opens altogether.
        same_as_kernel(c, cl, args.ovlfs, top, [(m.replace(",", "_") or "default", m)
                                                for m in MODES], make_lower,
                       lambda mnt, upper: scenario(args.aiorace, mnt, upper))
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
