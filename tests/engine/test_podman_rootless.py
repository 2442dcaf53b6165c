#!/usr/bin/env python3
"""Rootless podman with ovlfs as containers-storage's mount_program (issue 18; SPEC.md §5),
each check compared with podman's native overlay rootless (the kernel's overlayfs mounted
inside the user's user namespace, as Linux 5.11+ allows).

The checks of test_podman.py (layers, run, commit, build, dirlinks, volume `-v DIR:/x:O`,
uidmap, keep-id, info, buildah, unmount), run by a normal user: podman re-executes itself
in a user namespace made with newuidmap/newgidmap from the user's /etc/subuid and
/etc/subgid ranges, where it is uid 0 with its own mount namespace, and runs the mount
program there. Besides them:

  keep-id   (`--userns=keep-id`, refused rootful) must show the user's own ids inside.
  info      `podman info` names the mount program, says rootless, and maps the user's
            subordinate ids.
  status    a running container with a `-v DIR:/x:O` volume, seen from podman's
            namespace: on the ovlfs run both of its mounts (root filesystem and volume)
            are ovlfs's, their daemons run as the user on the host (uid 0 of the user
            namespace), `podman unshare ovlfs status MNT` shows `metadata: user.overlay.*`
            and no passthrough, and the writeback-error record is the user's own
            (`/dev/shm/ovlfs-wb-u<UID>-...`, the user's file, mode 0600).
  unmount   reads the mounts in podman's namespace (`podman unshare`), where they are.

What a user namespace changes in test_podman's checks (adapt_for_rootless, and the
wrappers below; every change holds for the mount program as for the kernel):
  * No device nodes but 0:0 whiteouts can be made: the image has none, a container's
    mknod of a device must fail (EPERM), the Containerfile makes a fifo instead.
  * `--uidmap`: podman gives the kernel a chowned copy of the image stacked over its
    layers, and the mount program the layers with uidmapping=, so that directory link
    counts differ by construction: uidmap's `ls -lnd` leaves the directory out.
  * Known defects of the native run, printed and not counted for it (still expected of
    the mount program): the kernel's overlayfs with userxattr gives a lower file that was
    hard-linked in the container two inode numbers (`[ c -ef hl_c ]` false; the line is
    left out of the comparison), and podman 4.3's native rootless diff copies the
    kernel's user.overlay.* xattrs (origin, impure) into the layers it commits.

Set-up, all of it undone on any exit (and most of it never visible outside the test):

  * The test runs as pid 1 of a PID namespace of its own (a forwarding parent outside
    passes SIGTERM and SIGHUP on), with a private mount namespace and its own
    /proc: every process podman starts, the pause process that holds its namespaces
    included, is the test's and dies with it, even when the test is SIGKILLed (then
    only its directory, /tmp/or.*, is left).
  * The user: a name and uid that the host does not use (61000 and up), with subordinate
    ranges beyond useradd's (SUB_UID_MAX). It exists only in the test's mount namespace:
    copies of /etc/passwd, /etc/group, /etc/subuid and /etc/subgid with one line more
    each are bind-mounted over the host's, so the host's files are never written (and
    nothing can be left in them, nor race with another test that adds users).
  * /dev/fuse (mode 0600 on a host without udev): a 0666 character device 10,229 made
    on a tmpfs in the test's directory is bind-mounted over it, in the test's
    namespace only.
  * Every podman, buildah and `podman unshare` runs as the user (setpriv --reuid --regid
    --init-groups), with HOME, XDG_RUNTIME_DIR (0700, the user's) and the storage
    (storage.conf, containers.conf: graphroot and runroot, cgroups disabled, limits within
    the hard limits) in the test's directory, which belongs to the user. The image reaches
    the user's storage by `podman load` of the docker-archive made here.
  * At the end: podman rm of everything, then every process left in the PID namespace
    (the pause process, conmon, daemons) killed and reaped, then the mounts and the
    directory removed.

--reference PROGRAM runs every check a third time with another mount program (e.g.
fuse-overlayfs), for comparison only. Needs root, podman, newuidmap, newgidmap and setpriv
(else exit 77: skipped).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import enginelib as E  # noqa: E402
import test_podman as P  # noqa: E402
from enginelib import wblib  # noqa: E402

USER_NAME = "ovlfs-rootless"
UID_FIRST = 61000          # above useradd's UID_MAX (60000), below nobody
SUB_FIRST = 700000000      # above useradd's SUB_UID_MAX (600100000)
SUB_COUNT = 262144         # --uidmap 0:100000:65536 needs 165536 ids in podman's namespace
_PIDNS_ENV = "OVLFS_ROOTLESS_PIDNS"
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1

# ---------------------------------------------------------------------------------------
# The PID namespace


def enter_pid_namespace() -> None:
    """Makes the rest of the test run as pid 1 of a new PID namespace: when it ends, the
    kernel kills every process left in it. The parent stays outside, passes SIGTERM and
    SIGHUP on, and exits with the test's status; if it is killed, the test gets SIGKILL
    (PR_SET_PDEATHSIG)."""
    if os.environ.get(_PIDNS_ENV) == "1" and os.getpid() == 1:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")
    sys.stdout.flush()
    sys.stderr.flush()
    alive_r, alive_w = os.pipe()  # EOF once the parent is gone
    child = os.fork()
    if child == 0:
        os.close(alive_w)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if select.select([alive_r], [], [], 0)[0]:  # the parent died before the prctl
            os._exit(1)
        os.close(alive_r)
        os.environ[_PIDNS_ENV] = "1"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    os.close(alive_r)
    signalled = []

    def forward(signum, _frame):
        signalled.append(time.monotonic())
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, forward)
    # The terminal's ^C reaches the test directly (one process group): passed on too, it
    # would come twice, the second time into the cleanup of the first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            os._exit(1)
        if pid:
            break
        # pid 1 takes only signals it has a handler for: if the test has none yet (or
        # hangs in its cleanup), SIGKILL after 60 s ends it and everything it started.
        if signalled and time.monotonic() - signalled[0] > 60:
            os.kill(child, signal.SIGKILL)
        time.sleep(0.1)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def our_processes() -> dict[int, str]:
    """Every process of this PID namespace but the test itself (pid 1)."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                found[int(pid)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            pass
    return found


