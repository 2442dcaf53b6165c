#!/usr/bin/env python3
"""Shutdown: the daemon ends after every unmount, whatever is in flight, and a mount
of the same workdir right after an unmount waits for the daemon still leaving it.

0. A request blocked in a layer when the mount goes: the lower layer is on a FUSE
   filesystem (faultyfs) whose daemon is stopped (SIGSTOP); a lower file opened
   through the mount is closed, so the daemon's RELEASE waits in its own close of
   the lower file; the mount is unmounted (umount, umount -l, fusermount3 -u) or
   the daemon gets SIGTERM, and only then does the lower continue: the request
   finishes after its transport has ended, and the daemon must still end. Over
   io_uring this hung (the worker waited for a reply that went to /dev/fuse
   instead of its ring).
1. Unmount under load, many rounds, over FUSE over io_uring (the default) and over
   /dev/fuse (io_uring=off): processes create, write, read, copy up, list, stat,
   rename and remove files on the mount while it is unmounted with `umount`,
   `umount -l` (the processes go on through their open directories for a while,
   so the filesystem ends when they do) or `fusermount3 -u`. Files written and
   closed just before give RELEASE requests (each checks the file's writeback) that
   are still being served when the connection goes. Each round the daemon must be
   gone within a deadline; if not, the test prints its threads' backtraces (gdb,
   else /proc/PID/task/*/stack), kills it and fails.
2. A fast unmount/mount loop on one upper and workdir, volatile and not: each
   mount writes 16 MiB and is unmounted, and the next is mounted at once. Every
   mount must succeed and see what the previous one wrote, and when a mount
   returns, the previous daemon must be gone (no two daemons on one workdir).

Run with --rounds N (default 50) for more or fewer rounds of part 1."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import random
import signal
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start, write  # noqa: E402

EXIT_DEADLINE = 10.0  # s from the unmount (and the last user gone) to the daemon's end
WORKERS = 4
ENABLE_URING = "/sys/module/fuse/parameters/enable_uring"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
MNT_DETACH = 2


def status(ovlfs: str, mnt: str) -> dict:
    return json.loads(wblib.run([ovlfs, "status", mnt, "--json"]).stdout)


def gone(pid: int) -> bool:
    """The process has ended (no such process, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def holds_nothing(pid: int) -> bool:
    """The process has ended, or is so far into its exit that it holds no fd."""
    if gone(pid):
        return True
    try:
        return not os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return True


def backtraces(pid: int) -> str:
    """The threads' backtraces of a live process: gdb's, else the kernel stacks."""
    if shutil.which("gdb"):
        try:
            p = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                               capture_output=True, text=True, timeout=120)
            return p.stdout + p.stderr[-2000:]
        except subprocess.TimeoutExpired:
            pass
    out = []
    try:
        for tid in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
            t = f"/proc/{pid}/task/{tid}"
            try:
                comm = open(f"{t}/comm").read().strip()
                wchan = open(f"{t}/wchan").read().strip()
                stack = open(f"{t}/stack").read()
            except OSError as e:
                comm, wchan, stack = "?", "?", str(e)
            out.append(f"thread {tid} ({comm}) in {wchan}:\n{stack}")
    except OSError as e:
        out.append(str(e))
    return "\n".join(out)


class Daemon:
    """`ovlfs -f` as a child of the test (parts 0 and 1): its exit status and its
    stderr are checked too (0 and nothing, also after SIGTERM: an abort of the
    lock-order checker, a crash or a complaint fails the round)."""

    def __init__(self, ovlfs: str, opts: str, mnt: str, log: str):
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([ovlfs, "-f", "-o", opts, mnt], stdin=subprocess.DEVNULL,
                                         stdout=f, stderr=subprocess.STDOUT,
                                         preexec_fn=wblib.die_with_parent())
        self.pid = self.proc.pid
        deadline = time.monotonic() + 10
        while not wblib.is_mountpoint(mnt):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"ovlfs did not mount {mnt}: {self.output()}")
            time.sleep(0.002)

    def output(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read().strip()

    def wait(self, deadline: float) -> bool:
        """Whether it ended by the deadline."""
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.001)
        return True

    def ended_well(self) -> tuple[bool, str]:
        rc = self.proc.returncode
        out = "\n".join(line for line in self.output().splitlines()
                        if "turned on FUSE over io_uring" not in line)  # a note, at mount
        return rc == 0 and not out, f"exit status {rc}" + (f", said: {out[-300:]}" if out else "")


