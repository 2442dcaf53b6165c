#!/usr/bin/env python3
"""Layer formats (SPEC 5): the same layers written as the kernel's overlayfs writes
them (0:0 whiteouts, trusted.overlay.opaque), as container storage writes them for a
mount program (AUFS: `.wh.NAME` files, `.wh..wh..opq`) and as fuse-overlayfs writes
them (`.wh.` files, user.fuseoverlayfs.opaque) show the same tree: ovlfs over the
AUFS and fuse-overlayfs forms is compared with the kernel's overlayfs over the kernel
form, before and after the same changes, and after a remount. No `.wh.` name is ever
visible or can be made. An upper written by fuse-overlayfs itself (with `.wh.` files,
as it writes them where it cannot mknod) shows under ovlfs what it showed under
fuse-overlayfs."""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start, mount_ovlfs, write  # noqa: E402

# The layers, bottom first: path -> content (str: a file; None: a directory;
# "->target": a symlink), "-path": a whiteout, "+path": an opaque directory.
LAYERS = [
    {
        "etc": None, "etc/a": "a1", "etc/b": "b1", "etc/c": "c1",
        "usr": None, "usr/bin": None, "usr/bin/x": "x", "usr/bin/y": "y",
        "opt": None, "opt/old": None, "opt/old/1": "1", "opt/old/2": "2",
        "var": None, "var/log": None, "var/log/f": "log",
        "keep": "k", "gone": None, "gone/g1": "g", "gone/g2": "g",
        "ln": "->etc/a", "deep": None, "deep/d": None, "deep/d/file": "deep",
    },
    {
        "-etc/a": None, "usr": None, "usr/bin": None, "usr/bin/z": "z",
        "+opt": None, "opt/new": None, "opt/new/3": "3", "-var": None,
        "gone": None, "-gone/g1": None, "-gone/g2": None,
        "deep": None, "+deep/d": None, "deep/d/other": "o",
    },
    {
        "etc": None, "etc/a": "a3", "-keep": None, "var": None, "var/fresh": "new",
        "usr": None, "-usr/bin/y": None,
    },
]


def write_layer(root: str, layer: dict, fmt: str) -> None:
    """Writes `layer` under root in format fmt: kernel, aufs or fuseovl."""
    os.makedirs(root, exist_ok=True)
    for key, content in layer.items():
        kind = key[0] if key[0] in "-+" else ""
        path = os.path.join(root, key.lstrip("-+"))
        parent, name = os.path.split(path)
        os.makedirs(parent, exist_ok=True)
        if kind == "-":
            if fmt == "kernel":
                os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))
            else:
                write(os.path.join(parent, ".wh." + name), "")
        elif kind == "+":
            os.makedirs(path, exist_ok=True)
            if fmt == "kernel":
                os.setxattr(path, "trusted.overlay.opaque", b"y")
            elif fmt == "aufs":
                write(os.path.join(path, ".wh..wh..opq"), "")
            else:
                os.setxattr(path, "user.fuseoverlayfs.opaque", b"y")
        elif content is None:
            os.makedirs(path, exist_ok=True)
        elif content.startswith("->"):
            os.symlink(content[2:], path)
        else:
            write(path, content)