def reap() -> None:
    """Waits for every ended child (as pid 1, orphans are ours to reap)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_everything_left(timeout: float = 15) -> list[str]:
    """SIGKILL to every other process of the namespace until none is left (zombies are
    reaped). Returns what was killed."""
    notes, seen = [], set()
    deadline = time.monotonic() + timeout
    while True:
        reap()
        left = {pid: line for pid, line in our_processes().items()
                if _state(pid) not in ("Z", "X", "")}
        if not left:
            reap()
            return notes
        for pid, line in left.items():
            if pid not in seen:
                notes.append(f"killed {pid}: {line or '(no command line)'}")
                seen.add(pid)
        E.kill_all(left)
        if time.monotonic() > deadline:
            notes.append(f"still alive after {timeout:.0f} s: {sorted(left)}")
            return notes
        time.sleep(0.1)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


# ---------------------------------------------------------------------------------------
# The user


class User:
    def __init__(self, name: str, uid: int, gid: int, home: str):
        self.name, self.uid, self.gid, self.home = name, uid, gid, home
        self.sub_first, self.sub_count = SUB_FIRST, SUB_COUNT

    def cmd(self, args: list[str]) -> list[str]:
        """args run as the user (its groups: its own; no capabilities)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                "--", *args]


def _ids_in(path: str, field: int) -> set[int]:
    ids = set()
    with open(path) as f:
        for line in f:
            parts = line.split(":")
            if len(parts) > field and parts[field].strip().isdigit():
                ids.add(int(parts[field]))
    return ids


def _names_in(path: str) -> set[str]:
    with open(path) as f:
        return {line.split(":", 1)[0] for line in f if ":" in line}


def _ranges_in(path: str) -> list[tuple[int, int]]:
    out = []
    with open(path) as f:
        for line in f:
            parts = line.strip().split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                out.append((int(parts[1]), int(parts[2])))
    return out


