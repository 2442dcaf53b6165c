#!/usr/bin/env python3
"""The caller's umask and default ACLs, as the kernel's overlayfs: a file, a
directory, a device node and a set-group-ID directory made with umask 022 in a
directory with a default ACL (which then decides, not the umask) and in one without
(the umask applies), in the upper and in a lower directory (copied up first), with
default options and with `volatile`. Each new object's mode and ACL xattrs,
through the mount and in the upper, must be what the kernel's overlayfs gives on its
own copy of the same layers."""
from __future__ import annotations

import os
import stat
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import same_as_kernel, start  # noqa: E402

ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x04, 0x10, 0x20
UNDEFINED = 0xFFFFFFFF


def acl(*entries: tuple[int, int]) -> bytes:
    """A POSIX ACL xattr value (version 2) of (tag, perm) entries without ids."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, UNDEFINED)
                                           for t, p in entries)


# g::rwx, so that a umask of 022 and the ACL give different modes.
DEFAULT = acl((ACL_USER_OBJ, 7), (ACL_GROUP_OBJ, 7), (ACL_OTHER, 5))


def describe(path: str) -> str:
    st = os.lstat(path)
    out = f"{stat.filemode(st.st_mode)}"
    for name in ("system.posix_acl_access", "system.posix_acl_default"):
        try:
            out += f" {name[17:]}={os.getxattr(path, name, follow_symlinks=False).hex()}"
        except OSError:
            pass
    return out


def scenario(mnt: str, upper: str) -> list[str]:
    os.mkdir(f"{mnt}/withacl")
    os.setxattr(f"{mnt}/withacl", "system.posix_acl_default", DEFAULT)
    os.setxattr(f"{mnt}/lowerdir", "system.posix_acl_default", DEFAULT)
    os.mkdir(f"{mnt}/plain")
    old = os.umask(0o022)
    try:
        for d in ("withacl", "lowerdir", "plain", "lowerplain"):
            os.close(os.open(f"{mnt}/{d}/file", os.O_CREAT | os.O_WRONLY, 0o666))
            os.mkdir(f"{mnt}/{d}/dir", 0o777)
            os.mknod(f"{mnt}/{d}/fifo", stat.S_IFIFO | 0o666)
            os.mkdir(f"{mnt}/{d}/sgid", 0o2777)
    finally:
        os.umask(old)
    out = []
    for d in ("withacl", "lowerdir", "plain", "lowerplain"):
        for n in ("file", "dir", "fifo", "sgid"):
            out.append(f"{d}/{n}: {describe(f'{mnt}/{d}/{n}')}; upper {describe(f'{upper}/{d}/{n}')}")
    return out


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        top = os.path.realpath(cl.tmpdir("ovlfs-aclumask."))  # ext4 on /tmp: ACLs
        same_as_kernel(c, cl, args.ovlfs, top, [("default", ""), ("volatile", "volatile")],
                       lambda lower: [os.mkdir(f"{lower}/{d}") for d in ("lowerdir", "lowerplain")],
                       scenario)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
