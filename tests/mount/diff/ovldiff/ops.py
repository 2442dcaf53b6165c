"""Operations applied identically to both mounts.

An operation is a plain dict (JSON-able, so a replay log and the unprivileged
worker can carry it): {"op": name, "path": relative path, ...}. apply() runs it
against one mount point and returns a string: "ok", "ok:<value>" or the errno
name ("ENOENT"). Both mounts must return the same string.

Opens use O_NONBLOCK, so a fifo never blocks the harness. Paths are relative to
the mount point; "" is the mount root.
"""
import ctypes
import ctypes.util
import errno
import hashlib
import os
import socket
import stat

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

XATTR_FLAGS = {"": 0, "create": os.XATTR_CREATE, "replace": os.XATTR_REPLACE}


def kind_of(mode):
    return {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFIFO: "p",
            stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFSOCK: "s"}[stat.S_IFMT(mode)]


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


def _p(mnt, rel):
    return os.path.join(mnt, rel) if rel else mnt


def _open(path, flags, mode=0o644):
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC, mode)


def _readall(fd, limit=1 << 22):
    chunks = []
    total = 0
    while total < limit:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
        total += len(b)
    return b"".join(chunks)


def op_create(m, o):
    flags = os.O_WRONLY | os.O_CREAT
    if o.get("excl"):
        flags |= os.O_EXCL
    if o.get("trunc"):
        flags |= os.O_TRUNC
    fd = _open(_p(m, o["path"]), flags, o.get("mode", 0o644))
    try:
        if o.get("data"):
            os.write(fd, bytes.fromhex(o["data"]))
    finally:
        os.close(fd)
    return "ok"


def op_write(m, o):
    fd = _open(_p(m, o["path"]), os.O_WRONLY)
    try:
        n = os.pwrite(fd, bytes.fromhex(o["data"]), o.get("offset", 0))
    finally:
        os.close(fd)
    return f"ok:{n}"


def op_append(m, o):
    fd = _open(_p(m, o["path"]), os.O_WRONLY | os.O_APPEND)
    try:
        n = os.write(fd, bytes.fromhex(o["data"]))
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    return f"ok:{n}:{size}"


def op_opentrunc(m, o):
    fd = _open(_p(m, o["path"]), os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    return "ok"


def op_openrw(m, o):
    """Opens for writing without writing: the kernel copies up on open."""
    fd = _open(_p(m, o["path"]), os.O_RDWR)
    os.close(fd)
    return "ok"


def op_read(m, o):
    fd = _open(_p(m, o["path"]), os.O_RDONLY | (0 if o.get("follow", True) else os.O_NOFOLLOW))
    try:
        data = _readall(fd, o.get("limit", 1 << 22))
    finally:
        os.close(fd)
    return f"ok:{len(data)}:{digest(data)}"


def op_truncate(m, o):
    os.truncate(_p(m, o["path"]), o["size"])
    return "ok"


def op_mkdir(m, o):
    os.mkdir(_p(m, o["path"]), o.get("mode", 0o755))
    return "ok"


def op_rmdir(m, o):
    os.rmdir(_p(m, o["path"]))
    return "ok"


def op_unlink(m, o):
    os.unlink(_p(m, o["path"]))
    return "ok"


def op_rename(m, o):
    flags = {"": 0, "noreplace": RENAME_NOREPLACE, "exchange": RENAME_EXCHANGE}[o.get("flags", "")]
    if _libc.renameat2(AT_FDCWD, _p(m, o["path"]).encode(), AT_FDCWD,
                       _p(m, o["dst"]).encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return "ok"


def op_link(m, o):
    os.link(_p(m, o["path"]), _p(m, o["dst"]), follow_symlinks=False)
    return "ok"


def op_symlink(m, o):
    os.symlink(o["target"], _p(m, o["path"]))
    return "ok"


def op_readlink(m, o):
    return "ok:" + os.readlink(_p(m, o["path"]))


def op_chmod(m, o):
    os.chmod(_p(m, o["path"]), o["mode"])
    return "ok"


def op_chown(m, o):
    os.chown(_p(m, o["path"]), o["uid"], o["gid"], follow_symlinks=o.get("follow", True))
    return "ok"


def op_setxattr(m, o):
    os.setxattr(_p(m, o["path"]), o["name"], bytes.fromhex(o["value"]),
                XATTR_FLAGS[o.get("flags", "")], follow_symlinks=o.get("follow", True))
    return "ok"


def op_removexattr(m, o):
    os.removexattr(_p(m, o["path"]), o["name"], follow_symlinks=o.get("follow", True))
    return "ok"


def op_getxattr(m, o):
    v = os.getxattr(_p(m, o["path"]), o["name"], follow_symlinks=o.get("follow", True))
    return f"ok:{v.hex() if len(v) <= 32 else digest(v)}"


def op_listxattr(m, o):
    return "ok:" + ",".join(sorted(os.listxattr(_p(m, o["path"]),
                                                follow_symlinks=o.get("follow", True))))


def op_utimes(m, o):
    if o.get("ns"):
        os.utime(_p(m, o["path"]), ns=tuple(o["ns"]), follow_symlinks=o.get("follow", True))
    else:
        os.utime(_p(m, o["path"]), None, follow_symlinks=o.get("follow", True))
    return "ok"


def op_mknod(m, o):
    kinds = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO,
             "sock": stat.S_IFSOCK, "reg": stat.S_IFREG}
    os.mknod(_p(m, o["path"]), kinds[o["kind"]] | o.get("mode", 0o644),
             os.makedev(o.get("major", 0), o.get("minor", 0)))
    return "ok"


def op_mkfifo(m, o):
    os.mkfifo(_p(m, o["path"]), o.get("mode", 0o644))
    return "ok"


def op_stat(m, o):
    st = os.stat(_p(m, o["path"]), follow_symlinks=o.get("follow", True))
    k = kind_of(st.st_mode)
    size = "-" if k == "d" else st.st_size
    return f"ok:{k}:{stat.S_IMODE(st.st_mode):o}:{st.st_nlink}:{size}:{st.st_uid}:{st.st_gid}"


def op_listdir(m, o):
    names = os.listdir(_p(m, o["path"]))
    dup = len(names) != len(set(names))
    return "ok:" + ",".join(sorted(names)) + (":DUPLICATES" if dup else "")


def op_access(m, o):
    return "ok:" + str(os.access(_p(m, o["path"]), o["how"]))


def op_bindsock(m, o):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.bind(_p(m, o["path"]))
    finally:
        s.close()
    return "ok"


def op_connect(m, o):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(_p(m, o["path"]))
    finally:
        s.close()
    return "ok"


def op_chdir_ls(m, o):
    """ls of a directory opened by fd (O_DIRECTORY), as a non-root search check."""
    fd = os.open(_p(m, o["path"]), os.O_RDONLY | os.O_DIRECTORY)
    try:
        return "ok:" + ",".join(sorted(os.listdir(fd)))
    finally:
        os.close(fd)


# Descriptors held across operations, per mount point and slot (each process,
# the harness and the unprivileged worker, has its own table).
FDS = {}
HOLD_FLAGS = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR, "dir": os.O_RDONLY | os.O_DIRECTORY,
              "path": os.O_PATH}


