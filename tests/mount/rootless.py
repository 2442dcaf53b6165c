"""rootless: runs part of a mounted test as a normal user in a user namespace of its
own (issue 18). Stdlib only.

The root part of a test does what only root can (loop devices, ext4 images, the
ENOSPC and EIO rigs, faultyfs), inside its private mount namespace
(wblib.enter_private_namespace), hands the directories it made to the user, and then
runs the user part:

    wblib.enter_private_namespace()
    with wblib.Cleanup() as cl:
        home = rootless.setup(cl)                     # /dev/fuse for the user, a home dir
        ...root-only set-up; rootless.give(path) what the user needs...
        rc = rootless.rerun(cl, home, __file__, sys.argv[1:] + [...],
                            handlers={"fill": upper.fill})
    # and in the user part (the same program, rootless.in_user_part() is true):
    rootless.call("fill")                             # root does it, returns its result

rerun() runs the program again as the user (staging it, and the programs named by
its arguments, in the user's home when the user cannot reach them where they are: a
clone in /root), with a Python the user can run. Agent keeps a user part running
and has it run functions on the root part's request (several users at once, the
tests across users); with userns=False it is the plain user, with no namespace of
its own, whose FUSE mounts go through fusermount3.

The user part runs as USER (uid/gid 65534, nobody, no supplementary groups), as
`setpriv --reuid 65534 --regid 65534 --clear-groups unshare -Urm` would run it: in a
new user namespace (uid and gid 0 inside are 65534 outside, setgroups denied) with a
new mount namespace (a copy of the test's, made private). It also gets a pid
namespace of its own, of which it is pid 1 (as `unshare --pid --fork --mount-proc`),
so that when it ends, however it ends, every process it started (FUSE daemons
included) ends with it, and with them its mount namespace and every mount in it.
Its parent there gets SIGKILL when the test dies (PR_SET_PDEATHSIG), and passes
that on to it the same way.

`subids=True` maps a range of subordinate ids as well, as rootless podman does from
/etc/subuid through newuidmap: 0 inside is still the user, 1..65535 inside are
SUBID_BASE+1.. outside, ids that belong to nobody on the host. The test writes the
maps as root (newuidmap's part) instead of editing /etc/subuid. The differential
tests need it: their unprivileged caller (uid 65534 inside) and owners other than
the user.

/dev/fuse is mode 0600 on machines without udev. setup() makes it usable for the
user only inside the test's private mount namespace: it binds a 0666 node of
/dev/fuse (10, 229), made on a small tmpfs of the test's own, over /dev/fuse. The
host's node is never changed; the bind goes with the namespace.

The user part reaches back to root through call(): one JSON request and reply per
line over a pair of pipes; the root part answers from `handlers` until the user part
ends. Use it for what needs root in the middle of a test (arming faultyfs, filling
the ENOSPC rig's tmpfs).
"""

from __future__ import annotations

import ctypes
import json
import os
import select
import signal
import shutil
import stat
import subprocess
import sys
import time
import traceback
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402

USER = 65534          # nobody: a fixed unprivileged uid (and gid) on every Debian system
OTHER_USER = 64998    # a second user for the tests across users; it needs no passwd entry
SUBID_BASE = 300000   # subids=True: 1..65535 inside are SUBID_BASE+1.. outside
SUBID_COUNT = 65535

SKIP = 77
_ENV_PART = "OVLFS_ROOTLESS_PART"    # "uid:gid" in the user part
_ENV_RPC = "OVLFS_ROOTLESS_RPC"      # "readfd,writefd" in the user part
_ENV_AGENT = "OVLFS_ROOTLESS_AGENT"  # "readfd,writefd" in an Agent's user part

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 0x40000
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4



def _exec(argv, env, cwd, pass_fds):
    """The end of every child: its fds, directory and umask, then the program."""
    for fd in pass_fds:
        os.set_inheritable(fd, True)
    if cwd:
        os.chdir(cwd)
    os.umask(0o022)
    os.execvpe(argv[0], argv, env)

