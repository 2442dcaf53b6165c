"""The workloads: what data each needs, and what each trial does.

Every workload builds its data once per run (two lower layers, top first, and the
same content merged into one tree for the plain directory). A trial then gets a fresh
upper and work dir (or, for the plain directory, a fresh tree when the workload
writes), mounts the configuration, runs its untimed preparation, and has the C helper
(fsbench.c) time the filesystem calls. All configurations see the same data.
"""

import glob
import os
import shutil
import subprocess

from configs import umount

GiB = 1 << 30
MiB = 1 << 20
KiB = 1 << 10

# Sizes of a full run (the issue's) and of a --quick smoke run.
SIZES = {
    "full": dict(create=20_000, stat=20_000, write=1 * GiB, read=1 * GiB,
                 copyup=2_000, readdir=100_000, mix=2_000, dirty=1 * GiB,
                 mounts=1_000, fanout_timeout=15),
    "quick": dict(create=2_000, stat=2_000, write=64 * MiB, read=64 * MiB,
                  copyup=200, readdir=10_000, mix=300, dirty=64 * MiB,
                  mounts=10, fanout_timeout=5),
}


class TrialError(Exception):
    pass


def human_count(n):
    return f"{n:,}"


def human_bytes(n):
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    return f"{n // KiB} KiB"


class Workload:
    key = ""
    writes = True          # the plain tree must be fresh for every trial

    def __init__(self, sizes):
        self.s = sizes

    def title(self):
        raise NotImplementedError

    def build_layer(self, env, path, layer):
        """Fills lower layer `layer` (0 = top) at path; default: empty."""
        os.makedirs(path, exist_ok=True)

    def build_plain(self, env, path):
        """The merged content as one plain tree (layers never share a name)."""
        for layer in (1, 0):
            self.build_layer(env, path, layer)

    def build_extra(self, env, path):
        """Data outside the layers (e.g. a source tree to unpack)."""

    def na(self, cfg, env):
        """A reason why this workload does not apply to cfg, or ""."""
        return ""

    def before(self, env, cfg, view, data):
        """Untimed preparation after the mount, before the timed part."""

    def measure(self, env, cfg, view, data):
        raise NotImplementedError


class Create(Workload):
    key = "create"

    def title(self):
        return f"create {human_count(self.s['create'])} files of 4 KiB"

    def measure(self, env, cfg, view, data):
        return env.helper("create", view, self.s["create"], 4096, 1000)


class StatCold(Workload):
    key = "stat"
    writes = False

    def title(self):
        return f"stat {human_count(self.s['stat'])} lower files, cold caches"

    def build_layer(self, env, path, layer):
        # 20 directories, each in both layers: even files on top, odd ones below,
        # so half of the lookups fall through the top layer.
        env.helper("populate", path, self.s["stat"], 1, 1000, 2, layer)

    def before(self, env, cfg, view, data):
        env.drop_caches()   # the mount is fresh, so the overlay's caches are cold too

    def measure(self, env, cfg, view, data):
        return env.helper("stat", view, self.s["stat"], 1000)


class WriteFsync(Workload):
    key = "write"

    def title(self):
        return f"write {human_bytes(self.s['write'])} then fsync"

    def measure(self, env, cfg, view, data):
        return env.helper("write", f"{view}/out.bin", self.s["write"])


class ReadWarm(Workload):
    key = "read"
    writes = False

    def title(self):
        return f"read {human_bytes(self.s['read'])}, warm"

    def build_layer(self, env, path, layer):
        os.makedirs(path, exist_ok=True)
        if layer == 1:
            env.helper("write", f"{path}/big.bin", self.s["read"])

    def measure(self, env, cfg, view, data):
        # Two untimed reads through the mount first, then the timed one: the first
        # fills the mount's own page cache, and the second touch of new page-cache
        # pages costs more than later ones (the kernel promotes them to its active
        # list then). The pages of a file read in every trial (the plain
        # directory's, a kernel overlay's lower file) are past that already; timed
        # after one read, a FUSE mount alone pays it (about 40 ms per GiB here).
        return env.helper("read", f"{view}/big.bin", 2)


class CopyUp(Workload):
    key = "copyup"

    def title(self):
        return f"copy-up: append 1 byte to {human_count(self.s['copyup'])} lower files of 64 KiB"

    def build_layer(self, env, path, layer):
        env.helper("populate", path, self.s["copyup"], 64 * KiB, 100, 2, layer)

    def before(self, env, cfg, view, data):
        # Lower data warm in the page cache, the overlay's own caches cold.
        for d in ([view] if not cfg.is_overlay else data["lowers"]):
            env.helper("warm", d)

    def measure(self, env, cfg, view, data):
        return env.helper("append", view, self.s["copyup"], 100)


