"""opendir/readdir/telldir/seekdir through libc, and the readdir scenarios.

glibc's seekdir() lseeks the directory fd to the d_off of an entry and drops
its buffer, so the filesystem sees exactly the offsets it handed out. The
scenarios return plain values (compared across mounts) and problems (POSIX
invariants checked within each mount: a name never returned twice by one
stream, every name present throughout returned exactly once, the same
entries again after seekdir to a telldir position when nothing changed).
"""
import ctypes
import ctypes.util
import os

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class _Dirent(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64), ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort), ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir.restype = ctypes.POINTER(_Dirent)
_libc.readdir.argtypes = [ctypes.c_void_p]
_libc.telldir.restype = ctypes.c_long
_libc.telldir.argtypes = [ctypes.c_void_p]
_libc.seekdir.argtypes = [ctypes.c_void_p, ctypes.c_long]
_libc.rewinddir.argtypes = [ctypes.c_void_p]
_libc.closedir.argtypes = [ctypes.c_void_p]


class DirStream:
    def __init__(self, path):
        self.d = _libc.opendir(path.encode())
        if not self.d:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e), path)

    def read(self):
        """Next (name, d_ino), skipping . and ..; None at the end."""
        while True:
            ctypes.set_errno(0)
            p = _libc.readdir(self.d)
            if not p:
                e = ctypes.get_errno()
                if e:
                    raise OSError(e, os.strerror(e))
                return None
            name = p.contents.d_name.decode("utf-8", "surrogateescape")
            if name not in (".", ".."):
                return name, p.contents.d_ino

    def read_n(self, n):
        out = []
        while len(out) < n:
            e = self.read()
            if e is None:
                break
            out.append(e[0])
        return out

    def read_all(self):
        return self.read_n(1 << 30)

    def tell(self):
        return _libc.telldir(self.d)

    def seek(self, pos):
        _libc.seekdir(self.d, pos)

    def rewind(self):
        _libc.rewinddir(self.d)

    def close(self):
        if self.d:
            _libc.closedir(self.d)
            self.d = None


def _dups(names):
    seen, d = set(), []
    for n in names:
        if n in seen:
            d.append(n)
        seen.add(n)
    return d


def seek_back(dirpath, first=3, more=5):
    """No changes: after telldir + reading on, seekdir must replay the same
    entries. Returns (sorted names, problems)."""
    problems = []
    ds = DirStream(dirpath)
    try:
        head = ds.read_n(first)
        pos = ds.tell()
        x = ds.read_n(more)
        ds.seek(pos)
        y = ds.read_n(more)
        if x != y:
            problems.append(f"seekdir to a telldir position replayed {y}, first read {x}")
        rest = ds.read_all()
        allnames = head + y + rest
        if _dups(allnames):
            problems.append(f"names returned twice: {_dups(allnames)}")
        ds.rewind()
        again = ds.read_all()
        if sorted(again) != sorted(allnames):
            problems.append("rewinddir: a second full read differs from the first")
    finally:
        ds.close()
    return sorted(allnames), problems


def changing(dirpath, first, removes, creates):
    """Reads `first` entries, telldir, removes and creates names, seekdir back
    and reads the rest. Returns (sorted names after a rewinddir, problems)."""
    problems = []
    before = set(os.listdir(dirpath))
    ds = DirStream(dirpath)
    try:
        head = ds.read_n(first)
        pos = ds.tell()
        for n in removes:
            p = os.path.join(dirpath, n)
            (os.rmdir if os.path.isdir(p) and not os.path.islink(p) else os.unlink)(p)
        for n in creates:
            with open(os.path.join(dirpath, n), "w") as f:
                f.write(n)
        ds.seek(pos)
        tail = ds.read_all()
        seen = head + tail
        steady = before - set(removes) - set(creates)
        if _dups(seen):
            problems.append(f"names returned twice by one stream: {sorted(set(_dups(seen)))[:10]}")
        missing = sorted(steady - set(seen))
        if missing:
            problems.append(f"names present throughout but never returned: {missing[:10]}"
                            f"{' ...' if len(missing) > 10 else ''} ({len(missing)})")
        bogus = sorted(set(seen) - before - set(creates))
        if bogus:
            problems.append(f"names never in the directory returned: {bogus[:10]}")
        ds.rewind()
        after = ds.read_all()
        now = sorted(os.listdir(dirpath))
        if sorted(after) != now:
            problems.append(f"after rewinddir: {len(after)} names, listdir has {len(now)}")
        if _dups(after):
            problems.append(f"after rewinddir names twice: {_dups(after)[:10]}")
    finally:
        ds.close()
    return now, problems


def scandir_while_changing(dirpath, first, removes, creates):
    """The same with os.scandir partial iteration (Python's readdir loop)."""
    problems = []
    before = set(os.listdir(dirpath))
    with os.scandir(dirpath) as it:
        head = []
        for e in it:
            head.append(e.name)
            if len(head) >= first:
                break
        for n in removes:
            os.unlink(os.path.join(dirpath, n))
        for n in creates:
            open(os.path.join(dirpath, n), "w").close()
        tail = [e.name for e in it]
    seen = head + tail
    steady = before - set(removes) - set(creates)
    if _dups(seen):
        problems.append(f"scandir returned names twice: {sorted(set(_dups(seen)))[:10]}")
    missing = sorted(steady - set(seen))
    if missing:
        problems.append(f"scandir never returned names present throughout: {missing[:10]} "
                        f"({len(missing)})")
    return sorted(os.listdir(dirpath)), problems