def in_user_part() -> bool:
    return _ENV_PART in os.environ


def host_ids() -> tuple[int, int]:
    """(uid, gid) outside the user namespace of the user part."""
    uid, gid = os.environ[_ENV_PART].split(":")
    return int(uid), int(gid)


# ---------------------------------------------------------------------------------------
# Root's side


def setup(cleanup: wblib.Cleanup, uid: int = USER, gid: int = USER,
          prefix: str = "ovlfs-rootless.") -> str:
    """In the test's private mount namespace: /dev/fuse usable by everyone (a bind of a
    0666 node, undone at cleanup), and a new directory under /tmp owned by uid:gid
    (mode 0755, removed at cleanup). Returns the directory. Exits 77 (skip) when this
    kernel does not let a user make a user namespace."""
    _need_userns_or_skip()
    enable_dev_fuse(cleanup)
    home = cleanup.tmpdir(prefix)
    os.chmod(home, 0o755)
    os.chown(home, uid, gid)
    return home


def enable_dev_fuse(cleanup: wblib.Cleanup) -> None:
    """Binds a 0666 node of /dev/fuse over /dev/fuse, in this mount namespace only (the
    caller must be in a private one). The node lives on a tiny tmpfs of its own, so
    that a nodev /tmp does not matter."""
    if os.environ.get(wblib._NS_ENV, "") != os.readlink("/proc/self/ns/mnt"):
        raise RuntimeError("enable_dev_fuse: not in the test's private mount namespace")
    st = os.stat("/dev/fuse")
    if stat.S_IMODE(st.st_mode) & 0o666 == 0o666:
        return
    d = cleanup.tmpdir("ovlfs-devfuse.")
    wblib.mount(cleanup, "ovlfs-devfuse", d, "tmpfs", "size=64k,mode=0755")
    node = os.path.join(d, "fuse")
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(10, 229))
    os.chmod(node, 0o666)  # past the umask
    wblib.mount(cleanup, node, "/dev/fuse", None, "bind")


def give(path: str, uid: int = USER, gid: int = USER, recursive: bool = True) -> str:
    """chown path (and everything below it) to uid:gid: the user's from now on."""
    os.chown(path, uid, gid, follow_symlinks=False)
    if recursive and os.path.isdir(path) and not os.path.islink(path):
        for d, dirs, files in os.walk(path):
            for n in dirs + files:
                os.chown(os.path.join(d, n), uid, gid, follow_symlinks=False)
    return path


def reachable(path: str, uid: int = USER, gid: int = USER) -> bool:
    """Whether uid:gid (no supplementary groups) can read path, and search every
    directory above it (a clone in /root is not)."""
    path = os.path.realpath(path)
    parts = path.split("/")
    for i in range(1, len(parts)):
        d = "/".join(parts[:i]) or "/"
        if not _allowed(os.stat(d), uid, gid, 1):
            return False
    return _allowed(os.stat(path), uid, gid, 4)


def _allowed(st: os.stat_result, uid: int, gid: int, bit: int) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & (bit << 6))
    if st.st_gid == gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


def python(uid: int = USER, gid: int = USER) -> str:
    """A Python 3 the user can run: this one, or the system's (pyenv's lives in /root)."""
    for p in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"):
        if p and os.path.exists(p) and reachable(p, uid, gid):
            return p
    print(f"SKIP: no Python 3 that uid {uid} can run", flush=True)
    sys.exit(SKIP)


def user_path(uid: int = USER, gid: int = USER) -> str:
    """$PATH without the directories the user cannot search."""
    dirs = [d for d in os.environ.get("PATH", "/usr/bin:/bin").split(":")
            if d and os.path.isdir(d) and reachable(d, uid, gid)]
    return ":".join(dirs or ["/usr/bin", "/bin"])


