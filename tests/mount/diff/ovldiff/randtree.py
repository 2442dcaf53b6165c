"""Seeded random multi-layer trees.

All layers draw names from one small pool, so the same paths recur across
layers: merged dirs, files hiding dirs and dirs hiding files, whiteouts and
opaque dirs over real lower entries, hard links inside a layer, symlinks whose
targets are relative and never contain "..", so that following them never
leaves the mount.
"""
import random

from .layers import Node, LayerSet, SYNTH_BASE_NS

IMPURE_XATTR = "trusted.overlay.impure"

DIR_NAMES = ["a", "b", "c"]
FILE_NAMES = ["f", "g", "h", "x y"]
OTHER_NAMES = ["s", "p"]
OWNERS = [(0, 0)] * 6 + [(65534, 65534), (1000, 1000)]
FILE_MODES = [0o644] * 6 + [0o600, 0o755, 0o444, 0o666, 0o000, 0o4755]
DIR_MODES = [0o755] * 6 + [0o700, 0o777, 0o1777, 0o555]
XATTR_NAMES = ["user.a", "user.b", "user.c"]
SYMLINK_TARGETS = ["f", "g", "a", "a/f", "b/g", "missing", "s", "a/b"]
MAX_DEPTH = 3


def random_layerset(seed, nlowers=3):
    rng = random.Random(f"tree-{seed}")
    layers = []  # bottom first while generating
    visible = {}  # path -> kind: the merged view of the layers generated so far
    for i in range(nlowers + 1):
        nodes = _layer(rng, visible, bottom=(i == 0))
        _mark_impure(nodes, visible)
        _apply(visible, nodes)
        layers.append(nodes)
    upper = layers.pop()
    return LayerSet(lowers=list(reversed(layers)), upper=upper)


def _drop_below(visible, path):
    for p in [p for p in visible if p.startswith(path + "/")]:
        del visible[p]


def _apply(visible, nodes):
    """Stacks one layer on the merged view, as the kernel's lookup does."""
    for n in nodes:
        if n.kind == "whiteout":
            visible.pop(n.path, None)
            _drop_below(visible, n.path)
        elif n.kind == "dir":
            if n.opaque or visible.get(n.path) != "dir":
                _drop_below(visible, n.path)
            visible[n.path] = "dir"
        else:
            _drop_below(visible, n.path)
            visible[n.path] = "file" if n.kind == "hardlink" else n.kind


def _mark_impure(nodes, visible):
    """A dir of a non-bottom layer that merges with a lower dir got there by
    copy-up, and the kernel then marks its parent impure
    (trusted.overlay.impure=y). Without the mark the kernel reports the upper
    d_ino of such a child in readdir until a lookup repairs it, which no
    kernel-made layer needs."""
    if not visible:
        return
    by_path = {n.path: n for n in nodes if n.kind == "dir"}
    parents = set()
    for n in nodes:
        if n.kind == "dir" and not n.opaque and visible.get(n.path) == "dir":
            parents.add(n.path.rpartition("/")[0])
    for parent in parents:
        if parent in by_path:
            by_path[parent].xattrs[IMPURE_XATTR] = b"y"
        elif parent == "":
            nodes.append(Node("rootxattr", "", xattrs={IMPURE_XATTR: b"y"}))


def _mtime(rng):
    return SYNTH_BASE_NS + rng.randrange(10**15)


def _layer(rng, below, bottom):
    """One layer over the merged view `below` (path -> kind)."""
    nodes = []
    files = []
    opaque_dirs = set()
    fill = rng.choice([0.25, 0.45, 0.65])

    def parent_merged(dirpath):
        """Whiteouts only where the kernel makes them: in a dir that merges
        with a lower dir (every ancestor merged, none opaque)."""
        parts = dirpath.split("/") if dirpath else []
        for k in range(len(parts)):
            p = "/".join(parts[:k + 1])
            if p in opaque_dirs or below.get(p) != "dir":
                return False
        return True

    def visit(dirpath, depth):
        names = DIR_NAMES + FILE_NAMES + OTHER_NAMES
        for name in names:
            path = f"{dirpath}/{name}" if dirpath else name
            lower_kind = below.get(path)
            r = rng.random()
            if not bottom and lower_kind and r < 0.12 and parent_merged(dirpath):
                nodes.append(Node("whiteout", path))
                continue
            if r > fill:
                continue
            kind = _pick_kind(rng, name, depth, lower_kind)
            uid, gid = rng.choice(OWNERS)
            if kind == "dir":
                # Kernel-made layers: a dir over a lower non-dir was made by
                # mkdir over a whiteout, which always makes it opaque.
                opaque = not bottom and lower_kind is not None and (
                    lower_kind != "dir" or rng.random() < 0.25)
                if opaque:
                    opaque_dirs.add(path)
                nodes.append(Node("dir", path, mode=rng.choice(DIR_MODES), uid=uid,
                                  gid=gid, xattrs=_xattrs(rng), opaque=opaque,
                                  mtime_ns=_mtime(rng)))
                visit(path, depth + 1)
            elif kind == "file":
                size = rng.choice([0, 1, 7, 100, 4096, 5000])
                data = bytes(rng.randrange(256) for _ in range(min(size, 64))) * (size // 64 + 1)
                nodes.append(Node("file", path, data=data[:size],
                                  mode=rng.choice(FILE_MODES), uid=uid, gid=gid,
                                  xattrs=_xattrs(rng), mtime_ns=_mtime(rng)))
                files.append(path)
            elif kind == "symlink":
                nodes.append(Node("symlink", path, target=rng.choice(SYMLINK_TARGETS),
                                  uid=uid, gid=gid, mtime_ns=_mtime(rng)))
            elif kind == "fifo":
                nodes.append(Node("fifo", path, mode=0o644, uid=uid, gid=gid,
                                  mtime_ns=_mtime(rng)))
            elif kind == "chr":
                nodes.append(Node("chr", path, mode=0o666, rdev=(1, 3),
                                  mtime_ns=_mtime(rng)))
            elif kind == "sock":
                nodes.append(Node("sock", path, mode=0o755, mtime_ns=_mtime(rng)))

    visit("", 0)
    # Hard links inside this layer, to files of this layer.
    dirs = [""] + [n.path for n in nodes if n.kind == "dir"]
    taken = {n.path for n in nodes}
    for _ in range(rng.choice([0, 0, 1, 2, 3])):
        if not files:
            break
        src = rng.choice(files)
        d = rng.choice(dirs)
        name = rng.choice(["h1", "h2", "f", "g"])
        path = f"{d}/{name}" if d else name
        if path in taken or below.get(path) == "dir":
            continue
        taken.add(path)
        nodes.append(Node("hardlink", path, target=src))
    return nodes


def _pick_kind(rng, name, depth, lower_kind):
    r = rng.random()
    if name in DIR_NAMES:
        if depth < MAX_DEPTH and r < 0.88:
            return "dir"
        return "file"
    if name in FILE_NAMES:
        if depth < MAX_DEPTH and r < 0.06:
            return "dir"
        return "file" if r < 0.9 else "symlink"
    if name == "s":
        return "symlink" if r < 0.8 else "sock"
    # "p": special files
    return "fifo" if r < 0.6 else ("chr" if r < 0.85 else "file")


def _xattrs(rng):
    out = {}
    for name in XATTR_NAMES:
        if rng.random() < 0.2:
            out[name] = bytes(rng.randrange(97, 123) for _ in range(rng.choice([1, 5, 40])))
    return out
