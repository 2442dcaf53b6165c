#!/usr/bin/env python3
"""Mount options and directories: every bad one is refused with a one-line message
naming the problem, a non-zero exit and nothing mounted; the good forms mount
(the program itself, mount(8) through mount.fuse, a read-only overlay of lowers)."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start, mount_ovlfs, try_mount, write, read  # noqa: E402


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-opts.")
        for d in ("l1", "l2", "u", "w", "m", "other"):
            os.mkdir(f"{t}/{d}")
        write(f"{t}/l1/f", "lower")
        os.mkdir(f"{t}/l1/sub")
        write(f"{t}/afile", "x")
        os.mkdir(f"{t}/u/inner")
        tmpfs = f"{t}/tmpfs"
        os.mkdir(tmpfs)
        wblib.mount(cl, "tmpfs", tmpfs, "tmpfs", "size=4m")
        os.mkdir(f"{tmpfs}/w")
        ramfs = f"{t}/ramfs"
        os.mkdir(ramfs)
        wblib.mount(cl, "ramfs", ramfs, "ramfs")
        os.mkdir(f"{ramfs}/u")
        os.mkdir(f"{ramfs}/w")

        L, U, W, M = f"{t}/l1", f"{t}/u", f"{t}/w", f"{t}/m"
        good = f"lowerdir={L},upperdir={U},workdir={W}"
        bad_cases = [
            ("unknown flag", ["-o", good, "-x", M], "unknown argument '-x'"),
            ("no lowerdir", ["-o", f"upperdir={U},workdir={W}", M], "missing lowerdir"),
            ("upper without work", ["-o", f"lowerdir={L},upperdir={U}", M], "without workdir"),
            ("work without upper", ["-o", f"lowerdir={L},workdir={W}", M], "without upperdir"),
            ("volatile without upper", ["-o", f"lowerdir={L},volatile", M], "volatile needs"),
            ("empty lower path", ["-o", f"lowerdir={L}::{t}/l2", M], "empty path"),
            ("missing lowerdir", ["-o", f"lowerdir={t}/nope", M], f"lowerdir '{t}/nope'"),
            ("lowerdir is a file", ["-o", f"lowerdir={t}/afile", M], "Not a directory"),
            ("missing upperdir", ["-o", f"lowerdir={L},upperdir={t}/nope,workdir={W}", M],
             f"upperdir '{t}/nope'"),
            ("bad redirect_dir", ["-o", good + ",redirect_dir=maybe", M], "redirect_dir must be"),
            ("bad errors=", ["-o", good + ",errors=panic", M], "errors must be"),
            ("bad passthrough=", ["-o", good + ",passthrough=yes", M], "passthrough must be"),
            ("bad io_uring=", ["-o", good + ",io_uring=maybe", M], "io_uring must be"),
            ("bad interval", ["-o", good + ",writeback_interval=0", M], "writeback_interval"),
            ("workdir on another fs", ["-o", f"lowerdir={L},upperdir={U},workdir={tmpfs}/w", M],
             "not on the same filesystem"),
            ("workdir inside upperdir", ["-o", f"lowerdir={L},upperdir={U},workdir={U}/inner", M],
             "separate subtrees"),
            ("upperdir inside workdir", ["-o", f"lowerdir={L},upperdir={t}/u/inner,workdir={U}", M],
             "separate subtrees"),
            ("lower inside the upper", ["-o", f"lowerdir={U}/inner,upperdir={U},workdir={W}", M],
             f"lowerdir '{U}/inner' is inside upperdir '{U}'"),
            ("lower inside the workdir", ["-o", f"lowerdir={W},upperdir={U},workdir={W}", M],
             f"lowerdir '{W}' is inside workdir '{W}'"),
            ("bad uidmapping", ["-o", good + ",uidmapping=0:1000", M], "uidmapping must be"),
            ("uidmapping of 0 ids", ["-o", good + ",uidmapping=0:1000:0", M], "a count of 0"),
            ("bad gidmapping", ["-o", good + ",gidmapping=0:x:1", M], "gidmapping must be"),
            ("bad squash_to_uid", ["-o", good + ",squash_to_uid=me", M], "squash_to_uid must be"),
            ("bad xattr_permissions", ["-o", good + ",xattr_permissions=3", M],
             "xattr_permissions must be 0, 1 or 2"),
            ("bad fsync=", ["-o", good + ",fsync=2", M], "fsync must be 0 or 1"),
            ("bad noxattrs=", ["-o", good + ",noxattrs=yes", M], "noxattrs must be 0 or 1"),
            ("bad timeout=", ["-o", good + ",timeout=-1", M], "timeout must be"),
            ("metacopy=on", ["-o", good + ",metacopy=on", M], "metacopy must be off"),
            ("a lowerdir twice", ["-o", f"lowerdir={L}:{t}/l2:{L}", M], f"lowerdir '{L}' is given twice"),
            ("a lowerdir by two names", ["-o", f"lowerdir={L}:{t}/l2/../l1", M],
             "are the same directory"),
            ("a lower inside a lower", ["-o", f"lowerdir={L}/sub:{t}/l2:{L}", M],
             f"lowerdir '{L}/sub' is inside lowerdir '{L}'"),
            ("a lower around a lower", ["-o", f"lowerdir={t}/l2:{L}:{L}/sub", M],
             f"lowerdir '{L}/sub' is inside lowerdir '{L}'"),
            ("upper without xattrs", ["-o", f"lowerdir={L},upperdir={ramfs}/u,workdir={ramfs}/w", M],
             "without trusted.* xattrs"),
            ("missing mountpoint", ["-o", good, f"{t}/nomnt"], f"mountpoint '{t}/nomnt'"),
            ("mountpoint is a file", ["-o", good, f"{t}/afile"], "is not a directory"),
            ("no mountpoint", ["-o", good], "usage:"),
        ]
        for name, argv, needle in bad_cases:
            p = try_mount(args.ovlfs, argv)
            lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
            c.expect(p.returncode != 0, f"{name}: exit status {p.returncode}, want non-zero")
            c.expect(needle in p.stderr, f"{name}: stderr {p.stderr!r} lacks {needle!r}")
            if needle != "usage:":
                c.expect(len(lines) == 1, f"{name}: want a one-line message, got {lines!r}")
            if not c.expect(not wblib.is_mountpoint(M), f"{name}: something was mounted on {M}"):
                wblib.umount(M)  # and its daemon with it
            print(f"refused: {name}: {lines[0] if lines else ''}", flush=True)

        # --help and --version answer on stdout and succeed.
        p = try_mount(args.ovlfs, ["--help"])
        c.expect(p.returncode == 0 and "lowerdir=" in p.stdout and "volatile" in p.stdout,
                 "--help prints the options table")
        p = try_mount(args.ovlfs, ["--version"])
        c.expect(p.returncode == 0 and p.stdout.startswith("ovlfs "), "--version")

        # The program mounts and returns once the mount is ready; umount ends it.
        mount_ovlfs(cl, args.ovlfs, M, [L], U, W)
        c.expect(read(f"{M}/f") == b"lower", "a file of the lower is visible at once")
        wblib.umount(M)
        c.expect(not wblib.is_mountpoint(M), "umount ends the mount")

        # A mountpoint given relative to the working directory; SIGTERM to the daemon
        # ends the mount (the daemon unmounts by the absolute path).
        p = subprocess.run([args.ovlfs, "-o", good, "m"], cwd=t, capture_output=True,
                           text=True, timeout=30)
        c.expect(p.returncode == 0, f"mount on a relative mountpoint: {p.stderr.strip()}")
        if p.returncode == 0:
            cl.push(f"umount {M}", lambda: wblib.umount(M))
            c.expect(read(f"{M}/f") == b"lower", "relative mountpoint: the lower is visible")
            pid = int(subprocess.run(["pgrep", "-n", "-f", f"lowerdir={L},"], capture_output=True,
                                     text=True, check=True).stdout.split()[0])
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
            c.expect(not os.path.exists(f"/proc/{pid}"), "SIGTERM ends the daemon")
            c.expect(not wblib.is_mountpoint(M), "SIGTERM to the daemon unmounts it")

        # mount(8) through mount.fuse (which adds rw,dev,suid and sets no PATH): the
        # `program#source` form names the program by path.
        wblib.mount(cl, f"{args.ovlfs}#ovlfs", M, "fuse", f"{good},noatime")
        c.expect(read(f"{M}/f") == b"lower", "mount -t fuse prog#source mounts ovlfs")
        info = [m for m in wblib.mountinfo() if m["mountpoint"] == M]
        c.expect(bool(info) and info[0].get("fstype") == "fuse.ovlfs",
                 f"the mount's type is fuse.ovlfs: {info}")
        wblib.umount(M)

        # Lowers only: a read-only overlay; every change fails with EROFS.
        mount_ovlfs(cl, args.ovlfs, M, [L, f"{t}/l2"])
        c.expect(read(f"{M}/f") == b"lower", "read-only overlay reads")
        c.expect(wblib.errno_of(os.open, f"{M}/new", os.O_CREAT | os.O_WRONLY) == "EROFS",
                 "create in a read-only overlay: EROFS")
        c.expect(wblib.errno_of(os.open, f"{M}/f", os.O_WRONLY) == "EROFS",
                 "open for write in a read-only overlay: EROFS")
        c.expect(wblib.errno_of(os.mkdir, f"{M}/d") == "EROFS", "mkdir: EROFS")
        wblib.umount(M)

        # The `ro` option: same on an overlay that has an upper.
        mount_ovlfs(cl, args.ovlfs, M, [L], U, W, "ro")
        c.expect(wblib.errno_of(os.unlink, f"{M}/f") == "EROFS", "unlink with ro: EROFS")
        wblib.umount(M)
        c.expect(os.listdir(U) == ["inner"], f"nothing written to the upper: {os.listdir(U)}")
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
