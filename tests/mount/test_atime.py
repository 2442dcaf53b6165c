#!/usr/bin/env python3
"""The overlay's own atime option decides when reads move an upper file's or
directory's atime, whatever the upper's mount says, as the kernel's overlayfs
decides it (it reaches the upper through a private clone of the upper's mount
with the atime flags cleared). Each case is the kernel's overlayfs beside ovlfs
with default options and with `passthrough=off`:

- the upper on a filesystem mounted noatime, and on one mounted strictatime;
- the overlay mounted with no atime option (relatime), strictatime and noatime;
- a file read once, then again (by a new open each time, as cat does); a lower file
  read (a lower's atime never moves); a directory listed.

Each line the scenario prints through ovlfs must be the kernel's."""
from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import same_as_kernel, start  # noqa: E402


def read(path: str) -> None:
    with open(path, "rb") as f:
        f.read()


def atime(path: str) -> int:
    return os.stat(path).st_atime_ns


def scenario(mnt: str, _upper: str) -> list[str]:
    os.mkdir(f"{mnt}/d")  # an upper directory, listed below
    f = f"{mnt}/f"
    with open(f, "w") as fh:
        fh.write("data\n")
    st = os.stat(f)
    # Its atime before its mtime: relatime moves it at the next read.
    os.utime(f, ns=(st.st_mtime_ns - 10 * 10**9, st.st_mtime_ns))
    out = []
    for what in ("first read", "second read"):
        before = atime(f)
        time.sleep(0.02)  # a later clock tick than the last change
        read(f)
        out.append(f"{what}: atime {'moved' if atime(f) != before else 'kept'}")
    before = atime(f"{mnt}/lower")
    read(f"{mnt}/lower")
    out.append(f"read of a lower file: atime {'moved' if atime(f'{mnt}/lower') != before else 'kept'}")
    d = f"{mnt}/d"
    before = atime(d)
    time.sleep(0.02)
    os.listdir(d)
    out.append(f"listing of an upper dir: atime {'moved' if atime(d) != before else 'kept'}")
    return out


def make_lower(lower: str) -> None:
    with open(f"{lower}/lower", "w") as fh:
        fh.write("lower\n")
    old = time.time() - 3 * 86400  # older than a day: relatime would move it
    os.utime(f"{lower}/lower", (old, old))


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        top = os.path.realpath(cl.tmpdir("ovlfs-atime."))
        for base_opt in ("noatime", "strictatime"):
            base = f"{top}/{base_opt}"
            os.mkdir(base)
            wblib.mount(cl, "tmpfs", base, "tmpfs", f"size=16M,{base_opt}")
            for ovl_opt in ("", "strictatime", "noatime"):
                # A directory name too, so within an overlay option: no comma or colon.
                where = f"upper-{base_opt}.overlay-{ovl_opt or 'relatime'}"
                run = f"{base}/{ovl_opt or 'relatime'}"
                os.mkdir(run)
                same_as_kernel(c, cl, args.ovlfs, run,
                               [(f"{where}.default", ovl_opt),
                                (f"{where}.passthrough-off",
                                 ",".join(o for o in (ovl_opt, "passthrough=off") if o))],
                               make_lower, scenario, kernel_opts=ovl_opt)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