def wait_gone(pid: int, deadline: float) -> bool:
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def watchdog_kill(c, pid: int, what: str) -> None:
    """The daemon outlived its deadline: its backtraces, SIGKILL, a failure."""
    print(f"=== {what}: daemon {pid} still running; its threads:\n{backtraces(pid)}", flush=True)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    wait_gone(pid, time.monotonic() + 10)
    c.expect(False, f"{what}: the daemon (pid {pid}) ended within {EXIT_DEADLINE:.0f} s "
                    "of the unmount (killed)")


# --- part 1: unmount under load -------------------------------------------------------

def worker(mnt: str, k: int, lazy: bool, seconds: float) -> None:
    """A child process's load on mnt/d{k} (a lower directory): never returns."""
    rnd = random.Random(os.getpid())
    try:
        os.sched_setaffinity(0, {k % os.cpu_count()})  # spread over the CPUs' queues
    except OSError:
        pass
    base = f"{mnt}/d{k}"
    dfd = None
    if lazy:
        # Through the directory itself: after a lazy unmount the requests still
        # reach the detached mount until this process ends.
        dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)

    def p(name: str) -> str:
        return name if lazy else f"{base}/{name}"

    kw = {"dir_fd": dfd} if lazy else {}
    end = time.monotonic() + seconds
    data = os.urandom(32 << 10)
    i = 0
    while time.monotonic() < end:
        i += 1
        op = rnd.randrange(8)
        try:
            if op <= 1:  # create, write, close: a RELEASE that checks writeback
                fd = os.open(p(f"n{i % 16}"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644, **kw)
                os.write(fd, data)
                os.close(fd)
            elif op == 2:  # read a lower file
                fd = os.open(p(f"f{rnd.randrange(20)}"), os.O_RDONLY, **kw)
                while os.read(fd, 65536):
                    pass
                os.close(fd)
            elif op == 3:  # copy-up: append to a lower file
                fd = os.open(p(f"f{rnd.randrange(20)}"), os.O_WRONLY | os.O_APPEND, **kw)
                os.write(fd, b"+")
                os.close(fd)
            elif op == 4:  # list and stat (ls -l)
                fd = os.open(p("."), os.O_RDONLY | os.O_DIRECTORY, **kw) if lazy else None
                names = os.listdir(fd if lazy else base)
                if fd is not None:
                    os.close(fd)
                for n in names[:16]:
                    os.stat(p(n), follow_symlinks=False, **kw)
            elif op == 5:
                os.rename(p(f"n{rnd.randrange(16)}"), p(f"r{rnd.randrange(16)}"), **(
                    {"src_dir_fd": dfd, "dst_dir_fd": dfd} if lazy else {}))
            elif op == 6:
                os.unlink(p(f"r{rnd.randrange(16)}"), **kw)
            else:
                os.mkdir(p(f"s{i % 4}"), **kw)
                os.rmdir(p(f"s{i % 4}"), **kw)
        except OSError as e:
            if e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
                break
            if not lazy and not os.path.isdir(base):
                break  # unmounted: the path now leads to the empty mountpoint
    os._exit(0)


def unmount(method: str, mnt: str, deadline: float) -> tuple[bool, int]:
    """Unmounts mnt by `method`, retrying while busy. Returns (done, attempts)."""
    tries = 0
    while True:
        tries += 1
        if method == "umount -l":
            ok = _libc.umount2(mnt.encode(), MNT_DETACH) == 0
        else:
            cmd = ["umount", mnt] if method == "umount" else ["fusermount3", "-u", mnt]
            ok = subprocess.run(cmd, capture_output=True).returncode == 0
        if ok or time.monotonic() > deadline:
            return ok, tries


def under_load(args, c, cl, transport: str, rounds: int) -> None:
    t = cl.tmpdir(f"ovlfs-shutdown-{'uring' if transport == 'io_uring' else 'devfuse'}.")
    lower, upper, work, mnt = (f"{t}/{d}" for d in ("l", "u", "w", "m"))
    for d in (lower, upper, work, mnt):
        os.mkdir(d)
    for k in range(WORKERS):
        os.mkdir(f"{lower}/d{k}")
        for j in range(20):
            write(f"{lower}/d{k}/f{j}", os.urandom(16 << 10))
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if transport != "io_uring":
        opts += ",io_uring=off"
    methods = ["umount", "umount -l", "fusermount3 -u"]
    if not shutil.which("fusermount3"):
        methods.remove("fusermount3 -u")
    latencies: dict[str, list[float]] = {m: [] for m in methods}
    tries_total = 0
    t_start = time.monotonic()
    done_rounds = 0
    for r in range(rounds):
        method = methods[r % len(methods)]
        lazy = method == "umount -l"
        d = Daemon(args.ovlfs, opts, mnt, f"{t}/daemon.log")
        try:
            st = status(args.ovlfs, mnt)
        except Exception:
            wblib.umount(mnt)
            raise
        pid = d.pid
        if r == 0:
            c.expect(st["transport"] == transport,
                     f"{transport}: the mount's transport is {st['transport']}")
        kids = []
        for k in range(WORKERS):
            # A plain unmount succeeds only while no system call is in progress on
            # the mount: the load stops early (what is still in flight then are
            # the RELEASEs of the files it closed), and the unmount is retried.
            seconds = 0.05 + random.random() * 0.1 if lazy else 0.02 + random.random() * 0.04
            child = os.fork()
            if child == 0:
                try:
                    worker(mnt, k, lazy, seconds)
                finally:
                    os._exit(1)
            kids.append(child)
        time.sleep(0.02 + random.random() * 0.03)  # requests in flight
        ok, tries = unmount(method, mnt, time.monotonic() + 10)
        t_unmounted = time.monotonic()
        tries_total += tries
        if not ok:
            c.expect(False, f"{transport} round {r}: {method} succeeded within 10 s "
                            f"({tries} attempts)")
        # The load ends (lazy: when its time is up, and the detached mount with it).
        kid_deadline = time.monotonic() + EXIT_DEADLINE
        left = set(kids)
        while left and time.monotonic() < kid_deadline:
            for k in list(left):
                if os.waitpid(k, os.WNOHANG)[0]:
                    left.discard(k)
            time.sleep(0.001)
        t_quiet = time.monotonic() if lazy else t_unmounted
        hung = not d.wait(t_quiet + EXIT_DEADLINE)
        if hung:
            watchdog_kill(c, pid, f"{transport} round {r} ({method})")
            d.proc.wait()
        elif not d.ended_well()[0]:
            c.expect(False, f"{transport} round {r} ({method}): the daemon ended well: "
                            f"{d.ended_well()[1]}")
            break
        for k in left:  # stuck on the hung daemon: free now that it is killed
            try:
                os.kill(k, signal.SIGKILL)
            except OSError:
                pass
            os.waitpid(k, 0)
        if not ok:
            wblib.umount(mnt)
        if hung:
            break
        latencies[method].append(time.monotonic() - t_quiet)
        done_rounds += 1
        if left:
            c.expect(False, f"{transport} round {r}: the load's processes ended")
            break
    took = time.monotonic() - t_start
    c.expect(done_rounds == rounds, f"{transport}: the daemon ended after each of "
             f"{done_rounds} of {rounds} unmounts under load ({took:.1f} s, "
             f"{tries_total} unmount attempts)")
    for m, ls in latencies.items():
        if ls:
            ls.sort()
            print(f"{transport}: {m}: daemon gone {ls[len(ls) // 2] * 1000:.1f} ms after "
                  f"(median of {len(ls)}, max {ls[-1] * 1000:.1f} ms)", flush=True)
    c.expect(not wblib.is_mountpoint(mnt) and os.listdir(mnt) == [],
             f"{transport}: nothing left mounted or written under the mountpoint")


# --- part 2: a fast unmount/mount loop on one workdir ---------------------------------

def remount_loop(args, c, cl, volatile: bool, rounds: int) -> None:
    tag = "volatile" if volatile else "non-volatile"
    t = cl.tmpdir(f"ovlfs-remount-{tag}.")
    lower, upper, work, mnt = (f"{t}/{d}" for d in ("l", "u", "w", "m"))
    for d in (lower, upper, work, mnt):
        os.mkdir(d)
    write(f"{lower}/base", "lower")
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (",volatile" if volatile else "")
    prev_pid = None
    prev_sum = None
    failures = []
    overlaps = []
    t0 = time.monotonic()
    mount_times = []
    for r in range(rounds):
        t_mount = time.monotonic()
        p = subprocess.run([args.ovlfs, "-o", opts, mnt], capture_output=True, text=True,
                           timeout=60)
        mount_times.append(time.monotonic() - t_mount)
        if p.returncode != 0:
            failures.append(f"round {r}: mount failed: {p.stderr.strip()}")
            break
        pid = status(args.ovlfs, mnt)["pid"]
        if prev_pid is not None and not holds_nothing(prev_pid):
            overlaps.append(f"round {r}: daemon {pid} mounted while daemon {prev_pid} "
                            "still ran on the workdir")
        if r > 0:
            with open(f"{mnt}/gen") as f:
                gen = f.read()
            with open(f"{mnt}/data", "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
            if gen != str(r - 1) or got != prev_sum:
                failures.append(f"round {r}: saw generation {gen!r} and data "
                                f"{'intact' if got == prev_sum else 'changed'}, "
                                f"expected generation {r - 1}")
        data = os.urandom(16 << 20)
        prev_sum = hashlib.sha256(data).hexdigest()
        write(f"{mnt}/data", data)
        write(f"{mnt}/gen", str(r))
        wblib.umount(mnt)
        prev_pid = pid
    took = time.monotonic() - t0
    mount_times.sort()
    print(f"{tag}: a mount right after an unmount took {mount_times[len(mount_times) // 2] * 1000:.1f} ms "
          f"(median of {len(mount_times)}, max {mount_times[-1] * 1000:.1f} ms; it waits for the "
          "previous daemon's final writeback)", flush=True)
    if prev_pid is not None and not wait_gone(prev_pid, time.monotonic() + EXIT_DEADLINE):
        watchdog_kill(c, prev_pid, f"remount loop ({tag}), last round")
    c.expect(not failures, f"{tag}: {rounds} mounts, each right after the previous "
             f"unmount, all succeed and see the previous mount's data ({took:.1f} s)"
             + (": " + "; ".join(failures[:3]) if failures else ""))
    c.expect(not overlaps, f"{tag}: no mount returned while the previous daemon still "
             "ran on the workdir" + (": " + "; ".join(overlaps[:3]) if overlaps else ""))


# --- part 0: a request blocked in a layer when the mount goes ---------------------------

def stopped(pid: int, timeout: float = 10) -> None:
    """Waits until every thread of pid has stopped (SIGSTOP takes effect in each
    thread on its own, and one still running could yet answer a request)."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        if all(st in ("T", "t") for st in states) or time.monotonic() > deadline:
            return
        time.sleep(0.001)


def blocked_at_unmount(args, c, cl, transport: str, method: str) -> None:
    """RELEASE of a lower file blocks in the daemon (its close(2) of the lower file
    sends FLUSH to the stopped lower), the mount goes (or a signal ends the
    daemon), then the lower continues."""
    what = f"{transport}, {method}"
    t = cl.tmpdir("ovlfs-shutdown-blocked.")
    for d in ("back", "back/lower", "slow", "u", "w", "m"):
        os.mkdir(f"{t}/{d}")
    write(f"{t}/back/lower/f0", "lower 0")
    fs = wblib.FaultyFs(args.faultyfs, f"{t}/back", f"{t}/slow", f"{t}/faultyfs.log")
    fs.start()
    cl.push("stop faultyfs", fs.stop)
    mnt = f"{t}/m"
    opts = f"lowerdir={t}/slow/lower,upperdir={t}/u,workdir={t}/w"
    if transport != "io_uring":
        opts += ",io_uring=off"
    d = Daemon(args.ovlfs, opts, mnt, f"{t}/daemon.log")
    cl.push("kill the daemon", lambda: d.proc.kill() if d.proc.poll() is None else None)
    cl.push(f"umount {mnt}", lambda: wblib.umount(mnt) if wblib.is_mountpoint(mnt) else None)
    st = status(args.ovlfs, mnt)
    pid = d.pid
    c.expect(st["transport"] == transport, f"{what}: the transport is {st['transport']}")

    fd = os.open(f"{mnt}/f0", os.O_RDONLY)  # the daemon opens the lower file
    data = os.read(fd, 100)
    os.kill(fs.proc.pid, signal.SIGSTOP)
    cl.push("continue faultyfs", lambda: os.kill(fs.proc.pid, signal.SIGCONT))
    stopped(fs.proc.pid)
    os.close(fd)  # RELEASE, asynchronous: the daemon's close of the lower file waits
    time.sleep(0.2)
    if method == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
        ok = True
    else:
        ok, _ = unmount(method, mnt, time.monotonic() + 10)
    t_end = time.monotonic()
    time.sleep(0.2)  # the daemon's session has ended meanwhile; the request still waits
    alive = d.proc.poll() is None
    os.kill(fs.proc.pid, signal.SIGCONT)
    hung = not d.wait(t_end + EXIT_DEADLINE)
    took = time.monotonic() - t_end
    if hung:
        watchdog_kill(c, pid, what)
        d.proc.wait()
    else:
        well, how = d.ended_well()
        c.expect(well, f"{what}: the daemon ended well: {how}")
    if method == "SIGTERM" and wblib.is_mountpoint(mnt):
        wblib.umount(mnt)
    c.expect(data == b"lower 0" and ok and alive and not hung,
             f"{what}: a RELEASE blocked in the lower when the session ended (daemon still "
             f"serving it 0.2 s later: {alive}; ended: {ok}): the daemon ended "
             f"{took:.2f} s after that (0.2 s of it the lower was stopped)")


def main() -> int:
    args, c = start([("--rounds", {"type": int, "default": 50}),
                     ("--remounts", {"type": int, "default": 20}),
                     ("--faultyfs", {"required": True}),
                     ("--only", {"default": ""})])
    try:
        with open(ENABLE_URING) as f:
            enable = f.read().strip()
    except OSError:
        enable = None
    print(f"fuse module enable_uring: {enable if enable is not None else 'absent'}", flush=True)
    transports = ["io_uring", "/dev/fuse"]
    if enable is None:
        print("SKIP io_uring rounds: this kernel's fuse has no io_uring", flush=True)
        transports.remove("io_uring")
    methods = ["umount", "umount -l", "SIGTERM"]
    if shutil.which("fusermount3"):
        methods.append("fusermount3 -u")
    for transport in transports:
        for method in methods:
            with wblib.Cleanup() as cl:
                blocked_at_unmount(args, c, cl, transport, method)
    if args.only == "blocked":
        return c.finish()
    for transport in transports:
        with wblib.Cleanup() as cl:
            under_load(args, c, cl, transport, args.rounds)
    for volatile in (False, True):
        with wblib.Cleanup() as cl:
            remount_loop(args, c, cl, volatile, args.remounts)
    return c.finish()


if __name__ == "__main__":
    sys.exit(main())
