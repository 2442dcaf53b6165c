"""conclib: the machinery of ovlfs's concurrency tests (test_concurrency.py).

Everything that touches the mount runs in a worker: a forked process (its own
process group, SIGKILLed if the test dies) that returns a picklable result through
a pipe. The test itself never makes a system call on the mount, so a deadlocked
daemon can never hang it: every phase of a round (the stress, the checks, even the
umount) runs under a deadline, and a phase that misses it is a hang. Then the test

  (a) prints the daemon's thread backtraces (gdb, with the owner of every mutex a
      thread waits for, and the deadlock cycles that makes; /proc/PID/task/*/stack
      and wchan without gdb, or with OVLFS_CONC_NO_GDB=1) and the kernel stacks of
      the blocked workers,
  (b) SIGKILLs the daemon, aborts the FUSE connection (fusectl) and detaches the
      mount lazily, so that every process blocked in it returns,
  (c) kills the workers,
  (d) raises Hang with a one-line reason.

The daemon runs in the foreground under the test (`ovlfs -f`, in a session of its
own, SIGTERMed if the test dies), so its pid is known from the start.
"""
from __future__ import annotations

import ctypes
import errno
import mmap
import os
import pickle
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402

FUSECTL = "/sys/fs/fuse/connections"
KERNEL_OPTS = "redirect_dir=on,index=off,metacopy=off,xino=off"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_MNT_DETACH = 2
_PR_SET_PDEATHSIG = 1
RENAME_EXCHANGE = 2


class Hang(Exception):
    """A phase missed its deadline; the message is the one-line reason."""


class Failure(Exception):
    """A check failed, or a worker raised; the message says which."""


def rename_exchange(a: str, b: str) -> None:
    if _libc.renameat2(-100, a.encode(), -100, b.encode(), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a)


# ---------------------------------------------------------------------------------------
# Workers


class Board:
    """A few bytes of memory shared with every worker forked after it: slot 0 tells
    all workers to stop (set when one of them fails), slots 1.. are "done" flags."""

    def __init__(self, slots: int = 64):
        self._m = mmap.mmap(-1, slots)

    def stop(self) -> None:
        self._m[0] = 1

    def stopped(self) -> bool:
        return self._m[0] == 1

    def done(self, slot: int) -> None:
        self._m[slot] = 1

    def finished(self, producers: int) -> bool:
        """Stopped, or slots 1..producers all done."""
        return self.stopped() or all(self._m[i] for i in range(1, producers + 1))


class Gate:
    """A start line: workers call wait() (says "ready", then waits to be let go);
    open() waits until every worker is ready and lets them all go at once."""

    def __init__(self, n: int):
        self.n = n
        self._ready_r, self._ready_w = os.pipe2(os.O_CLOEXEC)
        self._go_r, self._go_w = os.pipe2(os.O_CLOEXEC)

    def wait(self) -> None:
        os.write(self._ready_w, b"r")
        if os.read(self._go_r, 1) != b"g":
            raise RuntimeError("the gate closed before it opened")

    def open(self, timeout: float = 30) -> int:
        """Returns how many workers were ready (all of them, unless some died first)."""
        got, deadline = 0, time.monotonic() + timeout
        while got < self.n:
            r, _, _ = select.select([self._ready_r], [], [], max(0, deadline - time.monotonic()))
            if not r:
                break
            got += len(os.read(self._ready_r, self.n - got))
        os.write(self._go_w, b"g" * self.n)
        self.close()
        return got

    def close(self) -> None:
        for fd in (self._ready_r, self._ready_w, self._go_r, self._go_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._ready_r = self._ready_w = self._go_r = self._go_w = -1


class Worker:
    """A forked process running fn(*args); its result comes back pickled."""

    def __init__(self, name: str, pid: int, rfd: int):
        self.name, self.pid, self.rfd = name, pid, rfd
        self.buf = b""
        self.status: int | None = None  # os.waitpid's status once reaped

    @property
    def running(self) -> bool:
        return self.status is None

    def result(self):
        """The function's return value; raises Failure if it raised or died."""
        try:
            kind, value = pickle.loads(self.buf) if self.buf else ("died", None)
        except Exception as e:  # a truncated pickle: killed while writing
            kind, value = "died", str(e)
        if kind == "ok":
            return value
        if kind == "error":
            raise Failure(f"worker {self.name} raised {value.strip().splitlines()[-1]}\n"
                          f"{value}")
        raise Failure(f"worker {self.name} died: {describe_status(self.status)}")

    def try_reap(self) -> bool:
        if self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = st
        return self.status is not None

    def kill(self) -> None:
        if self.status is None:
            for kill in (lambda: os.killpg(self.pid, signal.SIGKILL),
                         lambda: os.kill(self.pid, signal.SIGKILL)):
                try:
                    kill()
                except ProcessLookupError:
                    pass


def describe_status(st: int | None) -> str:
    if st is None:
        return "still running"
    if os.WIFSIGNALED(st):
        return f"killed by {signal.Signals(os.WTERMSIG(st)).name}"
    return f"exit {os.waitstatus_to_exitcode(st)}"


LIVE: dict[int, Worker] = {}  # every worker not yet reaped, for the cleanup


def spawn(name: str, fn: Callable, *args) -> Worker:
    """Forks a worker running fn(*args) in a process group of its own. It dies with
    this process (PR_SET_PDEATHSIG, SIGKILL) and takes the default action on SIGTERM."""
    r, w = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    with wblib.signals_deferred():
        pid = os.fork()
        if pid == 0:  # the worker
            code, payload = 1, b""
            try:
                os.close(r)
                os.setpgid(0, 0)
                for s in wblib.Cleanup._SIGNALS:
                    signal.signal(s, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, [])
                _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                payload = pickle.dumps(("ok", fn(*args)))
                code = 0
            except BaseException:
                payload = pickle.dumps(("error", traceback.format_exc()))
            finally:
                try:
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(w, view):]
                finally:
                    os._exit(code)
        os.close(w)
        try:
            os.setpgid(pid, pid)  # also here: no race with a kill right after the fork
        except OSError:
            pass
        worker = Worker(name, pid, r)
        LIVE[pid] = worker
    return worker