def stage(cleanup: wblib.Cleanup, home: str, paths: list[str], uid: int = USER,
          gid: int = USER) -> list[str]:
    """The given files (programs, scripts), or copies of them in home/.staged when the
    user cannot reach them where they are (a clone in /root). A directory is copied
    whole (without __pycache__)."""
    out = []
    for p in paths:
        p = os.path.realpath(p)
        if reachable(p, uid, gid):
            out.append(p)
            continue
        dst = os.path.join(home, ".staged", p.strip("/").replace("/", "%"))
        if os.path.exists(dst):
            out.append(dst)
            continue
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        if os.path.isdir(p):
            shutil.copytree(p, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(p, dst)
        give(os.path.join(home, ".staged"), uid, gid)
        out.append(dst)
    return out


def script_dir(cleanup: wblib.Cleanup, home: str, uid: int = USER, gid: int = USER) -> str:
    """tests/mount (this directory) where the user can run it from."""
    return stage(cleanup, home, [os.path.dirname(os.path.abspath(__file__))], uid, gid)[0]


_userns_checked = False


def _need_userns_or_skip() -> None:
    global _userns_checked
    if _userns_checked:
        return
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                raise OSError("user.max_user_namespaces is 0")
        for knob in ("/proc/sys/kernel/unprivileged_userns_clone",
                     "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"):
            if os.path.exists(knob):
                with open(knob) as f:
                    v = f.read().strip()
                if (knob.endswith("clone") and v == "0") or (knob.endswith("userns") and v == "1"):
                    raise OSError(f"{knob} is {v}")
        proc = spawn([python(), "-c", "import os; os.getuid() == 0 or exit(3)"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        rc = proc.wait(timeout=30)
        if rc != 0:
            raise OSError(f"a user namespace as uid {USER} failed: exit {rc}: "
                          f"{proc.stderr_text()}")
    except OSError as e:
        print(f"SKIP: a normal user cannot make a user namespace here ({e})", flush=True)
        sys.exit(SKIP)
    _userns_checked = True


class UserProc:
    """The user part: `pid` is its parent in the test's pid namespace (which waits for
    it and passes SIGTERM on); wait() returns the user part's exit status."""

    def __init__(self, pid: int, stderr_fd: int = -1):
        self.pid = pid
        self.returncode: int | None = None
        self._stderr_fd = stderr_fd
        self._stderr = b""

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if self._stderr_fd >= 0:
                self._read_stderr(0.02)
            else:
                time.sleep(0.02)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"user part {self.pid} still running")
        if self._stderr_fd >= 0:
            self._read_stderr(0)
        return self.returncode  # type: ignore[return-value]

    def _read_stderr(self, timeout: float) -> None:
        r, _, _ = select.select([self._stderr_fd], [], [], timeout)
        if r:
            data = os.read(self._stderr_fd, 65536)
            if not data:
                os.close(self._stderr_fd)
                self._stderr_fd = -1
            self._stderr += data

    def stderr_text(self) -> str:
        return self._stderr.decode(errors="replace").strip()

    def terminate(self, grace: float = 10) -> None:
        """SIGTERM (its parent passes it on), then SIGKILL: its parent's death kills
        the user part (PR_SET_PDEATHSIG), and with it its whole pid namespace."""
        if self.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
            self.wait(grace)
        except TimeoutError:
            os.kill(self.pid, signal.SIGKILL)
            self.wait()
        except ProcessLookupError:
            pass


def spawn(argv: list[str], *, uid: int = USER, gid: int = USER, subids: bool = False,
          userns: bool = True, env: dict[str, str] | None = None, cwd: str | None = None,
          pass_fds: tuple[int, ...] = (), stdout=None, stderr=None) -> UserProc:
    """Starts argv as uid:gid in new user, mount and pid namespaces (see the module's
    doc); userns=False: as the plain user, in this mount namespace (its FUSE mounts go
    through fusermount3 and land here). stdout/stderr: None (inherit),
    subprocess.DEVNULL or subprocess.PIPE (stderr only: collected for stderr_text())."""
    parent = os.getpid()
    sync_r, sync_w = os.pipe()      # child -> parent: "in the new user namespace"
    go_r, go_w = os.pipe()          # parent -> child: "maps written"
    err_r = err_w = -1
    if stderr == subprocess.PIPE:
        err_r, err_w = os.pipe()
    env = dict(os.environ if env is None else env)
    env[_ENV_PART] = f"{uid}:{gid}"
    env["PATH"] = user_path(uid, gid)
    env.pop(wblib._NS_ENV, None)
    sys.stdout.flush()
    sys.stderr.flush()
    with wblib.signals_deferred():
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            _child(argv, uid, gid, subids, userns, env, cwd, pass_fds, stdout, stderr,
                   err_w, parent, sync_w, go_r)
    os.close(sync_w)
    os.close(go_r)
    if err_w >= 0:
        os.close(err_w)
    proc = UserProc(pid, err_r)
    try:
        ready = os.read(sync_r, 1)
        if ready == b"u":
            if subids:
                _write_maps(pid, uid, gid)
            os.write(go_w, b"g")
    finally:
        os.close(sync_r)
        os.close(go_w)
    return proc


def _write_maps(pid: int, uid: int, gid: int) -> None:
    """What newuidmap/newgidmap do for a user with a subordinate range: 0 is the user,
    1..SUBID_COUNT the range (root may write any map of a child namespace)."""
    for name, outer in (("uid_map", uid), ("gid_map", gid)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(f"0 {outer} 1\n1 {SUBID_BASE + 1} {SUBID_COUNT}\n")


def _child(argv, uid, gid, subids, userns, env, cwd, pass_fds, stdout, stderr, err_w,
           parent, sync_w, go_r) -> None:
    try:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        if stdout == subprocess.DEVNULL or stderr == subprocess.DEVNULL:
            null = os.open(os.devnull, os.O_RDWR)
            if stdout == subprocess.DEVNULL:
                os.dup2(null, 1)
            if stderr == subprocess.DEVNULL:
                os.dup2(null, 2)
        if err_w >= 0:
            os.dup2(err_w, 2)
        # This process never execs (it waits for the user part): it must not keep the
        # test's other fds (another Agent's channel would never see EOF).
        keep = {0, 1, 2, sync_w, go_r, *pass_fds}
        for fd in [int(x) for x in os.listdir("/proc/self/fd")]:
            if fd not in keep:
                try:
                    os.close(fd)
                except OSError:
                    pass
        # setpriv --reuid --regid --clear-groups
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        # A credential change left the process undumpable, its /proc files root's; an
        # exec (setpriv's of unshare) would make it dumpable again.
        _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        if not userns:
            os.write(sync_w, b"p")
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != parent:
                os._exit(125)
            _exec(argv, env, cwd, pass_fds)
        # unshare --user --mount --pid
        if _libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"unshare(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID): {os.strerror(e)}")
        if not subids:  # --map-root-user, as an unprivileged process can write it
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"0 {gid} 1")
        os.write(sync_w, b"u")
        if os.read(go_r, 1) != b"g":
            os._exit(125)
        os.close(sync_w)
        os.close(go_r)
        # The credentials changed, which clears the parent-death signal: set it now.
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(125)
        if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"mount --make-rprivate /: {os.strerror(e)}")
        alive_r, alive_w = os.pipe()  # EOF once this process is gone
        pid = os.fork()
        if pid == 0:
            os.close(alive_w)
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if select.select([alive_r], [], [], 0)[0]:  # (getppid() is 0 for a pid 1)
                os._exit(125)
            os.close(alive_r)
            # --mount-proc: this pid namespace's /proc (best effort).
            _libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
            _exec(argv, env, cwd, pass_fds)
        os.close(alive_r)
        # --fork: wait for pid 1 of the new namespace, passing SIGTERM/SIGINT on.
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, lambda signum, _f: os.kill(pid, signum))
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                os._exit(125)
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
    except BaseException:
        try:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(126)


