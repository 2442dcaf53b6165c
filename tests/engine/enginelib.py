"""enginelib: podman and buildah on a storage of their own, for ovlfs's engine tests.
Stdlib only.

An Engine is one containers-storage (graphroot, runroot, containers.conf, storage.conf,
registries.conf, temporary directories) under a directory of the test's, driven either by
the kernel's overlayfs (podman's native overlay driver) or by ovlfs as the overlay driver's
`mount_program`. Nothing is written outside that directory: every path podman, buildah,
conmon and crun would use by default (/var/lib/containers, /run/containers, /run/libpod,
/run/crun, /var/tmp, /etc/cni) is either set in the configuration or hidden by a mount of
the test's private mount namespace.

Every command runs under a watchdog: when it outlives its timeout, the thread backtraces
of the engine's ovlfs daemons are printed (gdb), the daemons and the command are killed,
and Hung is raised (the engine is then unusable).

Images are made offline: make_docker_archive() writes a docker-archive (what `podman save`
writes and `podman load` reads) from layers described as lists of Entry, with AUFS
whiteouts (`.wh.NAME`, `.wh..wh..opq`) as image layers carry them. Every timestamp is
fixed, so the same description gives the same image ID on every engine.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "mount"))
import wblib  # noqa: E402  (private namespace, cleanup stack, mount table, checks)

EPOCH = 1700000000  # every mtime and `created` of the images made here


class Hung(RuntimeError):
    """A command outlived its timeout (backtraces were printed, processes killed)."""


# ---------------------------------------------------------------------------------------
# Image archives


@dataclass
class Entry:
    """One tar member of a layer. kind: f (file), d (dir), l (symlink), h (hard link to
    `target`), c / b (device, `dev` = (major, minor)), p (fifo)."""
    name: str
    kind: str = "f"
    data: bytes | str = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    target: str = ""
    dev: tuple[int, int] = (0, 0)


_TYPES = {"f": tarfile.REGTYPE, "d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE,
          "h": tarfile.LNKTYPE, "c": tarfile.CHRTYPE, "b": tarfile.BLKTYPE,
          "p": tarfile.FIFOTYPE}


def layer_tar(entries: list[Entry]) -> bytes:
    """The uncompressed tar of one layer (parents before children, as listed)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = _TYPES[e.kind]
            ti.mtime = EPOCH
            ti.uid, ti.gid = e.uid, e.gid
            ti.uname = ti.gname = ""
            ti.mode = e.mode if e.mode is not None else (0o755 if e.kind in "dl" else 0o644)
            data = e.data.encode() if isinstance(e.data, str) else e.data
            if e.kind in "lh":
                ti.linkname = e.target
            if e.kind in "cb":
                ti.devmajor, ti.devminor = e.dev
            if e.kind == "f":
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
            else:
                tar.addfile(ti)
    return buf.getvalue()


def make_docker_archive(path: str, tag: str, layers: list[list[Entry]],
                        cmd: list[str] | None = None) -> str:
    """Writes a docker-archive of the layers (bottom first) tagged `tag` at path and
    returns the image ID (the config's digest)."""
    tars = [layer_tar(entries) for entries in layers]
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(EPOCH))
    config = {
        "architecture": "amd64", "os": "linux", "created": created,
        "config": {"Env": ["PATH=/bin"], "Cmd": cmd or ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": created, "created_by": f"ovlfs engine test layer {i}"}
                    for i in range(len(tars))],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    image_id = hashlib.sha256(config_bytes).hexdigest()
    manifest = [{"Config": f"{image_id}.json", "RepoTags": [tag],
                 "Layers": [f"{d.split(':')[1]}/layer.tar" for d in diff_ids]}]
    with tarfile.open(path, "w") as out:
        def add(name: str, data: bytes) -> None:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), EPOCH, 0o644
            out.addfile(ti, io.BytesIO(data))
        add(f"{image_id}.json", config_bytes)
        for d, t in zip(diff_ids, tars):
            add(f"{d.split(':')[1]}/layer.tar", t)
        add("manifest.json", json.dumps(manifest).encode())
    return image_id


