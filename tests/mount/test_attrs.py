#!/usr/bin/env python3
"""Attribute changes the kernel's FUSE does not make itself, as the kernel's
overlayfs makes them, with default options, `passthrough=off` and `volatile`:

- set-group-ID without group execute is cleared by a write, a truncate, and an
  fallocate, punch-hole or zero-range of a file by a caller outside the file's group
  (Linux 6.2's rule); a member of the group (a supplementary one), and root
  (CAP_FSETID), keep it;
  8 such writers at once on one file leave it cleared;
- an access ACL set by the file's owner changes the mode that stat shows at once;
- a directory made by a user in a set-group-ID directory with a default ACL has
  the ACL's mode and the set-group-ID bit;
- a write through a shared mapping moves the file's mtime;
- name_to_handle_at is refused (EOPNOTSUPP), as the kernel's overlayfs without
  nfs_export refuses it: a handle that could not be opened later is never made.

Each line the scenario prints through ovlfs must be the kernel's."""
from __future__ import annotations

import ctypes
import mmap
import os
import stat
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import same_as_kernel, start  # noqa: E402

NOBODY = 65534
GROUP = 4242  # a supplementary group of the "member" caller
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                       ctypes.c_char_p]
AT_FDCWD, STATX_MODE, STATX_MTIME = -100, 0x2, 0x40


def statx(path: str, mask: int) -> bytes:
    """statx(2) asking only `mask`, as stat(1) and ls do: the kernel's FUSE answers
    from its cache unless those very attributes were invalidated."""
    buf = ctypes.create_string_buffer(256)
    if libc.statx(AT_FDCWD, path.encode(), 0, mask, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return buf.raw


def statx_mode(path: str) -> int:
    return struct.unpack_from("<H", statx(path, STATX_MODE), 28)[0]


def statx_mtime_ns(path: str) -> int:
    sec, nsec = struct.unpack_from("<qI", statx(path, STATX_MTIME), 112)
    return sec * 1_000_000_000 + nsec


def fallocate(fd: int, mode: int, off: int, length: int) -> None:
    if libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def as_user(uid: int, gid: int, groups: list[int], fn) -> str:
    """Runs fn() in a child with these ids (no capabilities); its result, or the error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            out = fn() or "ok"
        except OSError as e:
            out = f"error {e.errno}"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def ops(path: str):
    def write():
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, b"x" * 16, 0)
        os.close(fd)

    def trunc():
        os.truncate(path, 8)

    def falloc(mode):
        def f():
            fd = os.open(path, os.O_WRONLY)
            fallocate(fd, mode, 0, 4096)
            os.close(fd)
        return f

    return [("pwrite", write), ("truncate", trunc), ("fallocate", falloc(0)),
            ("punch-hole", falloc(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)),
            ("zero-range", falloc(FALLOC_FL_ZERO_RANGE))]


def fresh(path: str, mode: int, gid: int = 0) -> None:
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as f:
        f.write(b"y" * 4096)
    os.chown(path, 0, gid)
    os.chmod(path, mode)


def mode_of(path: str) -> str:
    return f"{stat.S_IMODE(os.stat(path).st_mode):o}"


def scenario(mnt: str, upper: str) -> list[str]:
    os.chmod(mnt, 0o777)
    out = []
    f = f"{mnt}/f"
    for name, op in ops(f):
        for who, ids in (("outsider", (NOBODY, NOBODY, [])),
                         ("member", (NOBODY, NOBODY, [GROUP])),
                         ("root", None)):
            fresh(f, 0o6666, GROUP if who == "member" else 0)
            res = op() or "ok" if ids is None else as_user(*ids, op)
            out.append(f"{name} by {who}: {res}, mode {mode_of(f)}, upper {mode_of(f'{upper}/f')}")
    # Many outsiders writing one set-group-ID file at once.
    fresh(f, 0o2666)
    pids = []
    for _ in range(8):
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setgid(NOBODY)
                os.setuid(NOBODY)
                fd = os.open(f, os.O_WRONLY)
                for i in range(200):
                    os.pwrite(fd, b"z", i)
                os.close(fd)
                os._exit(0)
            except OSError:
                os._exit(1)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
    out.append(f"8 outsiders writing at once: exits {codes}, mode {mode_of(f)}")
    # An access ACL set by the owner: the mode follows at once.
    a = f"{mnt}/acl"
    fresh(a, 0o2755, NOBODY)
    os.chown(a, NOBODY, NOBODY)
    os.chmod(a, 0o2755)
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, 7, 0xFFFFFFFF)
                                            for t in (0x01, 0x04, 0x20))
    def set_acl():
        statx_mode(a)  # as setfacl does: the mode before, cached by the kernel
        os.setxattr(a, "system.posix_acl_access", value)
    res = as_user(NOBODY, NOBODY, [], set_acl)
    out.append(f"setfacl u::rwx,g::rwx,o::rwx by the owner: {res}, "
               f"{stat.filemode(statx_mode(a))}")
    # mkdir by a user in a set-group-ID dir with a default ACL (fstests generic/444):
    # the mode is the ACL's, with the set-group-ID bit inherited.
    d = f"{mnt}/sgid-acl"
    os.mkdir(d)
    entries = ((0x01, 7, 0xFFFFFFFF), (0x02, 7, 101), (0x04, 5, 0xFFFFFFFF),
               (0x10, 7, 0xFFFFFFFF), (0x20, 5, 0xFFFFFFFF))
    os.setxattr(d, "system.posix_acl_default",
                struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries))
    os.chown(d, 100, 100)
    os.chmod(d, 0o2755)
    for sub, gid in (("member", 100), ("outsider", 101)):
        res = as_user(100, gid, [], lambda: os.mkdir(f"{d}/{sub}", 0o777))
        out.append(f"mkdir in a set-group-ID dir with a default ACL, {sub} group: {res}, "
                   f"{stat.filemode(os.stat(f'{d}/{sub}').st_mode)}")
    # A write through a shared mapping, a while after the file's last change.
    m = f"{mnt}/mapped"
    with open(m, "wb") as fm:
        fm.write(b"w" * 4096)
    before = statx_mtime_ns(m)  # cached by the kernel from here
    time.sleep(1.1)
    fd = os.open(m, os.O_RDWR)
    with mmap.mmap(fd, 4096) as mp:
        mp[0:4] = b"mmap"
    after = statx_mtime_ns(m)
    os.close(fd)
    out.append(f"mmap write: mtime {'moved' if after > before else 'unchanged'}")
    out.append(f"name_to_handle_at: {name_to_handle_at(m)}")
    return out


def name_to_handle_at(path: str) -> str:
    handle = ctypes.create_string_buffer(8 + 128)  # struct file_handle, 128 bytes
    struct.pack_into("<I", handle, 0, 128)
    mount_id = ctypes.c_int()
    if libc.name_to_handle_at(AT_FDCWD, path.encode(), handle, ctypes.byref(mount_id), 0) == 0:
        return "made"
    return wblib.errno_name(ctypes.get_errno())


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        top = os.path.realpath(cl.tmpdir("ovlfs-attrs."))
        os.chmod(top, 0o755)  # the test users reach the mounts
        same_as_kernel(c, cl, args.ovlfs, top,
                       [("default", ""), ("passthrough=off", "passthrough=off"),
                        ("volatile", "volatile")],
                       lambda lower: None, scenario)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