def kill_live_workers(timeout: float = 10) -> list[str]:
    """SIGKILLs every worker still running and reaps it; returns those that did not
    end within timeout (still blocked in the kernel)."""
    for w in list(LIVE.values()):
        w.kill()
    deadline = time.monotonic() + timeout
    stuck: list[str] = []
    for pid, w in list(LIVE.items()):
        while not w.try_reap() and time.monotonic() < deadline:
            time.sleep(0.02)
        if w.running:
            stuck.append(f"{w.name} (pid {pid}, {proc_state(pid)})")
        else:
            _forget(w)
    return stuck


def _forget(w: Worker) -> None:
    LIVE.pop(w.pid, None)
    if w.rfd >= 0:
        os.close(w.rfd)
        w.rfd = -1


def wait_workers(workers: list[Worker], deadline: float, board: Board | None = None) -> bool:
    """Collects the workers' results until all have exited or the monotonic deadline
    passes; returns whether all exited. When one fails, tells the others (board) to stop."""
    while True:
        reading = [w for w in workers if w.rfd >= 0]
        for w in workers:
            if w.running and w.try_reap():
                if board and os.waitstatus_to_exitcode(w.status) != 0:
                    board.stop()
        if all(not w.running for w in workers) and not reading:
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        r, _, _ = select.select([w.rfd for w in reading], [], [], min(left, 0.05))
        for w in reading:
            if w.rfd in r:
                data = os.read(w.rfd, 1 << 16)
                if data:
                    w.buf += data
                else:
                    os.close(w.rfd)
                    w.rfd = -1


# ---------------------------------------------------------------------------------------
# Mounts


def mountinfo_entry(mnt: str) -> dict | None:
    """The mount at mnt (a real path, never resolved here: that would stat the mount),
    the last one stacked there, with its device number."""
    found = None
    for m in wblib.mountinfo():
        if m["mountpoint"] == mnt:
            found = m
    return found


def ensure_fusectl() -> None:
    """fusectl (where a FUSE connection is aborted) mounted in this namespace."""
    if os.path.isdir(FUSECTL) and mountinfo_entry(FUSECTL) is None:
        wblib.run(["mount", "-t", "fusectl", "fusectl", FUSECTL], check=False)


def detach(mnt: str) -> None:
    """umount2(MNT_DETACH) of every mount stacked at mnt."""
    while mountinfo_entry(mnt) is not None:
        if _libc.umount2(mnt.encode(), _MNT_DETACH) != 0:
            break