def add_user(cl: wblib.Cleanup, top: str) -> User:
    """A user that only this mount namespace knows: /etc/passwd, /etc/group, /etc/subuid
    and /etc/subgid are replaced here by copies with the user's lines added (bind mounts
    over the host's files, which stay as they are)."""
    used_uids = _ids_in("/etc/passwd", 2) | _ids_in("/etc/group", 2)
    uid = next(u for u in range(UID_FIRST, 65000) if u not in used_uids)
    name = USER_NAME
    n = 0
    while name in _names_in("/etc/passwd") | _names_in("/etc/group"):
        n += 1
        name = f"{USER_NAME}{n}"
    home = f"{top}/home"
    os.makedirs(home)
    user = User(name, uid, uid, home)
    for path in ("/etc/subuid", "/etc/subgid"):
        for first, count in _ranges_in(path) if os.path.exists(path) else []:
            if first < SUB_FIRST + SUB_COUNT and SUB_FIRST < first + count:
                raise RuntimeError(f"{path} already gives {first}:{count}, which overlaps "
                                   f"the test's {SUB_FIRST}:{SUB_COUNT}")
    lines = {
        "passwd": f"{name}:x:{uid}:{uid}:ovlfs rootless test:{home}:/bin/sh\n",
        "group": f"{name}:x:{uid}:\n",
        "subuid": f"{name}:{SUB_FIRST}:{SUB_COUNT}\n",
        "subgid": f"{name}:{SUB_FIRST}:{SUB_COUNT}\n",
    }
    os.makedirs(f"{top}/etc")
    for base, line in lines.items():
        host = f"/etc/{base}"
        mine = f"{top}/etc/{base}"
        text = ""
        if os.path.exists(host):
            with open(host) as f:
                text = f.read()
        if text and not text.endswith("\n"):
            text += "\n"
        with open(mine, "w") as f:
            f.write(text + line)
        os.chmod(mine, 0o644)
        if not os.path.exists(host):
            raise RuntimeError(f"{host} does not exist: nothing to mount over")
        wblib.mount(cl, mine, host, options="bind")
    os.chown(home, uid, uid)
    os.chmod(home, 0o700)
    return user


def usable_dev_fuse(cl: wblib.Cleanup, top: str) -> str:
    """/dev/fuse usable by everyone in this mount namespace (and the namespaces podman
    makes from it): a 0666 node of the same device bind-mounted over it. The node lives
    on a small tmpfs of the test's (mounted `dev`, whatever /tmp's mount options)."""
    st = os.stat("/dev/fuse")
    if not stat.S_ISCHR(st.st_mode) or (os.major(st.st_rdev), os.minor(st.st_rdev)) != (10, 229):
        raise RuntimeError(f"/dev/fuse is not the character device 10,229: {st}")
    os.mkdir(f"{top}/dev")
    wblib.mount(cl, "ovlfs-test-dev", f"{top}/dev", "tmpfs", "size=64k,mode=0755,dev")
    node = f"{top}/dev/fuse"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(10, 229))
    os.chmod(node, 0o666)
    wblib.mount(cl, node, "/dev/fuse", options="bind")
    return f"/dev/fuse = {node} (0666) in this namespace; the host's stays {st.st_mode & 0o777:04o}"


# ---------------------------------------------------------------------------------------
# Engines run by the user