def op_hold(m, o):
    """Opens path and keeps the descriptor in a slot for later fd* ops."""
    key = (m, o["slot"])
    if key in FDS:
        os.close(FDS.pop(key))
    FDS[key] = _open(_p(m, o["path"]), HOLD_FLAGS[o["how"]] | os.O_NOFOLLOW * o.get("nofollow", 0))
    return "ok"


def _fd(m, o):
    fd = FDS.get((m, o["slot"]))
    if fd is None:
        raise OSError(errno.EBADF, "no descriptor held in this slot")
    return fd


def op_fdwrite(m, o):
    return f"ok:{os.pwrite(_fd(m, o), bytes.fromhex(o['data']), o.get('offset', 0))}"


def op_fdread(m, o):
    data = os.pread(_fd(m, o), 1 << 20, 0)
    return f"ok:{len(data)}:{digest(data)}"


def op_fdstat(m, o):
    st = os.fstat(_fd(m, o))
    k = kind_of(st.st_mode)
    return f"ok:{k}:{stat.S_IMODE(st.st_mode):o}:{st.st_nlink}:{'-' if k == 'd' else st.st_size}"


def op_fdtruncate(m, o):
    os.ftruncate(_fd(m, o), o["size"])
    return "ok"


def op_fdchmod(m, o):
    os.fchmod(_fd(m, o), o["mode"])
    return "ok"


def op_fdlistdir(m, o):
    return "ok:" + ",".join(sorted(os.listdir(_fd(m, o))))


def op_fdclose(m, o):
    os.close(FDS.pop((m, o["slot"])) if (m, o["slot"]) in FDS else _fd(m, o))
    return "ok"


def op_fdcloseall(m, o):
    for key in [k for k in FDS if k[0] == m]:
        os.close(FDS.pop(key))
    return "ok"


OPS = {name[3:]: fn for name, fn in globals().items() if name.startswith("op_")}


def apply(mnt, o):
    try:
        return OPS[o["op"]](mnt, o)
    except OSError as e:
        if e.errno is None:
            return f"OSError:{e}"
        return errno.errorcode.get(e.errno, str(e.errno))
    except (ValueError, OverflowError) as e:
        return f"{type(e).__name__}"


def describe(o):
    rest = {k: v for k, v in o.items() if k not in ("op", "path")}
    if "data" in rest and len(rest["data"]) > 16:
        rest["data"] = f"<{len(rest['data']) // 2} bytes>"
    if "value" in rest and len(rest["value"]) > 16:
        rest["value"] = f"<{len(rest['value']) // 2} bytes>"
    for k in ("mode",):
        if isinstance(rest.get(k), int):
            rest[k] = f"0o{rest[k]:o}"
    args = " ".join(f"{k}={v}" if k == "mode" else f"{k}={_short(v)!r}" for k, v in rest.items())
    return f"{o['op']} {_short(o.get('path', ''))!r} {args}".rstrip()


def short(result, limit=120):
    """A result string shortened for display (results are compared in full)."""
    if len(result) <= limit:
        return result
    return f"{result[:limit // 2]}...<{len(result)} chars>"


def _short(v):
    if isinstance(v, str) and len(v) > 80:
        return f"{v[:20]}...<{len(v)} chars>"
    return v
