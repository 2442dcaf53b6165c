"""Layer trees as data, written identically into every copy.

A layer is a list of Node, in creation order (parents before children, a hard
link after its source). Both copies of a layer set are produced by the same
materialize() call on the same nodes, so they are identical except for inode
numbers. Only what the kernel itself would write appears on disk: whiteouts
are character devices 0:0 with mode 0, opaque dirs carry
trusted.overlay.opaque=y.
"""
import os
import stat
from dataclasses import dataclass, field

# Synthetic timestamps: everything built here gets mtimes below SYNTH_LIMIT_NS,
# so the comparison can tell "kept from the layer / set by utimes" (compared
# exactly) from "set by the kernel to now" (compared only as "recent").
SYNTH_BASE_NS = 1_000_000_000 * 10**9
SYNTH_LIMIT_NS = 1_500_000_000 * 10**9

WHITEOUT_DEV = os.makedev(0, 0)
OPAQUE_XATTR = "trusted.overlay.opaque"
# set_rootless(): layers as a normal user can make them in a user namespace, and as
# the kernel's overlayfs with userxattr writes them: trusted.overlay.X is
# user.overlay.X; other trusted.* xattrs and device nodes (other than whiteouts),
# which need privileges of the initial namespace, are left out (of both copies).
ROOTLESS = False


def set_rootless():
    global ROOTLESS, OPAQUE_XATTR
    ROOTLESS = True
    OPAQUE_XATTR = "user.overlay.opaque"


def _xattr_name(name):
    """The name to set in a layer, or None to leave it out (rootless)."""
    if not ROOTLESS:
        return name
    if name.startswith("trusted.overlay."):
        return "user.overlay." + name[len("trusted.overlay."):]
    if name.startswith("trusted."):
        return None
    return name


@dataclass
class Node:
    kind: str  # file dir symlink hardlink fifo chr blk sock whiteout rootxattr
    path: str
    data: bytes = b""
    mode: int = -1  # -1: the kind's default
    uid: int = 0
    gid: int = 0
    xattrs: dict = field(default_factory=dict)
    target: str = ""  # symlink target, or hard link source path in the same layer
    rdev: tuple = (0, 0)
    opaque: bool = False
    mtime_ns: int = 0  # 0: derived from the path


DEFAULT_MODES = {"file": 0o644, "dir": 0o755, "fifo": 0o644, "chr": 0o644,
                 "blk": 0o644, "sock": 0o755, "symlink": 0o777, "whiteout": 0}


def F(path, data=b"", mode=0o644, uid=0, gid=0, xattrs=None, mtime_ns=0):
    if isinstance(data, str):
        data = data.encode()
    return Node("file", path, data=data, mode=mode, uid=uid, gid=gid,
                xattrs=dict(xattrs or {}), mtime_ns=mtime_ns)


def D(path, mode=0o755, uid=0, gid=0, xattrs=None, opaque=False, mtime_ns=0):
    return Node("dir", path, mode=mode, uid=uid, gid=gid, xattrs=dict(xattrs or {}),
                opaque=opaque, mtime_ns=mtime_ns)


def L(path, target, uid=0, gid=0):
    return Node("symlink", path, target=target, uid=uid, gid=gid)


def H(path, source):
    return Node("hardlink", path, target=source)


def P(path, mode=0o644, uid=0, gid=0):
    return Node("fifo", path, mode=mode, uid=uid, gid=gid)


def C(path, major, minor, mode=0o666):
    return Node("chr", path, mode=mode, rdev=(major, minor))


def S(path, mode=0o755):
    return Node("sock", path, mode=mode)


def W(path):
    return Node("whiteout", path)


@dataclass
class LayerSet:
    """lowers[0] is the topmost lower layer (first in lowerdir=), as the kernel."""
    lowers: list
    upper: list = field(default_factory=list)


@dataclass
class Dirs:
    """The directories of one side: layers, upper, work and the mount point."""
    base: str
    lowers: list
    upper: str
    work: str
    mnt: str