def is_static_elf(path: str) -> bool:
    """Whether path is a 64-bit ELF executable without a program interpreter (an image
    made of it alone runs)."""
    import struct
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    if head[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", head, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
    return all(struct.unpack_from("<I", head, phoff + i * phentsize)[0] != 3  # PT_INTERP
               for i in range(phnum))


def describe_layer(data: bytes) -> list[str]:
    """One line per member of a layer tar, sorted, without timestamps: name, type, mode,
    owner, and per type the size and content digest, link target or device numbers;
    the extended attributes it carries (names and values)."""
    lines = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            kind = {tarfile.REGTYPE: "f", tarfile.AREGTYPE: "f", tarfile.DIRTYPE: "d",
                    tarfile.SYMTYPE: "l", tarfile.LNKTYPE: "h", tarfile.CHRTYPE: "c",
                    tarfile.BLKTYPE: "b", tarfile.FIFOTYPE: "p"}.get(m.type, repr(m.type))
            line = f"{m.name.rstrip('/')} {kind} {m.mode:04o} {m.uid}:{m.gid}"
            if kind == "f":
                f = tar.extractfile(m)
                line += f" s={m.size} {hashlib.md5(f.read()).hexdigest()[:8]}"
            elif kind in "lh":
                line += f" -> {m.linkname}"
            elif kind in "cb":
                line += f" {m.devmajor}:{m.devminor}"
            xattrs = sorted((k.removeprefix("SCHILY.xattr."), v)
                            for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr."))
            for k, v in xattrs:
                line += f" xattr:{k}={v!r}"
            lines.append(line)
    return sorted(lines)


class LayerModel:
    """The tree that a stack of layer tars makes, applied as an engine applies them (OCI
    image spec: a layer's whiteouts first, `.wh.NAME` hiding NAME below and
    `.wh..wh..opq` everything below in its directory, then its entries).

    Two stacks make the same tree whatever way their layers were computed: podman's
    native overlay diff reads the container's upper directory (a directory emptied and
    made again is one opaque marker, a file copied up for a hard link comes with it),
    while with a mount_program containers-storage always diffs the mounted trees (one
    whiteout per deleted name, only what changed). The layers themselves differ; what
    they make must not."""

    def __init__(self) -> None:
        self.tree: dict[str, str] = {}  # path -> description (no times)

    def apply(self, data: bytes) -> None:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            below = set(self.tree)
            for m in members:  # whiteouts hide what the layers below hold
                path = os.path.normpath(m.name).lstrip("/")
                parent, base = os.path.dirname(path), os.path.basename(path)
                if base == ".wh..wh..opq":
                    self._remove_under(parent, below)
                elif base.startswith(".wh."):
                    self._remove(os.path.join(parent, base[4:]), below)
            for m in members:
                path = os.path.normpath(m.name).lstrip("/")
                if os.path.basename(path).startswith(".wh."):
                    continue
                old = self.tree.get(path, "")
                if old and not (old.startswith("d ") and m.isdir()):
                    self._remove(path, set(self.tree))
                if m.islnk():
                    target = os.path.normpath(m.linkname).lstrip("/")
                    self.tree[path] = self.tree.get(target, f"? hard link to missing {target}")
                else:
                    self.tree[path] = self._describe(tar, m)

    @staticmethod
    def _describe(tar: tarfile.TarFile, m: tarfile.TarInfo) -> str:
        mode = f"{m.mode & 0o7777:04o} {m.uid}:{m.gid}"
        if m.isdir():
            return f"d {mode}"
        if m.isreg():
            return f"f {mode} s={m.size} {hashlib.md5(tar.extractfile(m).read()).hexdigest()[:8]}"
        if m.issym():
            return f"l -> {m.linkname}"
        if m.ischr() or m.isblk():
            return f"{'c' if m.ischr() else 'b'} {mode} {m.devmajor}:{m.devminor}"
        if m.isfifo():
            return f"p {mode}"
        return f"? type {m.type!r}"

    def _remove(self, path: str, among: set[str]) -> None:
        for p in [p for p in among if p == path or p.startswith(path + "/")]:
            self.tree.pop(p, None)

    def _remove_under(self, path: str, among: set[str]) -> None:
        prefix = path + "/" if path not in ("", ".") else ""
        for p in [p for p in among if p.startswith(prefix) and p != path]:
            self.tree.pop(p, None)

    def listing(self, skip: tuple[str, ...] = ()) -> list[str]:
        return [f"{p} {d}" for p, d in sorted(self.tree.items())
                if not any(p == s or p.startswith(s + "/") for s in skip)]


def layer_effects(layers: list[bytes], first: int) -> tuple[list[str], LayerModel]:
    """What each layer from index `first` on does to the tree the layers below make
    (`+ line` added or changed, `- line` gone or changed), and the model of the whole
    stack."""
    model, out = LayerModel(), []
    for i, data in enumerate(layers):
        before = set(model.listing())
        model.apply(data)
        if i >= first:
            after = set(model.listing())
            out.append(f"== layer {i + 1}")
            out += sorted([f"- {x}" for x in before - after] + [f"+ {x}" for x in after - before],
                          key=lambda x: (x[2:].split(" ")[0], x[0] == "+"))
    return out, model


def layer_internals(data: bytes) -> list[str]:
    """Members of a layer tar that are an overlay's bookkeeping, not the image's: 0:0
    character devices (the kernel's whiteouts) and overlay xattrs."""
    bad = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar.getmembers():
            if m.ischr() and (m.devmajor, m.devminor) == (0, 0):
                bad.append(f"{m.name}: a 0:0 character device")
            for k in m.pax_headers:
                if k.startswith("SCHILY.xattr.") and (".overlay." in k or "fuseoverlayfs" in k):
                    bad.append(f"{m.name}: xattr {k.removeprefix('SCHILY.xattr.')}")
    return bad


def saved_layers(archive: str) -> list[bytes]:
    """The layer tars (bottom first) of a docker-archive written by `podman save`."""
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        return [tar.extractfile(name).read() for name in manifest[0]["Layers"]]


# ---------------------------------------------------------------------------------------
# Processes of an engine


def processes_mentioning(text: str, exe: str | None = None) -> dict[int, str]:
    """Processes (pid -> command line) whose command line contains text (and whose
    executable is exe, when given). The test's own process never matches: its command
    line holds no path of its temporary directory."""
    found = {}
    me = os.getpid()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            if text not in cmdline:
                continue
            if exe is not None and os.path.realpath(f"/proc/{pid}/exe") != exe:
                continue  # (a zombie has no exe: an ended daemon not reaped yet)
        except OSError:
            continue
        found[int(pid)] = cmdline
    return found


def backtraces(pids) -> str:
    """Every thread's backtrace of each process (gdb -batch), as one text."""
    out = []
    for pid in pids:
        try:
            p = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                               capture_output=True, text=True, timeout=60)
            out.append(f"=== backtraces of {pid}\n{p.stdout}{p.stderr}")
        except (OSError, subprocess.TimeoutExpired) as e:
            out.append(f"=== backtraces of {pid}: gdb failed: {e}")
    return "\n".join(out)


def kill_all(pids, sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------
# The host, as the engines see it

# Made read-only in the test's mount namespace: a default path the configuration does not
# reach (containers/image's blob-info cache in /var/lib/containers/cache, for one) then
# fails there, or makes the engine fall back to memory, instead of writing to the host.
READ_ONLY = ("/etc", "/usr", "/var", "/root", "/home", "/opt", "/srv", "/boot")
# Replaced by empty directories of the test's: crun keeps its containers' state in
# /run/crun whatever podman's tmp_dir says, and buildah (podman build) puts its big
# temporary files in /var/tmp whatever TMPDIR says.
REPLACED = ("/run", "/var/tmp")


def isolate_host(cleanup: wblib.Cleanup, top: str) -> list[str]:
    """In the test's private mount namespace: READ_ONLY read-only (a non-recursive bind
    over each, so the mounts below them are hidden too), each of REPLACED by an empty
    directory under top, and /sys/fs/cgroup by an empty read-only tmpfs: the engines
    see no cgroup hierarchy, so nothing of theirs can make or join a cgroup of the host
    (podman runs with `cgroups = "disabled"`, buildah's runtime with
    --cgroup-manager=disabled). Hiding the hierarchy also spares crun this kind of host's
    hybrid layout, which it refuses even with cgroups disabled ("cgroups in hybrid mode
    not supported, drop all controllers from cgroupv2"). Returns what it did."""
    done = []
    for path in READ_ONLY:
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        # Not undone: they go with the namespace, and /usr stays busy while we run.
        wblib.run(["mount", "--bind", path, path])
        wblib.run(["mount", "-o", "remount,bind,ro", path])
        done.append(f"{path} read-only")
    for path in REPLACED:
        mine = os.path.join(top, path.strip("/").replace("/", "-"))
        os.makedirs(mine, mode=0o1777 if path.endswith("tmp") else 0o755, exist_ok=True)
        os.chmod(mine, 0o1777 if path.endswith("tmp") else 0o755)
        wblib.mount(cleanup, mine, path, options="bind")
        done.append(f"{path} = {mine}")
    wblib.mount(cleanup, "ovlfs-test-nocgroup", "/sys/fs/cgroup", "tmpfs", "size=4k,mode=0555,ro")
    done.append("/sys/fs/cgroup hidden")
    return done


# ---------------------------------------------------------------------------------------
# Engines

STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{graph}"
runroot = "{run}"

[storage.options]
additionalimagestores = []
pull_options = {{enable_partial_images = "false", use_hard_links = "false", ostree_repos = ""}}

[storage.options.overlay]
{overlay}
"""

CONTAINERS_CONF = """\
[containers]
# crun refuses this kind of host's hybrid cgroup layout; the tests need no cgroups.
cgroups = "disabled"
# root here may lack CAP_SYS_RESOURCE: podman's default limits (1048576) would exceed
# the hard limits and crun would fail to set them (setrlimit: Operation not permitted).
default_ulimits = [{ulimits}]
netns = "none"
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{top}/events.log"
runtime = "crun"
tmp_dir = "{top}/t"
static_dir = "{graph}/libpod"
volume_path = "{graph}/volumes"
image_copy_tmp_dir = "{top}/tmp"
no_pivot_root = false

[network]
network_backend = "cni"
network_config_dir = "{top}/net"
"""

REGISTRIES_CONF = """\
unqualified-search-registries = []
short-name-mode = "disabled"
"""


class Engine:
    """podman (and buildah) on a storage of its own under top: podman's native overlay
    (program None) or the overlay driver with mount_program = program (ovlfs, or another
    to compare with)."""

    def __init__(self, name: str, top: str, program: str | None):
        self.name, self.top, self.program = name, top, program
        self.graph, self.runroot = f"{top}/g", f"{top}/r"
        for d in (self.graph, self.runroot, f"{top}/t", f"{top}/tmp", f"{top}/net",
                  f"{top}/home", f"{top}/work"):
            os.makedirs(d, exist_ok=True)
        self.hung = False
        # nodev: Debian's default (/usr/share/containers/storage.conf). A mount flag, it
        # never reaches a mount program; here it did not reach the containers' kernel
        # overlay mounts either (podman 4.3 passes them options of its own).
        self.storage_opts = ["overlay.mountopt=nodev"]
        if program:
            self.storage_opts.append(f"overlay.mount_program={program}")
        overlay = "\n".join('{} = "{}"'.format(*o.removeprefix("overlay.").split("=", 1))
                            for o in self.storage_opts)
        # nofile: our hard limit (podman raises its own to it). nproc: a small number,
        # since the runtime does not inherit our hard limit (crun ran with 32768 under
        # our 96367 here), and root in the container is not held to it anyway.
        limits = {"nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[1],
                  "nproc": min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)}
        ulimits = ", ".join(f'"{name}={hard}:{hard}"' for name, hard in limits.items()
                            if hard != resource.RLIM_INFINITY)
        self._write("storage.conf", STORAGE_CONF.format(graph=self.graph, run=self.runroot,
                                                        overlay=overlay))
        self._write("containers.conf", CONTAINERS_CONF.format(top=top, graph=self.graph,
                                                              ulimits=ulimits))
        self._write("registries.conf", REGISTRIES_CONF)
        self._write("auth.json", "{}")
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": f"{top}/home", "LANG": "C",
            "TMPDIR": f"{top}/tmp", "XDG_RUNTIME_DIR": f"{top}/t",
            "CONTAINERS_CONF": f"{top}/containers.conf",
            "CONTAINERS_STORAGE_CONF": f"{top}/storage.conf",
            "CONTAINERS_REGISTRIES_CONF": f"{top}/registries.conf",
            "REGISTRY_AUTH_FILE": f"{top}/auth.json",
            "BUILDAH_ISOLATION": "oci",
        }

    def _write(self, name: str, text: str) -> None:
        with open(f"{self.top}/{name}", "w") as f:
            f.write(text)

    def placeholders(self, text: str) -> str:
        """text with this engine's paths spelled alike for every engine."""
        return text.replace(self.top, "$TOP")

    def storage_flags(self) -> list[str]:
        # Given on the command line, --root (and --storage-driver) make podman drop
        # storage.conf's driver options: they are repeated here.
        flags = ["--root", self.graph, "--runroot", self.runroot]
        for opt in self.storage_opts:
            flags += ["--storage-opt", opt]
        return flags

    def podman_cmd(self, args: list[str]) -> list[str]:
        return ["podman", "--log-level=error", *self.storage_flags(), *args]

    def buildah_cmd(self, args: list[str]) -> list[str]:
        return ["buildah", "--log-level=error", *self.storage_flags(), *args]

    def describe(self, cmd: list[str]) -> str:
        """cmd as a reader wants it: the program and its arguments after the storage
        flags, a script argument shown as <script>."""
        prefix = len(self.podman_cmd([]))  # buildah's flags are as many
        args = cmd[prefix:] if cmd[0] in ("podman", "buildah") else cmd[1:]
        return " ".join([cmd[0]] + ["<script>" if "\n" in a else a for a in args])

    def podman(self, *args: str, timeout: float = 60, check: bool = True, input: str | None = None
               ) -> subprocess.CompletedProcess:
        return self.run(self.podman_cmd(list(args)), timeout=timeout, check=check, input=input)

    def buildah(self, *args: str, timeout: float = 60, check: bool = True
                ) -> subprocess.CompletedProcess:
        return self.run(self.buildah_cmd(list(args)), timeout=timeout, check=check)

    def run(self, cmd: list[str], *, timeout: float, check: bool, input: str | None = None
            ) -> subprocess.CompletedProcess:
        """Runs cmd under the watchdog; raises wblib.CommandError (with stderr) if it
        fails and check is set, Hung when it outlives timeout."""
        if self.hung:
            raise Hung(f"not run after an earlier hang: {self.describe(cmd)}")
        child = subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else
                                 subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=self.env,
                                 cwd=f"{self.top}/work", start_new_session=True)
        try:
            out, err = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            self.hung = True
            print(f"TIMEOUT ({timeout:.0f} s, {self.name}): {self.describe(cmd)}", flush=True)
            daemons = self.daemons()
            for pid, line in daemons.items():
                print(f"  ovlfs daemon {pid}: {line}", flush=True)
            if daemons:
                print(backtraces(daemons), flush=True)
            kill_all(daemons)
            try:
                os.killpg(child.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            out, err = child.communicate()
            print(f"  its stdout: {out[-2000:]!r}\n  its stderr: {err[-2000:]!r}", flush=True)
            raise Hung(f"{self.describe(cmd)} did not end within {timeout:.0f} s "
                       f"(daemons killed: {sorted(daemons)})")
        if check and child.returncode != 0:
            raise wblib.CommandError(cmd, child.returncode, err or out)
        return subprocess.CompletedProcess(cmd, child.returncode, out, err)

    def mounts(self) -> list[dict[str, str]]:
        """The mounts under top in the namespace where the engine mounts: this one (a
        rootless engine mounts in a namespace of its own, and says so by overriding)."""
        return wblib.mounts_under(self.top)

    def daemons(self) -> dict[int, str]:
        """This engine's mount program processes (ovlfs daemons): their command lines
        hold its storage's paths."""
        if not self.program:
            return {}
        return processes_mentioning(self.top, exe=os.path.realpath(self.program))

    def teardown(self) -> list[str]:
        """Ends whatever the engine left: processes naming its directory (conmon, ovlfs
        daemons, containers' runtimes), then every mount under it (innermost first).
        Returns what it had to do, for the report."""
        notes = []
        for cmd in (self.podman_cmd(["rm", "-a", "-f", "-t", "0"]),
                    self.buildah_cmd(["rm", "-a"])):
            if shutil.which(cmd[0]) and os.path.isdir(self.graph):
                try:  # containers first: their processes keep mounts busy
                    subprocess.run(cmd, env=self.env, capture_output=True, timeout=20,
                                   cwd=f"{self.top}/work")
                except subprocess.TimeoutExpired:
                    notes.append(f"{self.describe(cmd)}: timed out")
        left = processes_mentioning(self.top)
        if left:
            notes += [f"killed {pid}: {line}" for pid, line in left.items()]
            kill_all(left)
        for m in sorted(wblib.mounts_under(self.top), key=lambda m: -len(m["mountpoint"])):
            mp = m["mountpoint"]
            if subprocess.run(["umount", mp], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mp], capture_output=True)
            notes.append(f"unmounted {mp} ({m['fstype']})")
        return notes


def unified_diff(a: str, b: str, name_a: str, name_b: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True),
                                        fromfile=name_a, tofile=name_b, n=2))