def chown_tree(path: str, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.chown(os.path.join(root, n), uid, gid, follow_symlinks=False)


class RootlessEngine(E.Engine):
    """An enginelib Engine whose podman and buildah run as the user: its directory is
    the user's, XDG_RUNTIME_DIR (enginelib's tmp_dir, $TOP/t) is 0700."""

    def __init__(self, name: str, top: str, program: str | None, user: User):
        super().__init__(name, top, program)
        self.user = user
        self.env.update({"USER": user.name, "LOGNAME": user.name})
        chown_tree(top, user.uid, user.gid)
        os.chmod(f"{top}/t", 0o700)

    def podman_cmd(self, args: list[str]) -> list[str]:
        return self.user.cmd(super().podman_cmd(args))

    def buildah_cmd(self, args: list[str]) -> list[str]:
        return self.user.cmd(super().buildah_cmd(args))

    def describe(self, cmd: list[str]) -> str:
        if cmd and cmd[0] == "setpriv":
            cmd = cmd[cmd.index("--") + 1:]
        prefix = len(E.Engine.podman_cmd(self, []))
        args = cmd[prefix:] if cmd[0] in ("podman", "buildah") else cmd[1:]
        return " ".join([cmd[0]] + ["<script>" if "\n" in a else a for a in args])

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        try:
            return super().run(cmd, **kw)
        finally:
            # podman's conmon and pause processes are orphans of the test's PID
            # namespace, which is the test's to reap (no child of subprocess's runs now).
            reap()

    def unshare(self, *args: str, timeout: float | None = None, check: bool = True
                ) -> subprocess.CompletedProcess:
        """args run in podman's user and mount namespace (`podman unshare`)."""
        return self.podman("unshare", *args, timeout=timeout or P.TIMEOUT, check=check)

    def mounts(self) -> list[dict[str, str]]:
        """The mounts under the engine's directory in podman's mount namespace, where
        rootless podman mounts (this namespace has none of them)."""
        text = self.unshare("cat", "/proc/self/mountinfo").stdout
        top = os.path.realpath(self.top)
        # The overlay driver's home is bind-mounted on itself (to make it private) in
        # the namespace, which outlives podman's commands (the pause process holds it).
        home = os.path.realpath(f"{self.graph}/overlay")
        return [m for m in parse_mountinfo(text) if m["mountpoint"] != home and
                (m["mountpoint"] == top or m["mountpoint"].startswith(top + "/"))]


def parse_mountinfo(text: str) -> list[dict[str, str]]:
    def unescape(s: str) -> str:
        return s.encode().decode("unicode_escape") if "\\" in s else s
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        lf, rf = left.split(), right.split()
        mounts.append({"mountpoint": unescape(lf[4]), "options": lf[5], "fstype": rf[0],
                       "source": unescape(rf[1]), "super_options": rf[2] if len(rf) > 2 else ""})
    return mounts


# ---------------------------------------------------------------------------------------
# Checks: test_podman's, and what rootless adds


def check_keep_id(eng: RootlessEngine, fx: dict) -> P.Outcome:
    """--userns=keep-id: the user's own uid and gid inside, the image's files owned as in
    the image (0 and 1000)."""
    out = P.check_keep_id(eng, fx)
    if out.skip:
        out.problems.append(f"keep-id refused rootless: {out.skip}")
        out.skip = ""
        return out
    # (podman adds the user to the container's /etc/passwd: uid=61000(NAME))
    P.expect_in(out, "keep-id", out.text, [f"uid={eng.user.uid}(", f"gid={eng.user.gid}("])
    return out


def check_info(eng: RootlessEngine, fx: dict) -> P.Outcome:
    out = P.check_info(eng, fx)
    info = json.loads(eng.podman("info", "--format", "json", timeout=P.TIMEOUT).stdout)
    security = info.get("host", {}).get("security", {})
    mapping = info.get("host", {}).get("idMappings", {})
    out.text += (f", rootless {json.dumps(security.get('rootless'))}, "
                 f"uidmap {json.dumps(mapping.get('uidmap'))}")
    if security.get("rootless") is not True:
        out.problems.append(f"podman info: rootless is {security.get('rootless')!r}")
    want = [{"container_id": 0, "host_id": eng.user.uid, "size": 1},
            {"container_id": 1, "host_id": eng.user.sub_first, "size": eng.user.sub_count}]
    if mapping.get("uidmap") != want:
        out.problems.append(f"podman info: uidmap {mapping.get('uidmap')}, expected {want}")
    return out


STATUS_NAME = "ovlfs-test-status"
STATUS_EXPECTED = ["metadata:       user.overlay.* xattrs", "mode:           non-volatile",
                   "upper errors:   none"]


def host_ids(pid: int) -> tuple[list[int], list[int]]:
    """The real, effective, saved and filesystem uids and gids of pid, as the host sees
    them."""
    with open(f"/proc/{pid}/status") as f:
        ids = {k: [int(x) for x in v.split()] for k, v in
               (ln.split(":", 1) for ln in f if ":" in ln) if k in ("Uid", "Gid")}
    return ids["Uid"], ids["Gid"]


def check_status(eng: RootlessEngine, fx: dict) -> P.Outcome:
    """A running container with a `-v DIR:/x:O` volume, seen from podman's namespace
    (`podman unshare`): its two mounts (the root filesystem, and the volume's overlay,
    which podman also makes with the mount program) and their daemons. On the ovlfs run
    both are ovlfs mounts whose `ovlfs status` shows user.overlay.* metadata and no
    passthrough, whose daemons run as the user on the host (uid 0 of its namespace), and
    whose writeback-error record is the user's own (`ovlfs-wb-u<UID>-...`, the user's
    0600 file; the test's /dev/shm is podman's too). The native run shows its mount."""
    out = P.Outcome(compare=False)
    vol = fx["volume"]
    eng.podman("run", "-d", "--name", STATUS_NAME, "-v", f"{vol}:/x:O", P.IMAGE,
               "sleep", "600", timeout=P.TIMEOUT)
    try:
        merged = eng.podman("inspect", "--format", "{{.GraphDriver.Data.MergedDir}}",
                            STATUS_NAME, timeout=P.TIMEOUT).stdout.strip()
        mounts = eng.mounts()
        rootfs = [m for m in mounts if m["mountpoint"] == merged]
        lines = [f"merged: {merged}"]  # the details (--show)
        summary = [f"root filesystem: {m['fstype']}" for m in rootfs]  # the verdict's line
        lines += [f"mount: {m['mountpoint']} {m['fstype']} ({m['super_options']})"
                  for m in mounts]
        if len(rootfs) != 1:
            out.problems.append(f"{merged} is not mounted once in podman's namespace: {rootfs}")
        if not eng.program:
            if rootfs and rootfs[0]["fstype"] != "overlay":
                out.problems.append(f"the native run's mount is {rootfs[0]['fstype']}")
            summary += [f"userxattr: {'userxattr' in m['super_options'].split(',')}"
                        for m in rootfs]
            return out
        daemons = eng.daemons()
        served = {"root filesystem": [p for p, ln in daemons.items() if ln.endswith(" " + merged)],
                  "volume": [p for p, ln in daemons.items() if f"lowerdir={vol}," in ln]}
        points = {}
        for what, pids in served.items():
            if len(pids) != 1:
                out.problems.append(f"{len(pids)} daemons of {eng.program} serve the {what}: "
                                    f"{ {p: daemons[p] for p in pids} or daemons}")
                continue
            pid = pids[0]
            points[what] = daemons[pid].rsplit(" ", 1)[1]
            uids, gids = host_ids(pid)
            lines.append(f"{what}: daemon {pid} ({daemons[pid]}), host uids {uids}, "
                         f"gids {gids}")
            summary.append(f"{what}'s daemon runs as host uid {','.join(map(str, set(uids)))}")
            if set(uids) != {eng.user.uid} or set(gids) != {eng.user.gid}:
                out.problems.append(f"the {what}'s daemon {pid} runs as host uids {uids}, "
                                    f"gids {gids}, not as the user ({eng.user.uid})")
        if eng.name != "ovlfs":  # another mount program: shown, no ovlfs status
            return out
        for what, point in points.items():
            st = eng.unshare(eng.program, "status", point, check=False)
            lines.append(f"ovlfs status of the {what} (exit {st.returncode}):\n"
                         f"{st.stdout}{st.stderr}")
            if st.returncode != 0:
                out.problems.append(f"ovlfs status of the {what} failed: exit "
                                    f"{st.returncode}: {st.stderr.strip()}")
                continue
            P.expect_in(out, f"ovlfs status of the {what}", st.stdout, STATUS_EXPECTED)
            summary += [f"{what}: {ln.split(':', 1)[0]} {ln.split(':', 1)[1].strip()}"
                        for ln in st.stdout.splitlines()
                        if ln.startswith(("transport:", "metadata:"))]
            if "passthrough" in st.stdout:
                out.problems.append(f"ovlfs status of the {what} shows passthrough, which "
                                    "root of a user namespace cannot have")
            record = next((ln.split(":", 1)[1].strip() for ln in st.stdout.splitlines()
                           if ln.startswith("shared record:")), "")
            want = f"/dev/shm/ovlfs-wb-u{eng.user.uid}-"
            if not record.startswith(want):
                out.problems.append(f"the {what}'s writeback-error record is {record!r}, "
                                    f"not the user's ({want}...)")
                continue
            try:
                rs = os.lstat(record)
            except OSError as e:
                out.problems.append(f"the {what}'s record {record}: {e}")
                continue
            lines.append(f"record: {record}, uid {rs.st_uid}, mode {rs.st_mode & 0o7777:04o}")
            summary.append(f"{what}: record {record} (uid {rs.st_uid}, "
                           f"{rs.st_mode & 0o7777:04o})")
            if not stat.S_ISREG(rs.st_mode) or rs.st_uid != eng.user.uid or \
                    rs.st_mode & 0o7777 != 0o600:
                out.problems.append(f"the {what}'s record {record} is uid {rs.st_uid} mode "
                                    f"{rs.st_mode & 0o7777:04o}, not the user's 0600 file")
        return out
    finally:
        eng.podman("rm", "-f", "-t", "0", STATUS_NAME, timeout=P.TIMEOUT, check=False)
        out.info = eng.placeholders("\n".join(lines)).replace(vol, "$VOL")
        out.text = "; ".join(summary)


def _replace(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"test_podman changed: no {old!r} to adapt for rootless")
    return text.replace(old, new)


def adapt_for_rootless() -> list[str]:
    """test_podman's scripts and expected trees, as they are for a user: a user namespace
    may make no device node but the 0:0 whiteout. The image has no /t/null (rootless
    containers-storage would leave it out of the layer's directory, but keep it in the
    layer that `podman save` exports), a container's mknod of a device fails
    (EPERM: the two runs must agree, and say so), and the Containerfile makes a fifo where
    the rootful one makes a device. Returns what was changed, for the log."""
    layers = P.image_layers
    P.image_layers = lambda: [[e for e in layer if e.kind not in "cb"] for layer in layers()]
    gone = {"/t/null", "/t/c2", "/t/b2", "/t/newc"}
    for name in ("IMAGE_T", "RUN_AFTER_T", "COMMIT_T", "BUILD_T", "BUILDAH_T"):
        setattr(P, name, [n for n in getattr(P, name) if n not in gone])
    refused = 'refused() { "$@" 2>&1 && echo "NOT REFUSED: $*"; }\n'
    P.RUN_SCRIPT = refused + _replace(
        P.RUN_SCRIPT, "try mknod /t/c2 c 1 3\ntry mknod /t/b2 b 7 0\n",
        "refused mknod /t/c2 c 1 3\nrefused mknod /t/b2 b 7 0\n")
    P.COMMIT_SCRIPT = refused + _replace(P.COMMIT_SCRIPT, "mknod /t/newc c 1 3\n",
                                         "refused mknod /t/newc c 1 3\n")
    P.CONTAINERFILE = _replace(P.CONTAINERFILE, "mknod /t/keep/sub2/null c 1 3",
                               "mkfifo /t/keep/sub2/null")
    # With --uidmap, rootless podman gives the kernel a chowned copy of the whole image
    # stacked over its layers (every directory of the image is then a merged one, link
    # count 1), and gives ovlfs the image's layers and uidmapping= (a directory of one
    # layer only has its real count): the trees differ in link counts of directories
    # only, and those are left out (lst shows /t/udir without it).
    P.UIDMAP_SCRIPT = _replace(P.UIDMAP_SCRIPT,
                               "ls -lnd /t/owned /t/keep/a /t/setuid /t/udir /t/udir/f",
                               "ls -lnd /t/owned /t/keep/a /t/setuid /t/udir/f")
    return ["no device nodes: none in the image, mknod of c2, b2 and newc must fail, the "
            "build makes a fifo", "uidmap: no directory link counts"]


def known(eng: RootlessEngine, out: P.Outcome, what: str, problems: list[str]) -> None:
    """Takes the kernel run's problems that are its own known defects out of the verdict
    and prints them: they stay expectations for every mount program."""
    if eng.program or not problems:
        return
    out.problems = [p for p in out.problems if p not in problems]
    print(f"    (kernel, not counted: {what}: {len(problems)} cases, e.g. {problems[0]})",
          flush=True)


HARDLINK_SAME = "c and hl_c: one inode"


def check_run(eng: RootlessEngine, fx: dict) -> P.Outcome:
    """test_podman's run; mknod of a device fails. The kernel's overlayfs with userxattr
    (as rootless podman mounts it) gives a lower file hard-linked in the container two
    inode numbers: the origin's for the old name, the upper file's for the new one (with
    trusted.* xattrs, rootful, it gives the origin's to both), so its `[ c -ef hl_c ]` is
    false. A mount program must still say one inode (test_podman expects it); the line
    is left out of the comparison."""
    out = P.check_run(eng, fx)
    P.expect_in(out, "run", out.text, ["mknod: /t/c2: Operation not permitted",
                                       "mknod: /t/b2: Operation not permitted"])
    if "NOT REFUSED" in out.text:
        out.problems.append("run: a device node was made in a user namespace")
    known(eng, out, "its userxattr mode gives two inode numbers to one hard-linked file",
          [p for p in out.problems if HARDLINK_SAME in p])
    out.text = "\n".join(ln for ln in out.text.splitlines() if ln != HARDLINK_SAME)
    return out


def internals_of_native_diff(eng: RootlessEngine, out: P.Outcome) -> None:
    """podman 4.3's native overlay diff, rootless, copies the kernel's user.overlay.*
    xattrs (origin, impure) of the upper directory into the layers it commits (it leaves
    out only trusted.overlay.*): the engine's defect, not counted for the kernel run. A
    mount program's layers must hold none."""
    known(eng, out, "podman's native rootless diff puts user.overlay.* xattrs in layers",
          [p for p in out.problems if "holds overlay internals" in p
           and "xattr user.overlay." in p])


def check_commit(eng: RootlessEngine, fx: dict) -> P.Outcome:
    out = P.check_commit(eng, fx)
    P.expect_in(out, "commit", out.text, ["mknod: /t/newc: Operation not permitted"])
    if "NOT REFUSED" in out.text:
        out.problems.append("commit: a device node was made in a user namespace")
    internals_of_native_diff(eng, out)
    return out


def check_build(eng: RootlessEngine, fx: dict) -> P.Outcome:
    out = P.check_build(eng, fx)
    internals_of_native_diff(eng, out)
    return out


def rootless_checks() -> list:
    replaced = {"run": check_run, "commit": check_commit, "build": check_build,
                "keep-id": check_keep_id, "info": check_info}
    checks = [(name, replaced.get(name, fn)) for name, fn in P.CHECKS]
    at = [name for name, _ in checks].index("unmount")
    return checks[:at] + [("status", check_status)] + checks[at:]


# ---------------------------------------------------------------------------------------


def prepare_fixtures(top: str, user: User) -> dict:
    fx = P.make_fixtures(top)
    os.chmod(fx["archive"], 0o644)
    chown_tree(fx["context"], user.uid, user.gid)
    chown_tree(fx["volume"], user.uid, user.gid)
    return fx


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ovlfs", required=True, help="the ovlfs binary (build/ovlfs)")
    ap.add_argument("--only", default="", help="comma-separated checks to run")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (its processes still end)")
    ap.add_argument("--show", action="store_true", help="print every check's output")
    ap.add_argument("--reference", metavar="PROGRAM",
                    help="also run every check with this mount program (e.g. "
                         "/usr/bin/fuse-overlayfs) and show how it fares; never fails the test")
    ap.add_argument("--timeout", type=float, default=P.TIMEOUT,
                    help="seconds per podman command (default %(default)s)")
    args = ap.parse_args()
    P.TIMEOUT = args.timeout
    checks = rootless_checks()
    P.CHECKS[:] = checks  # test_podman's run_engine() and verdicts() walk P.CHECKS
    adapted = adapt_for_rootless()
    missing = [p for p in ("podman", "newuidmap", "newgidmap", "setpriv", "unshare")
               if not shutil.which(p)]
    if os.geteuid() != 0 or missing or not os.path.exists("/dev/fuse"):
        print(f"SKIP: needs root, podman, newuidmap, newgidmap, setpriv and /dev/fuse "
              f"(euid {os.geteuid()}, missing: {missing})")
        return 77
    only, bad = P.preflight(args, checks)
    if bad is not None:
        return bad
    ovlfs = os.path.realpath(args.ovlfs)
    enter_pid_namespace()
    wblib.enter_private_namespace()
    # This PID namespace's processes only (kills, daemons, backtraces see no others).
    wblib.run(["mount", "-t", "proc", "-o", "nosuid,nodev,noexec", "proc", "/proc"])
    start = time.monotonic()
    versions = [wblib.run([p, "--version"], check=False).stdout.strip()
                for p in ("podman", "buildah", "crun", ovlfs) if shutil.which(p)]
    print("; ".join(v.splitlines()[0] for v in versions if v), flush=True)
    with wblib.Cleanup() as cl:
        # Short: podman 4.3 makes each container's exit wait 20 s when the runroot's path
        # is longer than 50 characters (/tmp/or.XXXXXXXX/o/r is 20).
        if args.keep:
            top = tempfile.mkdtemp(prefix="or.", dir="/tmp")
            print(f"keeping {top}")
        else:
            top = cl.tmpdir("or.")
        os.chmod(top, 0o755)
        notes = E.isolate_host(cl, top)
        user = add_user(cl, top)
        notes.append(f"user {user.name} uid {user.uid} gid {user.gid}, subordinate ids "
                     f"{user.sub_first}:{user.sub_count}, only in this namespace")
        notes.append(usable_dev_fuse(cl, top))
        notes += adapted
        print("host: " + ", ".join(notes), flush=True)
        for program in filter(None, (ovlfs, args.reference and os.path.realpath(args.reference))):
            if wblib.run(user.cmd(["test", "-x", program]), check=False).returncode != 0:
                print(f"FAIL: the test user cannot run {program} (a directory above it is "
                      "not searchable by others?): rootless podman runs its mount program "
                      "as the user")
                return 1
        # Runs after the engines' teardowns (podman rm as the user): the pause process,
        # conmon, daemons and containers left.
        cl.push("end the user's processes", lambda: [
            print(f"cleanup: {n}", flush=True) for n in kill_everything_left()])
        fx = prepare_fixtures(top, user)
        engines = [RootlessEngine("kernel", f"{top}/k", None, user),
                   RootlessEngine("ovlfs", f"{top}/o", ovlfs, user)]
        reference = args.reference and os.path.realpath(args.reference)
        if reference:
            engines.append(RootlessEngine(os.path.basename(reference), f"{top}/f", reference,
                                          user))
        for eng in engines:
            cl.push(f"tear down {eng.name}", lambda eng=eng: [
                print(f"cleanup: {n}") for n in eng.teardown()])
        results = [P.run_engine(eng, fx, only, args.show) for eng in engines]
        print("\n(rootless: every engine run by the user; kernel = podman's native overlay "
              "in the user's namespace)", end="")
        failed = P.verdicts(results[0], results[1],
                            (engines[2].name, results[2]) if reference else None)
    total = sum(1 for name, _ in checks if name in results[0])
    print(f"\n{total - failed} of {total} checks passed or skipped, {failed} failed "
          f"({time.monotonic() - start:.0f} s)")
    print("RESULT:", "PASS" if not failed else "FAIL", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