def run_user_part(cleanup: wblib.Cleanup, argv: list[str], *, uid: int = USER,
                  gid: int = USER, subids: bool = False, cwd: str | None = None,
                  env: dict[str, str] | None = None,
                  handlers: dict[str, Callable] | None = None,
                  timeout: float | None = None) -> int:
    """Runs argv as the user (spawn()) and answers its call()s from handlers until it
    ends; returns its exit status. Killed at cleanup if still running (SIGTERM, a
    ctest timeout, an exception here)."""
    req_r, req_w = os.pipe()
    rep_r, rep_w = os.pipe()
    env = dict(os.environ if env is None else env)
    env[_ENV_RPC] = f"{rep_r},{req_w}"  # the user part reads replies, writes requests
    proc = spawn(argv, uid=uid, gid=gid, subids=subids, env=env, cwd=cwd,
                 pass_fds=(rep_r, req_w))
    cleanup.push(f"end the user part {proc.pid}", proc.terminate)
    os.close(rep_r)
    os.close(req_w)
    handlers = dict(handlers or {})
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = b""
    try:
        while True:
            if deadline is not None and time.monotonic() > deadline:
                proc.terminate()
                raise TimeoutError(f"the user part did not end within {timeout} s")
            r, _, _ = select.select([req_r], [], [], 0.2)
            if not r:
                if proc.poll() is not None:
                    break
                continue
            data = os.read(req_r, 65536)
            if not data:
                break  # every writer gone: the user part (and its children) ended
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                os.write(rep_w, (json.dumps(_answer(handlers, line)) + "\n").encode())
    finally:
        os.close(req_r)
        os.close(rep_w)
    return proc.wait()