class Readdir(Workload):
    key = "readdir"
    writes = False

    def title(self):
        return f"readdir of a merged directory of {human_count(self.s['readdir'])} entries"

    def build_layer(self, env, path, layer):
        # One directory in both layers, half of the names in each.
        env.helper("populate", f"{path}/big", self.s["readdir"], 0, 0, 2, layer)

    def before(self, env, cfg, view, data):
        # The lower directories listed once, from the layers themselves: the lower
        # filesystem's caches are warm, the overlay's cold.
        n = self.s["readdir"]
        if not cfg.is_overlay:
            env.helper("readdir", f"{view}/big", n)
            return
        for layer, path in enumerate(data["lowers"]):
            env.helper("readdir", f"{path}/big", (n + 1 - layer) // 2)

    def measure(self, env, cfg, view, data):
        return env.helper("readdir", f"{view}/big", self.s["readdir"])


class BuildMix(Workload):
    key = "mix"

    def title(self):
        n = self.s["mix"]
        return f"build-like mix: unpack {human_count(n)} files over {human_count(n)} lower ones, read, modify, delete"

    def build_layer(self, env, path, layer):
        # A source-like tree: 40 directories, sizes 256 B .. 16 KiB, split by layer.
        env.helper("populate", f"{path}/base", self.s["mix"], "v16384",
                   max(1, self.s["mix"] // 40), 2, layer)

    def build_extra(self, env, path):
        env.helper("populate", f"{path}/src", self.s["mix"], "v16384",
                   max(1, self.s["mix"] // 40), 1, 0)

    def before(self, env, cfg, view, data):
        for d in [data["extra"]] + ([view] if not cfg.is_overlay else data["lowers"]):
            env.helper("warm", d)

    def measure(self, env, cfg, view, data):
        return env.helper("mix", f"{data['extra']}/src", f"{view}/unpacked", view)


class SyncfsDirty(Workload):
    key = "syncfs"

    def title(self):
        return f"syncfs of the mount with {human_bytes(self.s['dirty'])} dirty"

    def na(self, cfg, env):
        if cfg.kind == "fuse-overlayfs":
            return "syncfs(2) is not sent to FUSE daemons; fuse-overlayfs has no other way"
        if cfg.kind == "ovlfs":
            return env.sync_na.get(cfg.name, "")
        return ""

    def measure(self, env, cfg, view, data):
        return env.helper("dirtysync", f"{view}/dirty.bin", self.s["dirty"],
                          env.sync_method(cfg), view)


class Fanout(Workload):
    """One upper error, N mounts on that upper: time until every mount reported it.

    The upper is ext4 on a loop device whose image lives on a small tmpfs (SPEC §4):
    a preallocated victim file is written through mount 0 once the tmpfs is full, and
    syncfs(2) of the upper filesystem records the writeback error. From then on each
    mount's syncfs is called through a new fd, in rounds, until all have failed."""

    key = "fanout"

    def title(self):
        return f"one upper error reaches {human_count(self.s['mounts'])} mounts"

    def na(self, cfg, env):
        if cfg.kind == "plain":
            return "no overlay mounts"
        if cfg.kind == "fuse-overlayfs":
            return "syncfs(2) is not sent to FUSE daemons: fuse-overlayfs never reports"
        if cfg.kind == "ovlfs":
            return env.sync_na.get(cfg.name, "")
        return ""

    def build_layer(self, env, path, layer):
        os.makedirs(path, exist_ok=True)
        with open(f"{path}/layer{layer}", "w") as f:
            f.write("lower\n")

    def run_trial(self, env, cfg, data):
        n = self.s["mounts"]
        fan = f"{env.tmp}/fan"
        shutil.rmtree(fan, ignore_errors=True)
        tmpfs, upper = f"{fan}/tmpfs", f"{fan}/U"
        os.makedirs(tmpfs)
        os.makedirs(upper)
        mounts = []
        record = ""
        try:
            env.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs", tmpfs])
            img = f"{tmpfs}/upper.img"
            env.run(["truncate", "-s", "512M", img])
            env.run(["mkfs.ext4", "-q", "-F", "-E",
                     "lazy_itable_init=0,lazy_journal_init=0,nodiscard", img])
            env.run(["mount", "-o", "loop,errors=continue", img, upper])  # autoclear
            # The upper's error record, which ovlfs keeps (it held an error): removed
            # below, once every mount on that upper is gone.
            dev = os.stat(upper).st_dev
            uuid = subprocess.run(["blkid", "-s", "UUID", "-o", "value", img],
                                  capture_output=True, text=True).stdout.strip()
            record = (f"ovlfs-wb-*{os.major(dev)}.{os.minor(dev)}-{uuid.replace('-', '')}"
                      if uuid else "")
            for i in range(n):
                u, w, m = f"{upper}/u{i}", f"{upper}/w{i}", f"{fan}/m{i}"
                os.makedirs(u)
                os.makedirs(w)
                env.mounter.mount(cfg, data["lowers"], u, w, m, track=False)
                mounts.append(m)
            env.mounter.track(mounts)
            victim = f"{fan}/m0/victim"
            env.helper("prealloc", victim, 4 * MiB)
            env.helper("sync", "syncfs", upper)
            env.helper("fill", f"{tmpfs}/filler")
            env.helper("overwrite", victim, 4 * MiB)
            rss = sum(rss_kib(p) for m in mounts for p in env.mounter.daemons.get(m, []))
            res = env.helper("fanout", upper, fan, n, env.sync_method(cfg),
                             self.s["fanout_timeout"])
            if rss:
                res["daemons_rss_mib"] = round(rss / 1024, 1)
            return res
        finally:
            try:
                os.unlink(f"{tmpfs}/filler")
            except OSError:
                pass
            for m in reversed(mounts):
                env.mounter.umount(m)
            for p in (upper, tmpfs):
                if not umount(p):
                    umount(p, "-l")
            shutil.rmtree(fan, ignore_errors=True)
            for r in glob.glob(f"/dev/shm/{record}") if record else []:
                try:
                    os.unlink(r)
                except OSError:
                    pass


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


ALL = [Create, StatCold, WriteFsync, ReadWarm, CopyUp, Readdir, BuildMix, SyncfsDirty,
       Fanout]
KEYS = [w.key for w in ALL]
