"""bench/engine: the image, the build context and the workloads (issue 17, item 6).

The image is made offline, as the engine tests make theirs (tests/engine/enginelib.py):
a docker-archive of three layers, busybox-static below, then a tree of a few thousand
small files over two layers (so most of its directories are merged), and a tar archive
for the unpack workload. Every timestamp and every byte is fixed: the same image ID on
every engine and every run.
"""
from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass

from enginelib import EPOCH, Entry  # noqa: F401  (sys.path set by bench.py)

IMAGE = "localhost/ovlfs-bench:data"
BUILT = "localhost/ovlfs-bench:built"
BUSYBOX = "/bin/busybox"

# /data: DIRS directories; layer 2 puts LOW files in each, layer 3 HIGH more (merged).
DIRS, LOW, HIGH = 40, 80, 20            # 4,000 files, 40 directories
# /src.tar: UNPACK_DIRS directories of UNPACK_FILES files each.
UNPACK_DIRS, UNPACK_FILES = 30, 100     # 3,000 files


def _data(i: int, size: int) -> bytes:
    line = f"ovlfs engine benchmark file {i:06d}\n".encode()
    return (line * (size // len(line) + 1))[:size]


def _size(i: int) -> int:
    """Small files of mixed sizes, 100 B to 8 KiB (mean about 2.6 KiB)."""
    return (100, 400, 1024, 2048, 4096, 8192)[i % 6] + (i * 37) % 100


def unpack_tar() -> bytes:
    """The archive the unpack workload extracts: 3,000 files in 30 directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        n = 0
        for d in range(UNPACK_DIRS):
            ti = tarfile.TarInfo(f"src/p{d:02d}")
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(ti)
            for f in range(UNPACK_FILES):
                data = _data(n, _size(n))
                ti = tarfile.TarInfo(f"src/p{d:02d}/file{f:03d}.txt")
                ti.size, ti.mode, ti.mtime = len(data), 0o644, EPOCH
                tar.addfile(ti, io.BytesIO(data))
                n += 1
    return buf.getvalue()


def image_layers() -> list[list[Entry]]:
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    d = lambda name, mode=0o755: Entry(name, "d", mode=mode)  # noqa: E731
    base = [
        d("bin"), Entry("bin/busybox", data=busybox, mode=0o755),
        *[Entry(f"bin/{a}", "l", target="busybox") for a in sorted(applets) if a != "busybox"],
        d("etc"),
        Entry("etc/passwd", data="root:x:0:0:root:/root:/bin/sh\n"),
        Entry("etc/group", data="root:x:0:\n"),
        d("root", 0o700), d("tmp", 0o1777), d("var"), d("home"),
    ]
    low, high = [d("data")], [d("data")]
    n = 0
    for i in range(DIRS):
        low.append(d(f"data/d{i:02d}"))
        high.append(d(f"data/d{i:02d}"))
        for j in range(LOW + HIGH):
            e = Entry(f"data/d{i:02d}/f{j:03d}", data=_data(n, _size(n)),
                      mode=0o644 if j % 5 else 0o755, uid=0 if j % 7 else 1000)
            (low if j < LOW else high).append(e)
            n += 1
        low.append(Entry(f"data/d{i:02d}/link", "l", target=f"f{0:03d}"))
    high.append(Entry("src.tar", data=unpack_tar()))
    return [base, low, high]


# A build over the lower tree: create, modify (copy-up), delete, rename; each RUN step
# is a layer that buildah commits (diffs the mounted tree, writes a layer tar).
CONTAINERFILE = f"""\
FROM {IMAGE}
RUN mkdir /new && cd /new && for d in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19; do \\
      mkdir d$d && i=0 && while [ $i -lt 100 ]; do echo "new $d $i" > d$d/f$i; i=$((i+1)); done; \\
    done
RUN for f in /data/d0*/f0[0-4]* /data/d1*/f0[0-4]*; do echo modified >> $f; done
RUN rm -r /data/d2* && rm /data/d3*/f05* && rm -r /new/d1*
RUN mkdir /moved && mv /data/d3* /moved/ && mv /new /new2 && mv /data/d00/f099 /data/d01/g099
"""

# The shell scripts of the container workloads (busybox sh).
SCRIPTS = {
    "unpack": "mkdir /u && tar xf /src.tar -C /u",
    "ls": "ls -lR /data >/dev/null",
    "find": "find /data >/dev/null",
}


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    # `podman ...` arguments (after the storage flags); the build context is {ctx}.
    args: tuple[str, ...]
    timeout: float = 120


def podman_args(key: str) -> tuple[str, ...]:
    return ("run", "--rm", IMAGE, "sh", "-c", SCRIPTS[key])


WORKLOADS = [
    Workload("run", "`podman run --rm IMG true`", ("run", "--rm", IMAGE, "true")),
    Workload("build", "`podman build`: 4 RUN steps over the lower tree "
             "(create 2,000 files; append to 1,000 lower ones; delete 1,100 lower and "
             "1,100 new ones; rename 10 lower directories and the new one)",
             ("build", "--pull=never", "--network=none", "--no-cache",
              "--runtime-flag", "cgroup-manager=disabled", "-q", "-t", BUILT, "{ctx}"),
             timeout=300),
    Workload("unpack", "container unpacks 3,000 files (`tar xf` of a 7.9 MB "
             "archive in the image to its rootfs)", podman_args("unpack")),
    Workload("ls", "container runs `ls -lR` over 4,000 lower files in 40 merged "
             "directories", podman_args("ls")),
    Workload("find", "container runs `find` over the same tree", podman_args("find")),
]
KEYS = [w.key for w in WORKLOADS]
BY_KEY = {w.key: w for w in WORKLOADS}


def write_context(ctx: str) -> None:
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write(CONTAINERFILE)