def _answer(handlers: dict[str, Callable], line: bytes) -> dict:
    try:
        msg = json.loads(line)
        fn = handlers[msg["op"]]
        return {"ok": True, "value": fn(*msg.get("args", []))}
    except Exception as e:  # reported to the caller, which raises it
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def rerun(cleanup: wblib.Cleanup, home: str, script: str, argv: list[str], *,
          stage_args: tuple[str, ...] = ("--ovlfs",), **kw) -> int:
    """Runs this test program (script, a file under tests/mount) again as the user
    (run_user_part(); kw goes there), with argv: the values of stage_args (programs)
    staged where the user can run them. Returns the user part's exit status."""
    here = os.path.dirname(os.path.abspath(__file__))
    rel = os.path.relpath(os.path.abspath(script), here)
    staged = os.path.join(script_dir(cleanup, home), rel)
    argv = list(argv)
    def staged_file(p: str) -> str:
        return stage(cleanup, home, [p])[0] if os.path.isfile(p) else p
    for i, a in enumerate(argv):
        for opt in stage_args:
            if a == opt and i + 1 < len(argv):
                argv[i + 1] = staged_file(argv[i + 1])
            elif a.startswith(opt + "="):
                argv[i] = opt + "=" + staged_file(a.split("=", 1)[1])
    env = dict(kw.pop("env", None) or os.environ)
    env["HOME"] = home
    print(f"rootless: running {rel} as uid {kw.get('uid', USER)} in a user namespace "
          f"of its own{' with subordinate ids' if kw.get('subids') else ''}", flush=True)
    return run_user_part(cleanup, [python(kw.get("uid", USER), kw.get("gid", USER)), staged,
                                   *argv], cwd=home, env=env, **kw)