class Mount:
    """An overlay at mnt: ovlfs (binary) run by this test in the foreground, or the
    kernel's overlayfs (binary "kernel", for checking the test itself). Every method
    that could wait on the mount does so in a worker, under a deadline."""

    def __init__(self, binary: str, mnt: str, log: str):
        self.binary, self.mnt, self.log = binary, mnt, log
        self.daemon: subprocess.Popen | None = None
        self.conn: str | None = None  # the FUSE connection's number in fusectl
        self.exit_times: list[float] = []  # how long the daemon lived on after each umount

    @property
    def kernel(self) -> bool:
        return self.binary == "kernel"

    @property
    def mounted(self) -> bool:
        return mountinfo_entry(self.mnt) is not None

    def mount(self, lowers: list[str], upper: str, work: str, extra: str = "",
              timeout: float = 30) -> None:
        opts = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        if self.kernel:
            extra = ",".join(o for o in (extra, KERNEL_OPTS) if o and not o.startswith(
                ("io_uring", "passthrough")))
            wblib.run(["mount", "-t", "overlay", "overlay", "-o", f"{opts},{extra}", self.mnt])
            return
        if extra:
            opts += "," + extra
        with open(self.log, "ab") as logf, wblib.signals_deferred():
            self.daemon = subprocess.Popen(
                [self.binary, "-f", "-o", opts, self.mnt], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=wblib.die_with_parent())
        deadline = time.monotonic() + timeout
        while (ent := mountinfo_entry(self.mnt)) is None:
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                self.kill_daemon()
                raise Failure(f"ovlfs -o {opts} did not mount: {self.log_tail()}")
            time.sleep(0.005)
        self.conn = ent["dev"].split(":")[1]

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-lines:]).strip()
        except OSError:
            return ""

    def umount(self, deadline_s: float, on_hang: Callable[[str, list[Worker]], None],
               lazy: bool = False) -> None:
        """umount (in a worker); missing deadline_s is a hang (on_hang raises). Lazy:
        `umount -l`, which the processes still using the mount outlive."""
        w = self._umount_worker(lazy)
        if not wait_workers([w], time.monotonic() + deadline_s):
            on_hang("umount" + " -l" * lazy, [w])
        _forget(w)
        if w.result() != 0 and self.mounted:
            raise Failure(f"umount {self.mnt} failed (busy?)")

    def wait_exit(self, deadline_s: float, on_hang: Callable[[str, list[Worker]], None]
                  ) -> None:
        """Waits for the daemon to exit once it is unmounted and unused; missing
        deadline_s is a hang (on_hang raises)."""
        if self.daemon is None:
            return
        t0 = time.monotonic()
        try:
            self.daemon.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            on_hang("the daemon's exit after umount", [])
        self.exit_times.append(time.monotonic() - t0)
        code, self.daemon, self.conn = self.daemon.returncode, None, None
        if code != 0:
            raise Failure(f"ovlfs exited {code} after umount: {self.log_tail()}")

    def _umount_worker(self, lazy: bool = False) -> Worker:
        cmd = ["umount", *(["-l"] if lazy else []), self.mnt]
        return spawn(" ".join(cmd[:-1]), lambda: wblib.run(cmd, check=False).returncode)

    def kill_daemon(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def abort(self) -> None:
        """(b): SIGKILL the daemon, abort its FUSE connection, detach the mount."""
        if self.daemon is not None:
            try:
                self.daemon.kill()
            except ProcessLookupError:
                pass
        # Only while the mount is still there with that device: once it is gone the
        # connection's number may already be another mount's (another test's).
        ent = mountinfo_entry(self.mnt)
        if self.conn is not None and ent is not None and ent["dev"].split(":")[1] == self.conn:
            try:
                with open(f"{FUSECTL}/{self.conn}/abort", "w") as f:
                    f.write("1")
            except OSError:
                pass
        detach(self.mnt)
        if self.daemon is not None:
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                print(f"warning: ovlfs pid {self.daemon.pid} survives SIGKILL "
                      f"({proc_state(self.daemon.pid)})", flush=True)
            self.daemon = None
        self.conn = None

    def close(self) -> None:
        """For the cleanup: a quick clean umount if it can be had, else abort()."""
        kill_live_workers()
        if self.mounted:
            w = self._umount_worker()
            if not wait_workers([w], time.monotonic() + 10):
                w.kill()
            if self.mounted:
                self.abort()
            kill_live_workers()
        if self.daemon is not None:
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.abort()


# ---------------------------------------------------------------------------------------
# Diagnosis of a hang


def proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read().strip() or "-"
        return f"state {state}, wchan {wchan}"
    except OSError:
        return "gone"


def _kernel_stack(task: str) -> list[str]:
    try:
        with open(f"{task}/stack") as f:
            return [ln.split()[1].split("+")[0] for ln in f if len(ln.split()) > 1]
    except OSError:
        return []


def _group_members(pgid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                out.append(int(d))
    return sorted(out)


def worker_stacks(workers: list[Worker]) -> tuple[str, str]:
    """The kernel stacks of the workers still running (and their children), grouped;
    and a short summary (where the blocked ones wait in FUSE)."""
    groups: dict[tuple, list[str]] = {}
    for w in workers:
        if not w.running:
            continue
        for pid in _group_members(w.pid) or [w.pid]:
            stack = tuple(_kernel_stack(f"/proc/{pid}"))
            groups.setdefault(stack, []).append(f"{w.name}[{pid}] {proc_state(pid)}")
    text, summary = [], Counter()
    for stack, who in groups.items():
        text.append(f"  {len(who)} process(es): {', '.join(who)}")
        text += [f"      {fn}" for fn in stack[:16]]
        fuse = [fn for fn in stack if fn.startswith("fuse_") and fn not in (
            "fuse_simple_request", "fuse_request_send")]
        if stack:
            summary[fuse[0] if fuse else stack[0]] += len(who)
    return "\n".join(text), ", ".join(f"{n} in {fn}" for fn, n in summary.most_common())


_FRAME = re.compile(r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(.+?) \(.*?\)(?: at (\S+):(\d+)| from (\S+))?\s*$")
_THREAD = re.compile(r"^Thread (\d+) \(.*?LWP (\d+)\)(?: \"(.*)\")?\)?:")
_LOCK_WAIT = ("__lll_lock_wait", "pthread_mutex_lock", "___pthread_mutex_lock",
              "__pthread_mutex_lock", "lll_mutex_lock_optimized", "pthread_rwlock_",
              "__pthread_rwlock")


def _short(fn: str) -> str:
    """A frame's function without namespace ovlfs and without a parameter list."""
    fn = re.sub(r"^(ovlfs::)+", "", fn.replace("(anonymous namespace)::", ""))
    return re.sub(r"(?<!operator)\(.*$", "", fn)


def parse_gdb(text: str) -> list[dict]:
    """gdb's `thread apply all bt` as [{tid, name, frames: [(fn, file, line)]}]."""
    threads: list[dict] = []
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            threads.append({"tid": m.group(2), "name": m.group(3) or "", "frames": []})
            continue
        m = _FRAME.match(line)
        if m and threads:
            threads[-1]["frames"].append((m.group(2), m.group(3) or m.group(5) or "", m.group(4) or ""))
    return threads


def summarize_threads(threads: list[dict], pid: int) -> tuple[str, str]:
    """The threads' stacks without arguments, identical ones grouped; and a summary:
    where the threads that wait for a lock wait (their first frames of ovlfs's own
    code), or, when none does, where every thread is."""
    groups: dict[tuple, list[str]] = {}
    for t in threads:
        key = tuple(f"{_short(fn)}{' at ' + os.path.basename(f) + ':' + ln if ln else ''}"
                    for fn, f, ln in t["frames"])
        groups.setdefault(key, []).append(f"{t['tid']}{'/' + t['name'] if t['name'] else ''}")
    text = []
    for key, tids in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        text.append(f"  {len(tids)} thread(s): {' '.join(tids)}")
        text += [f"      {fr}" for fr in key[:24]]
    waits = Counter()
    for t in threads:
        fns = [fn for fn, _, _ in t["frames"]]
        if any(any(p in fn for p in _LOCK_WAIT) for fn in fns):
            waits[_own_chain(t)] += 1
    if waits:
        return "\n".join(text), (f"{sum(waits.values())} daemon thread(s) wait for a lock: "
                                 + "; ".join(f"{n}x {c}" for c, n in waits.most_common()))
    where = Counter(("main thread in " if t["tid"] == str(pid) else "") + _own_chain(t, 2)
                    for t in threads)
    return "\n".join(text), "no daemon thread waits for a lock; threads: " + "; ".join(
        f"{n}x {c}" if n > 1 else c for c, n in sorted(where.items(), key=lambda kv: (
            not kv[0].startswith("main"), -kv[1])))


# Run inside gdb: for every thread blocked in pthread_mutex_lock, which thread owns
# the mutex (glibc keeps the owner's tid in it). Printed as "LOCKWAIT waiter owner mutex".
_GDB_OWNERS = """
import gdb
for thread in gdb.selected_inferior().threads():
    thread.switch()
    frame = gdb.newest_frame()
    while frame is not None:
        name = frame.name() or ""
        if name.endswith("pthread_mutex_lock") or name == "std::mutex::lock":
            try:
                m = frame.read_var("mutex" if "pthread" in name else "this")
                if name == "std::mutex::lock":
                    m = m["_M_mutex"].address
                print("LOCKWAIT %d %d %s" % (thread.ptid[1], int(m["__data"]["__owner"]),
                                             str(m).split()[0]))
                break
            except Exception:
                pass
        frame = frame.older()
"""


def lock_cycles(threads: list[dict], waits: dict[str, tuple[str, str]]) -> list[str]:
    """From "thread waits for a mutex owned by thread": each deadlock cycle, described
    by where each thread of it waits (its first frames in ovlfs's own code)."""
    where = {t["tid"]: _own_chain(t) for t in threads}
    seen, out = set(), []
    for start in waits:
        path, t = [], start
        while t in waits and t not in path:
            path.append(t)
            t = waits[t][0]
        if t in path:
            cycle = path[path.index(t):]
            key = frozenset(cycle)
            if key in seen:
                continue
            seen.add(key)
            if len(cycle) == 1:
                out.append(f"self-deadlock: thread {t} in {where.get(t)} waits for a mutex "
                           "it holds itself")
            else:
                out.append("deadlock: " + " waits for ".join(
                    f"thread {c} in {where.get(c)}" for c in cycle)
                    + f", which waits for thread {cycle[0]}")
    return out


def _own_chain(t: dict, depth: int = 3) -> str:
    """The first frames of ovlfs's own code in a thread's stack."""
    own = [(_short(fn), f, ln) for fn, f, ln in t["frames"]
           if "/src/" in f and not _short(fn).startswith("std::")]
    if not own:
        return "?"
    first = f"{own[0][0]} ({os.path.basename(own[0][1])}:{own[0][2]})"
    return " <- ".join([first] + [fn for fn, _, _ in own[1:depth]])


def daemon_stacks(pid: int, scratch: str) -> tuple[str, str]:
    """The daemon's thread backtraces (gdb, else the kernel's view of each thread),
    and a summary: the deadlock cycles among its mutexes, or where threads wait."""
    gdb = None if os.environ.get("OVLFS_CONC_NO_GDB") else shutil.which("gdb")
    if gdb:
        script = os.path.join(scratch, "lockwait.py")
        with open(script, "w") as f:
            f.write(_GDB_OWNERS)
        try:
            p = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx",
                                "-ex", "set print frame-arguments none",
                                "-ex", "thread apply all bt", "-x", script],
                               stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               timeout=120)
            threads = parse_gdb(p.stdout)
            if threads:
                waits = {}
                for line in p.stdout.splitlines():
                    w = line.split()
                    if len(w) == 4 and w[0] == "LOCKWAIT":
                        waits[w[1]] = (w[2], w[3])
                text, summary = summarize_threads(threads, pid)
                text += "".join(f"\n  thread {w} waits for mutex {m} held by thread {o}"
                                for w, (o, m) in sorted(waits.items()))
                cycles = lock_cycles(threads, waits)
                return text, "; ".join(cycles) if cycles else summary
            return p.stdout + p.stderr, "gdb gave no backtrace"
        except subprocess.TimeoutExpired:
            pass
    text = ["  (no gdb: the kernel's view of each thread)"]
    states = Counter()
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return "  daemon gone", "daemon gone"
    for tid in tids:
        task = f"/proc/{pid}/task/{tid}"
        try:
            with open(f"{task}/comm") as f:
                comm = f.read().strip()
            with open(f"{task}/wchan") as f:
                wchan = f.read().strip() or "-"
        except OSError:
            continue
        states[wchan] += 1
        text.append(f"  thread {tid} {comm}: wchan {wchan}")
        text += [f"      {fn}" for fn in _kernel_stack(task)[:12]]
    return "\n".join(text), "daemon threads by wchan: " + ", ".join(
        f"{n} {w}" for w, n in states.most_common())


def handle_hang(m: Mount, what: str, deadline_s: float, workers: list[Worker]) -> None:
    """(a)-(d) above; raises Hang."""
    print(f"\nHANG: {what} did not finish within {deadline_s:.0f} s", flush=True)
    wtext, wsum = worker_stacks(workers)
    if wtext:
        print(f"blocked workers (kernel stacks):\n{wtext}", flush=True)
    dsum = ""
    if m.daemon is not None and m.daemon.poll() is None:
        dtext, dsum = daemon_stacks(m.daemon.pid, os.path.dirname(m.log))
        print(f"ovlfs pid {m.daemon.pid}, thread backtraces:\n{dtext}\n{dsum}", flush=True)
    elif m.daemon is not None:
        dsum = f"the daemon exited ({m.daemon.returncode}): {m.log_tail(5)}"
    m.abort()
    stuck = kill_live_workers()
    if stuck:
        print(f"warning: workers still blocked after the abort: {stuck}", flush=True)
    raise Hang(f"{what} did not finish within {deadline_s:.0f} s"
               + (f"; workers: {wsum}" if wsum else "") + (f"; {dsum}" if dsum else ""))


# ---------------------------------------------------------------------------------------
# A round's phases


class Rig:
    """One case's directories (on a private tmpfs, or in /tmp) and its overlay mount."""

    def __init__(self, cl: wblib.Cleanup, binary: str, name: str, deadline: float,
                 tmpfs: bool = True):
        self.binary, self.deadline = binary, deadline
        top = cl.tmpdir(f"ovlfs-conc-{name}.")
        if tmpfs:
            wblib.mount(cl, "tmpfs", top, "tmpfs", "size=2g,mode=0755")
        self.top = os.path.realpath(top)
        self.lower, self.upper, self.work, self.mnt = (
            f"{self.top}/{d}" for d in ("l", "u", "w", "m"))
        for d in (self.lower, self.upper, self.work, self.mnt, f"{self.top}/kw", f"{self.top}/km"):
            os.mkdir(d)
        self.m = Mount(binary, self.mnt, f"{self.top}/ovlfs.log")
        self.extra = ""
        cl.push(f"stop the overlay on {self.mnt}", self.m.close)

    def mount(self) -> None:
        self.m.mount([self.lower], self.upper, self.work, self.extra)

    def umount(self, lazy: bool = False) -> None:
        """umount, then the daemon's exit (lazy: umount -l, and wait_exit() later)."""
        self.m.umount(self.deadline, self._on_hang, lazy)
        if not lazy:
            self.wait_exit()

    def wait_exit(self) -> None:
        self.m.wait_exit(self.deadline, self._on_hang)

    def _on_hang(self, what: str, workers: list[Worker]) -> None:
        handle_hang(self.m, what, self.deadline, workers)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def run(self, what: str, workers: list[Worker], board: Board | None = None,
            deadline: float | None = None) -> list:
        """Waits for the workers under the deadline (a hang: handle_hang raises) and
        returns their results (a worker that raised: Failure)."""
        d = self.deadline if deadline is None else deadline
        if not wait_workers(workers, time.monotonic() + d, board):
            handle_hang(self.m, what, d, workers)
        for w in workers:
            _forget(w)
        return [w.result() for w in workers]

    def call(self, what: str, fn: Callable, *args):
        """fn(*args) in one worker, under the deadline."""
        return self.run(what, [spawn(what, fn, *args)])[0]

    def kernel_view(self, fn: Callable, *args):
        """fn(mountpoint, *args) on the kernel's overlayfs over this rig's lower and
        upper (with a fresh workdir), run while ovlfs is unmounted."""
        kw, km = f"{self.top}/kw", f"{self.top}/km"
        shutil.rmtree(kw)
        os.mkdir(kw)
        wblib.run(["mount", "-t", "overlay", "overlay", "-o",
                   f"lowerdir={self.lower},upperdir={self.upper},workdir={kw},{KERNEL_OPTS}", km])
        try:
            w = spawn("kernel view", fn, km, *args)
            if not wait_workers([w], time.monotonic() + self.deadline):
                kill_live_workers()
                raise Failure("reading the kernel's overlayfs took too long")
            _forget(w)
            return w.result()
        finally:
            wblib.umount(km)


# ---------------------------------------------------------------------------------------
# Views of a tree


def tree_view(root: str, top: str, expect_names: list[str] | None = None,
              check_ino: bool = True) -> tuple[dict, list[list[str]], list[str]]:
    """What a process sees under root/top, quiescent: {path: (type, perms, size or
    content hash or link target, nlink of a non-dir)}, the groups of paths sharing an
    st_ino (hard links), and every breach of the invariants: a name listed twice, a
    listed name lstat cannot find, readdir's d_type or d_ino (check_ino) not lstat's,
    st_ino shared by entries that are not hard links, and a name of expect_names that
    lstat finds in top but readdir does not list."""
    import hashlib
    import stat as S
    view: dict = {}
    by_ino: dict[int, list[str]] = {}
    problems: list[str] = []

    def walk(rel: str) -> None:
        path = os.path.join(root, rel) if rel else root
        with os.scandir(path) as it:
            entries = [(e.name, e.inode(), e.is_dir(follow_symlinks=False),
                        e.is_symlink(), e.is_file(follow_symlinks=False)) for e in it]
        names = [e[0] for e in entries]
        dups = sorted(n for n, k in Counter(names).items() if k > 1)
        if dups:
            problems.append(f"{rel or '.'}: readdir lists {dups} more than once")
        if sorted(os.listdir(path)) != sorted(names):
            problems.append(f"{rel or '.'}: two readdirs differ")
        for name, d_ino, isdir, islnk, isreg in entries:
            p = f"{rel}/{name}" if rel else name
            try:
                st = os.lstat(os.path.join(root, p))
            except FileNotFoundError:
                problems.append(f"{p}: listed by readdir, lstat says ENOENT")
                continue
            kind = ("d" if S.S_ISDIR(st.st_mode) else "l" if S.S_ISLNK(st.st_mode)
                    else "f" if S.S_ISREG(st.st_mode) else "o")
            if (isdir, islnk, isreg) != (kind == "d", kind == "l", kind == "f"):
                problems.append(f"{p}: readdir's d_type is not lstat's type {kind}")
            if check_ino and d_ino != st.st_ino:
                problems.append(f"{p}: readdir's d_ino {d_ino} != lstat's st_ino {st.st_ino}")
            by_ino.setdefault(st.st_ino, []).append(p)
            if kind == "f":
                with open(os.path.join(root, p), "rb") as f:
                    what = hashlib.sha256(f.read()).hexdigest()[:16] + f":{st.st_size}"
            elif kind == "l":
                what = os.readlink(os.path.join(root, p))
            else:
                what = ""
            view[p] = (kind, oct(S.S_IMODE(st.st_mode)), what,
                       st.st_nlink if kind != "d" else None)
            if kind == "d":
                walk(p)
        if rel == top and expect_names is not None:
            for name in sorted(set(expect_names) - set(names)):
                try:
                    os.lstat(os.path.join(path, name))
                    problems.append(f"{top}/{name}: lstat finds it, readdir does not list it")
                except FileNotFoundError:
                    pass

    walk(top)
    groups = []
    for ino, paths in by_ino.items():
        if len(paths) > 1:
            kinds = {view[p][0] for p in paths if p in view}
            nlinks = {view[p][3] for p in paths if p in view}
            if len(kinds) != 1 or "d" in kinds or min(nlinks) < len(paths):
                problems.append(f"st_ino {ino} shared by {paths} (not hard links: "
                                f"types {kinds}, nlink {nlinks})")
            groups.append(sorted(paths))
    return view, sorted(groups), problems


def compare_views(a: dict, b: dict, a_name: str, b_name: str, limit: int = 10) -> list[str]:
    diffs = []
    for p in sorted(set(a) | set(b)):
        if a.get(p) != b.get(p):
            diffs.append(f"{p}: {a_name} {a.get(p)}, {b_name} {b.get(p)}")
    return diffs[:limit] + ([f"... {len(diffs) - limit} more"] if len(diffs) > limit else [])


def describe(path: str) -> str:
    """What lstat says of path, in a few words."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return errno_name(e.errno)
    import stat as S
    return f"{S.filemode(st.st_mode)} ino {st.st_ino} nlink {st.st_nlink} size {st.st_size}"


def errno_name(e: int) -> str:
    return errno.errorcode.get(e, str(e))
