#!/usr/bin/env python3
"""Hostile layers (layers come from container images): symlinks and redirects that
point outside, redirects that loop or are malformed, absurd xattr sizes, names at
and past NAME_MAX, deep trees. Each gets a clear errno or is handled as the kernel
would; nothing outside the layers is read or written; the daemon never crashes."""
from __future__ import annotations

import json
import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import rootless as rootless_mod  # noqa: E402
from fslib import start, mount_ovlfs, read, write  # noqa: E402


def snapshot(root: str) -> dict[str, tuple]:
    """Names, types, sizes, mtimes and contents below root."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            data = read(p) if stat.S_ISREG(st.st_mode) else b""
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


PREFIX = {False: "trusted.overlay.", True: "user.overlay."}
BAD_REDIRECTS = {"r_dotdot": b"/../outside", "r_relslash": b"../outside",
                 "r_empty": b"", "r_dslash": b"/t//x", "r_dot": b"/./t",
                 "r_huge": b"/" + b"a" * 60000, "r_nul": b"/t\0x", "r_root": b"/"}


def build(t: str, rootless: bool) -> None:
    """The hostile layers, in t (a tmpfs): l1 l2 l3 u w m, and "outside" beside them.
    Rootless: the overlay's xattrs are user.overlay.* (where a user's ovlfs keeps them)
    and everything is handed to the user (made by root: the device node)."""
    P = PREFIX[rootless]
    for d in ("l1", "l2", "l3", "u", "w", "m", "outside"):
        os.mkdir(f"{t}/{d}")
    write(f"{t}/outside/secret", "secret")
    os.mkdir(f"{t}/outside/dir")
    L1, L2, L3, U = (f"{t}/{d}" for d in ("l1", "l2", "l3", "u"))

    # Symlinks out of the layers.
    os.symlink(f"{t}/outside/secret", f"{L1}/abs")
    os.symlink("../../outside/secret", f"{L1}/rel")
    os.symlink(f"{t}/outside", f"{L1}/dirlink")
    os.mkdir(f"{L2}/t")
    write(f"{L2}/t/x", "l2x")
    # Redirects: malformed, escaping, through a symlink, oversize, looping.
    for name, value in BAD_REDIRECTS.items():
        os.mkdir(f"{U}/{name}")
        os.setxattr(f"{U}/{name}", P + "redirect", value)
    os.mkdir(f"{U}/r_link")
    os.setxattr(f"{U}/r_link", P + "redirect", b"/dirlink")
    os.mkdir(f"{U}/r_ok")
    os.setxattr(f"{U}/r_ok", P + "redirect", b"/t")
    os.mkdir(f"{L1}/loopa")
    os.setxattr(f"{L1}/loopa", P + "redirect", b"/loopb")
    os.mkdir(f"{L2}/loopb")
    os.setxattr(f"{L2}/loopb", P + "redirect", b"/loopa")
    os.mkdir(f"{L3}/loopa")
    write(f"{L3}/loopa/z", "z")
    # Absurd overlay xattrs on files and dirs.
    write(f"{U}/bigorigin", "bo")
    os.setxattr(f"{U}/bigorigin", P + "origin", b"\xfb" * 60000)
    write(f"{U}/badorigin", "bd")
    os.setxattr(f"{U}/badorigin", P + "origin", b"\x00\xfb\x05")
    os.mkdir(f"{U}/bigopaque")
    os.setxattr(f"{U}/bigopaque", P + "opaque", b"y" * 60000)
    os.mkdir(f"{L1}/bigopaque")
    write(f"{L1}/bigopaque/shown", "s")
    write(f"{L1}/bigval", "v")
    os.setxattr(f"{L1}/bigval", "user.big", b"q" * 60000)
    # A sparse file of a terabyte (its copy must not fill the 64 MiB upper).
    with open(f"{L1}/sparse", "wb") as f:
        f.write(b"head")
        f.truncate(1 << 40)
    # Names at NAME_MAX, a device that is not a whiteout, a deep tree.
    long = "n" * 255
    write(f"{L1}/{long}", "long")
    os.mknod(f"{L1}/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    deep = L1
    for _ in range(120):
        deep = os.path.join(deep, "d")
    os.makedirs(deep)
    write(f"{deep}/bottom", "bottom")
    if rootless:
        rootless_mod.give(t)


def check(c, ovlfs: str, cl: wblib.Cleanup, t: str, rootless: bool) -> None:
    P = PREFIX[rootless]
    L1, L2, L3, U, W, M = (f"{t}/{d}" for d in ("l1", "l2", "l3", "u", "w", "m"))
    long = "n" * 255
    before = snapshot(f"{t}/outside")
    mount_ovlfs(cl, ovlfs, M, [L1, L2, L3], U, W)
    if rootless:
        print(rootless_mod.describe(), flush=True)
        st = json.loads(wblib.run([ovlfs, "status", M, "--json"]).stdout)
        c.expect(st["metadata_xattrs"] == "user.overlay",
                 f"a user's ovlfs keeps its metadata in user.overlay.*: {st['metadata_xattrs']}")
        c.expect(not st["passthrough"], "and has no passthrough")

    c.expect(os.readlink(f"{M}/abs") == f"{t}/outside/secret", "absolute symlink read as is")
    c.expect(os.readlink(f"{M}/rel") == "../../outside/secret", "relative symlink read as is")
    # Rootless: only uid 0 is mapped (unshare -Ur), and no xattr namespace may be set
    # on a symlink by a user (trusted.* wants CAP_SYS_ADMIN of the initial namespace):
    # the symlink's own times instead.
    owner = 0 if rootless else 1000
    os.chown(f"{M}/abs", owner, owner, follow_symlinks=False)
    if rootless:
        os.utime(f"{M}/rel", ns=(10**18, 10**18), follow_symlinks=False)
    else:
        os.setxattr(f"{M}/rel", "trusted.t", b"1", follow_symlinks=False)
    c.expect(os.path.islink(f"{U}/abs") and os.lstat(f"{U}/abs").st_uid == owner,
             "lchown copies up the symlink itself")
    c.expect(os.path.islink(f"{U}/rel"), "setxattr (rootless: lutimes) on a symlink copies "
             "up the symlink")
    c.expect(os.lstat(f"{t}/outside/secret").st_uid == 0, "the symlink's target untouched")

    for name in BAD_REDIRECTS:
        e = wblib.errno_of(os.stat, f"{M}/{name}")
        c.expect(e == "EIO", f"redirect {name}: stat gives EIO, got {e}")
        e = wblib.errno_of(os.listdir, f"{M}/{name}")
        c.expect(e == "EIO", f"redirect {name}: listdir gives EIO, got {e}")
    c.expect(os.listdir(f"{M}/r_link") == [], "a redirect through a symlink finds nothing")
    c.expect(os.listdir(f"{M}/r_ok") == ["x"], "a good redirect merges its target")
    c.expect(sorted(os.listdir(f"{M}/loopa")) == ["z"], "looping redirects end at the layers")

    c.expect(read(f"{M}/bigorigin") == b"bo", "an oversize origin xattr is ignored")
    c.expect(read(f"{M}/badorigin") == b"bd", "a malformed origin xattr is ignored")
    c.expect(os.listdir(f"{M}/bigopaque") == ["shown"], "an oversize opaque value is not 'y'")
    c.expect(os.getxattr(f"{M}/bigval", "user.big") == b"q" * 60000,
             "a 60000-byte user xattr passes through")
    e = wblib.errno_of(os.chmod, f"{M}/sparse", 0o600)
    c.expect(e == "0", f"chmod copies up a sparse file of 1 TiB, got {e}")
    if e == "0":
        st = os.stat(f"{U}/sparse")
        c.expect(st.st_size == 1 << 40 and st.st_blocks * 512 < 1 << 20,
                 f"its copy keeps the holes: size {st.st_size}, {st.st_blocks} blocks")
        fd = os.open(f"{M}/sparse", os.O_RDONLY)
        c.expect(os.pread(fd, 4, 0) == b"head" and os.pread(fd, 2, (1 << 40) - 1) == b"\0",
                 "the copy reads back as the lower")
        os.close(fd)
    c.expect(read(f"{M}/{long}") == b"long", "a 255-byte name works")
    c.expect(wblib.errno_of(os.open, f"{M}/{'n' * 256}", os.O_CREAT | os.O_WRONLY)
             == "ENAMETOOLONG", "a 256-byte name: ENAMETOOLONG")
    c.expect(stat.S_ISCHR(os.stat(f"{M}/null").st_mode), "char device 1:3 is no whiteout")
    c.expect(read(os.path.join(M, *(["d"] * 120), "bottom")) == b"bottom",
             "a 120-deep tree resolves")
    # A client's overlay xattrs (trusted.overlay.*; user.overlay.* where the overlay
    # keeps its own there) are stored escaped and steer nothing; the overlay's own
    # values stay hidden.
    os.setxattr(f"{M}/r_ok", P + "redirect", b"/loopa")
    os.setxattr(f"{M}/r_ok", P + "opaque", b"y")
    c.expect(os.getxattr(f"{U}/r_ok", P + "overlay.redirect") == b"/loopa",
             f"a client's {P}redirect is stored escaped")
    c.expect(os.getxattr(f"{U}/r_ok", P + "redirect") == b"/t",
             "the overlay's own redirect is unchanged")
    c.expect(os.getxattr(f"{M}/r_ok", P + "redirect") == b"/loopa",
             "the client reads back its own value, not the overlay's")
    c.expect(os.listdir(f"{M}/r_ok") == ["x"], "a client's redirect and opaque steer nothing")
    names = os.listxattr(f"{M}/r_ok")
    c.expect(sorted(n for n in names if n.startswith(P)) ==
             [P + "opaque", P + "redirect"],
             f"listxattr shows the client's names once, the overlay's not at all: {names}")
    c.expect(wblib.is_mountpoint(M) and os.stat(M) is not None, "the daemon still serves")
    wblib.umount(M)
    c.expect(snapshot(f"{t}/outside") == before, "nothing outside the layers changed")


def main() -> int:
    args, c = start([("--layers", {"help": "(the user part of --rootless: root's layers)"})],
                    rootless=True)
    if rootless_mod.in_user_part():
        with wblib.Cleanup() as cl:
            check(c, args.ovlfs, cl, args.layers, True)
        return c.finish()
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-hostile.")
        # Layers on a tmpfs (it takes xattr values up to 64 KiB); "outside" beside them.
        wblib.mount(cl, "tmpfs", t, "tmpfs", "size=64m")
        cl.push("umount tmpfs", lambda: wblib.umount(t))
        build(t, args.rootless)
        if args.rootless:
            # Root made the layers (a device node among them); the user mounts them.
            home = rootless_mod.setup(cl)
            return rootless_mod.rerun(cl, home, __file__, sys.argv[1:] + ["--layers", t])
        check(c, args.ovlfs, cl, t, False)
    return c.finish()

if __name__ == "__main__":
    sys.exit(main())