class Agent:
    """A user part that stays, and runs functions of its program for the root part
    one at a time: agent.call("name", *args) runs serve()'s handler `name` there and
    returns its result (RuntimeError with its exception otherwise). argv is a program
    that calls serve(). userns=False: the plain user, in the test's mount namespace
    (its mounts through fusermount3 are root's to clean up: `mounts_under`)."""

    def __init__(self, cleanup: wblib.Cleanup, argv: list[str], *, uid: int = USER,
                 gid: int = USER, userns: bool = True, subids: bool = False,
                 env: dict[str, str] | None = None, cwd: str | None = None,
                 name: str = "", mounts_under: str | None = None):
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = dict(os.environ if env is None else env)
        env[_ENV_AGENT] = f"{cmd_r},{rep_w}"
        self.name = name or f"uid {uid}"
        if mounts_under:  # its fusermount3 mounts outlive it: unmounted after it ends
            cleanup.push(f"unmount what {self.name} left", lambda: _umount_all(mounts_under))
        self.proc = spawn(argv, uid=uid, gid=gid, userns=userns, subids=subids, env=env,
                          cwd=cwd, pass_fds=(cmd_r, rep_w))
        cleanup.push(f"end {self.name}", self.close)
        os.close(cmd_r)
        os.close(rep_w)
        self._out = os.fdopen(cmd_w, "w", buffering=1)
        self._in = os.fdopen(rep_r, "r")

    def call(self, op: str, *args, timeout: float = 120):
        self._out.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        if not select.select([self._in], [], [], timeout)[0]:
            raise TimeoutError(f"{self.name}: {op} did not answer within {timeout} s")
        line = self._in.readline()
        if not line:
            raise RuntimeError(f"{self.name} ended (exit {self.proc.poll()}) during {op}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise RuntimeError(f"{self.name}: {op}{tuple(args)}: {reply['error']}")
        return reply["value"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._out.close()  # EOF: serve() returns
                self.proc.wait(20)
            except (OSError, TimeoutError):
                pass
        self.proc.terminate()
        for f in (self._out, self._in):
            try:
                f.close()
            except OSError:
                pass


def _umount_all(top: str) -> None:
    for m in sorted(wblib.mounts_under(top), key=lambda m: -len(m["mountpoint"])):
        wblib.umount(m["mountpoint"])


# ---------------------------------------------------------------------------------------
# The user's side


def serve(handlers: dict[str, Callable]) -> int:
    """An Agent's user part: runs the root part's requests until it closes the
    channel. Returns 0."""
    r, w = (int(x) for x in os.environ[_ENV_AGENT].split(","))
    inp, out = os.fdopen(r, "r"), os.fdopen(w, "w", buffering=1)
    for line in inp:
        out.write(json.dumps(_answer(handlers, line.encode())) + "\n")
    return 0

_rpc: tuple | None = None


def call(op: str, *args):
    """Asks the root part to run its handler `op`(*args); returns its result, or raises
    RuntimeError with the root part's exception."""
    global _rpc
    if _rpc is None:
        r, w = (int(x) for x in os.environ[_ENV_RPC].split(","))
        os.set_inheritable(r, False)   # FUSE daemons must not keep the channel open
        os.set_inheritable(w, False)
        _rpc = (os.fdopen(w, "w", buffering=1), os.fdopen(r, "r"))
    out, inp = _rpc
    out.write(json.dumps({"op": op, "args": list(args)}) + "\n")
    line = inp.readline()
    if not line:
        raise RuntimeError(f"root part gone while asking {op}")
    reply = json.loads(line)
    if not reply["ok"]:
        raise RuntimeError(f"root part: {op}{tuple(args)}: {reply['error']}")
    return reply["value"]


def close_rpc_fds() -> None:
    """The user part keeps the channel to itself: no child (a FUSE daemon) inherits it."""
    for v in (os.environ.get(_ENV_RPC), os.environ.get(_ENV_AGENT)):
        if not v:
            continue
        for fd in (int(x) for x in v.split(",")):
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def describe() -> str:
    """One line on where this process runs: uid inside and outside, the maps."""
    with open("/proc/self/uid_map") as f:
        umap = " | ".join(" ".join(line.split()) for line in f)
    return f"uid {os.getuid()} in a user namespace (uid_map: {umap})"


if in_user_part():
    close_rpc_fds()