def tree(root: str) -> list[tuple]:
    """Every entry under root: path, type, permissions, owner, size, data digest,
    link target, and the link count of non-directories."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            extra = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = hashlib.sha1(f.read()).hexdigest()[:12]
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            out.append((rel, stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                        st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, extra,
                        st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0))
    return out


def changes(m: str, dir_rename: bool = True) -> None:
    """The same changes, made on each mount (fuse-overlayfs renames no merged
    directory: EXDEV)."""
    os.unlink(f"{m}/etc/b")
    write(f"{m}/etc/new", "n")
    os.mkdir(f"{m}/var/x")
    if dir_rename:
        os.rename(f"{m}/usr/bin", f"{m}/usr/bin2")  # a merged lower dir: by redirect
    shutil.rmtree(f"{m}/opt")
    os.mkdir(f"{m}/opt")
    write(f"{m}/opt/n", "n")
    os.rmdir(f"{m}/gone")  # every lower entry whited out: empty
    write(f"{m}/keep", "again")  # over a whiteout
    os.link(f"{m}/etc/c", f"{m}/etc/c2")
    os.mkdir(f"{m}/deep/d/sub")
    os.rename(f"{m}/deep/d/other", f"{m}/deep/d/sub/other")


def diff(c, what: str, got: list, want: list) -> None:
    if got == want:
        c.expect(True, what)
        return
    gs, ws = set(got), set(want)
    lines = [f"  only ovlfs:  {e}" for e in sorted(gs - ws)[:10]]
    lines += [f"  only kernel: {e}" for e in sorted(ws - gs)[:10]]
    c.expect(False, f"{what}:\n" + "\n".join(lines))


def main() -> int:
    args, c = start()
    with wblib.Cleanup() as cl:
        t = cl.tmpdir("ovlfs-formats.")
        for fmt in ("kernel", "aufs", "fuseovl"):
            for i, layer in enumerate(LAYERS):
                write_layer(f"{t}/{fmt}/l{i}", layer, fmt)
        lowers = {fmt: [f"{t}/{fmt}/l{i}" for i in reversed(range(len(LAYERS)))]
                  for fmt in ("kernel", "aufs", "fuseovl")}
        for d in ("ku", "kw", "km"):
            os.mkdir(f"{t}/{d}")
        wblib.mount(cl, "overlay", f"{t}/km", "overlay",
                    f"lowerdir={':'.join(lowers['kernel'])},upperdir={t}/ku,workdir={t}/kw,"
                    "redirect_dir=on,index=off,metacopy=off")
        kernel_before = tree(f"{t}/km")
        names = {e[0] for e in kernel_before}
        c.expect("keep" not in names and "var/log" not in names and "opt/old" not in names
                 and "usr/bin/y" not in names and "gone/g1" not in names
                 and {"usr/bin/x", "usr/bin/z", "opt/new/3", "deep/d/other"} <= names,
                 f"the kernel hides what the layers delete: {sorted(names)}")
        changes(f"{t}/km")
        kernel_after = tree(f"{t}/km")

        for fmt in ("aufs", "fuseovl"):
            u, w, m = f"{t}/{fmt}-u", f"{t}/{fmt}-w", f"{t}/{fmt}-m"
            for d in (u, w, m):
                os.mkdir(d)
            mount_ovlfs(cl, args.ovlfs, m, lowers[fmt], u, w)
            diff(c, f"{fmt}: the tree is the kernel's of the kernel form", tree(m), kernel_before)
            c.expect(not any(n.startswith(".wh.") for _, _, fs in os.walk(m) for n in fs),
                     f"{fmt}: no .wh. name listed")
            c.expect(wblib.errno_of(os.lstat, f"{m}/etc/.wh.a") == "EINVAL",
                     f"{fmt}: lookup of a .wh. name: EINVAL")
            c.expect(wblib.errno_of(os.open, f"{m}/etc/.wh.z", os.O_CREAT | os.O_WRONLY) ==
                     "EINVAL", f"{fmt}: create of a .wh. name: EINVAL")
            c.expect(wblib.errno_of(os.mkdir, f"{m}/.wh..wh..opq") == "EINVAL",
                     f"{fmt}: mkdir .wh..wh..opq: EINVAL")
            c.expect(wblib.errno_of(os.rename, f"{m}/etc/c", f"{m}/etc/.wh.c") == "EINVAL",
                     f"{fmt}: rename to a .wh. name: EINVAL")
            c.expect(wblib.errno_of(os.getxattr, f"{m}/deep/d", "user.fuseoverlayfs.opaque")
                     == "ENODATA", f"{fmt}: fuse-overlayfs's xattrs are hidden")
            changes(m)
            diff(c, f"{fmt}: after the same changes", tree(m), kernel_after)
            wblib.umount(m)
            written = [n for _, _, fs in os.walk(u) for n in fs if n.startswith(".wh.")]
            c.expect(not written, f"{fmt}: ovlfs wrote the kernel's whiteouts, no .wh. files: "
                     f"{written}")
            mount_ovlfs(cl, args.ovlfs, m, lowers[fmt], u, w)
            diff(c, f"{fmt}: after a remount", tree(m), kernel_after)
            wblib.umount(m)

        fuse_overlayfs_upper(c, cl, args.ovlfs, t, lowers["aufs"])
    return c.finish()


def fuse_overlayfs_upper(c, cl, ovlfs: str, t: str, lowers: list[str]) -> None:
    """fuse-overlayfs, told to write `.wh.` whiteouts, changes the AUFS layers; ovlfs
    then mounts the same upper (a switch of mount_program) and shows the same tree."""
    prog = shutil.which("fuse-overlayfs")
    if not prog:
        print("note: fuse-overlayfs not installed; its upper is not checked", flush=True)
        return
    u, w, m = f"{t}/fo-u", f"{t}/fo-w", f"{t}/fo-m"
    for d in (u, w, m):
        os.mkdir(d)
    env = dict(os.environ, FUSE_OVERLAYFS_DISABLE_OVL_WHITEOUT="1")
    cl.push(f"umount {m}", lambda: wblib.umount(m) if wblib.is_mountpoint(m) else None)
    subprocess.run([prog, "-o", f"lowerdir={':'.join(lowers)},upperdir={u},workdir={w}", m],
                   env=env, check=True, timeout=30)
    changes(m, dir_rename=False)
    shutil.rmtree(f"{m}/etc")  # a merged directory, removed whole
    os.mkdir(f"{m}/etc")
    write(f"{m}/etc/only", "o")
    want = tree(m)
    wblib.umount(m)
    time.sleep(0.2)  # fuse-overlayfs's daemon leaves after the unmount
    made = sorted(os.path.relpath(os.path.join(d, n), u)
                  for d, _, fs in os.walk(u) for n in fs if n.startswith(".wh."))
    c.expect(bool(made), f"fuse-overlayfs wrote .wh. whiteouts: {made}")
    shutil.rmtree(w)
    os.mkdir(w)
    mount_ovlfs(cl, ovlfs, m, lowers, u, w)
    got = tree(m)
    # fuse-overlayfs shows its own numbers of links for a directory; compare the rest.
    diff(c, "an upper written by fuse-overlayfs shows the same tree under ovlfs", got, want)
    wblib.umount(m)


if __name__ == "__main__":
    sys.exit(main())