def default_mtime(path):
    # Deterministic, distinct per path, always below SYNTH_LIMIT_NS.
    h = 0
    for ch in path.encode():
        h = (h * 131 + ch) % 1_000_003
    return SYNTH_BASE_NS + h * 1_000_000_007 % (10**15)


def materialize_layer(nodes, root):
    if ROOTLESS:
        devices = {n.path for n in nodes if n.kind in ("chr", "blk")}
        nodes = [n for n in nodes if n.path not in devices
                 and not (n.kind == "hardlink" and n.target in devices)]
    os.makedirs(root, exist_ok=True)
    for n in nodes:
        _create(n, root)
    for n in nodes:
        _set_owner_mode_xattrs(n, root)
    # Times last, deepest first: creating children changes a dir's mtime.
    for n in sorted(nodes, key=lambda n: -n.path.count("/")):
        if n.kind in ("hardlink", "rootxattr"):
            continue
        t = n.mtime_ns or default_mtime(n.path)
        os.utime(os.path.join(root, n.path), ns=(t, t), follow_symlinks=False)
    t = default_mtime("")
    os.utime(root, ns=(t, t))


def _ensure_parent(root, path):
    parent = os.path.dirname(os.path.join(root, path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)


def _create(n, root):
    if n.kind == "rootxattr":
        return
    p = os.path.join(root, n.path)
    _ensure_parent(root, n.path)
    mode = n.mode if n.mode >= 0 else DEFAULT_MODES.get(n.kind, 0o644)
    if n.kind == "file":
        with open(p, "wb") as f:
            f.write(n.data)
    elif n.kind == "dir":
        os.mkdir(p)
    elif n.kind == "symlink":
        os.symlink(n.target, p)
    elif n.kind == "hardlink":
        os.link(os.path.join(root, n.target), p)
    elif n.kind == "fifo":
        os.mkfifo(p)
    elif n.kind == "chr":
        os.mknod(p, stat.S_IFCHR | mode, os.makedev(*n.rdev))
    elif n.kind == "blk":
        os.mknod(p, stat.S_IFBLK | mode, os.makedev(*n.rdev))
    elif n.kind == "sock":
        os.mknod(p, stat.S_IFSOCK | mode)
    elif n.kind == "whiteout":
        os.mknod(p, stat.S_IFCHR, WHITEOUT_DEV)
    else:
        raise ValueError(f"unknown node kind {n.kind}")


def _set_owner_mode_xattrs(n, root):
    if n.kind == "hardlink":
        return
    p = os.path.join(root, n.path)
    if n.kind == "rootxattr":  # xattrs of the layer's root dir
        for name, value in n.xattrs.items():
            if _xattr_name(name):
                os.setxattr(p, _xattr_name(name), value)
        return
    os.chown(p, n.uid, n.gid, follow_symlinks=False)
    if n.kind == "whiteout":
        os.chmod(p, 0)
        return
    if n.kind != "symlink":
        mode = n.mode if n.mode >= 0 else DEFAULT_MODES[n.kind]
        os.chmod(p, mode)
    for name, value in n.xattrs.items():
        if _xattr_name(name) is None:
            continue
        os.setxattr(p, _xattr_name(name), value if isinstance(value, bytes) else value.encode(),
                    follow_symlinks=False)
    if n.kind == "dir" and n.opaque:
        os.setxattr(p, OPAQUE_XATTR, b"y")


def materialize(layerset, base):
    """Writes the layer set under base; returns its Dirs."""
    os.makedirs(base, exist_ok=True)
    lowers = []
    for i, nodes in enumerate(layerset.lowers):
        root = os.path.join(base, f"l{i}")
        materialize_layer(nodes, root)
        lowers.append(root)
    upper = os.path.join(base, "upper")
    materialize_layer(layerset.upper, upper)
    work = os.path.join(base, "work")
    mnt = os.path.join(base, "mnt")
    os.mkdir(work)
    os.mkdir(mnt)
    return Dirs(base, lowers, upper, work, mnt)
