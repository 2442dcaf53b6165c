#!/usr/bin/env python3
"""mount.wb_rig: the writeback-error rig makes REAL writeback errors, on plain ext4.

No overlay here. For both ways of SPEC §4 (ENOSPC: image on a full tmpfs; EIO: image on
faultyfs) it writes a preallocated victim through the page cache, lets writeback fail
without anyone looking, and then records what each kind of caller is told: fsync,
fdatasync and sync_file_range on fds opened before the error, after it while nobody
had seen it, and after it was seen; syncfs on directory fds likewise. This is the
kernel's reference behaviour (errseq: each open file description has its own cursor
for the file's error and another for the filesystem's) that the ovlfs tests build on.

What Linux 6.18 does, as asserted here (the same for both ways but the errno):
  * write(2) succeeds: the page cache takes the data. The error comes at writeback
    and is recorded in two errseq words: the file's (mapping->wb_err, checked by
    fsync, fdatasync and sync_file_range with WAIT_AFTER) and the filesystem's
    (sb->s_wb_err, checked by syncfs). Every open file description has a cursor into
    each, sampled at open.
  * fsync and its kin report the error once per open file description: the 1st call
    fails, the 2nd returns 0. An fd opened after the error while no one had reported
    it reports it too (an unseen error samples as 0); one opened after it was reported
    does not.
  * syncfs does the same on the filesystem's word, independently: the victim's fd
    whose fsync already reported still fails its first syncfs; a directory fd opened
    after the error but before any syncfs reported it fails once; one opened later
    never fails.
  * close(2) returns 0. The lost data stays in the page cache, clean: reads return it
    until it is evicted, and nothing writes it again. ext4 (errors=continue, default
    data_err=ignore) stays read-write, and once the cause is gone, writes succeed.
  * The errno is the block layer's: the full tmpfs gives ENOSPC (BLK_STS_NOSPC);
    faultyfs's EIO gives EIO, its ENOSPC and ETIMEDOUT come through, EDQUOT
    becomes EIO.
  * A loop request that its file takes only in part (a short write) completes as a
    SUCCESS: the error is lost. Shown (not asserted) with loop requests bigger than
    faultyfs's max_write; wblib caps them.

It also proves that the rig always cleans up: after an exception, after SIGTERM or
SIGINT at any moment (also inside a `with` statement's exit, before it closed its
fd), and (by autoclear, PR_SET_PDEATHSIG and the private namespace) after SIGKILL,
no mount, loop device or daemon is left.

Usage: test_wb_rig.py --faultyfs PATH   (root; exits 77 = skip without root)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402

MiB = 1 << 20
DATA = b"ovlfs-wb-rig " * (MiB // 13) + b"x" * (MiB % 13)


def observe(upper: wblib.Ext4OnLoop, arm, disarm, after_writeback=None) -> dict[str, str]:
    """The errno table of one real writeback error on `upper` (see the module doc)."""
    obs: dict[str, str] = {}
    victim = upper.preallocate("victim", MiB)
    opened = []

    def open_(path: str, flags: int = os.O_RDWR) -> int:
        fd = os.open(path, flags | os.O_CLOEXEC)
        opened.append(fd)
        return fd

    try:
        fd_fsync = open_(victim)
        fd_fdatasync = open_(victim)
        fd_sfr = open_(victim)
        dir_before = open_(upper.mnt, os.O_RDONLY | os.O_DIRECTORY)
        arm()
        obs["write(2) to the victim"] = str(os.pwrite(fd_fsync, DATA, 0) == len(DATA))
        wblib.writeback(fd_fsync)  # the error happens here; no one is told
        if after_writeback:
            after_writeback(obs)
        fd_unseen = open_(victim)
        dir_unseen = open_(upper.mnt, os.O_RDONLY | os.O_DIRECTORY)

        def twice(name: str, fn, *args) -> None:
            obs[f"{name}, 1st"] = wblib.errno_of(fn, *args)
            obs[f"{name}, 2nd"] = wblib.errno_of(fn, *args)

        twice("fsync, fd opened before the error", os.fsync, fd_fsync)
        twice("fdatasync, another fd opened before", os.fdatasync, fd_fdatasync)
        twice("sync_file_range(WAIT_AFTER), another fd opened before",
              wblib.sync_file_range, fd_sfr)
        twice("fsync, fd opened after the error, while unseen", os.fsync, fd_unseen)
        fd_seen = open_(victim)
        twice("fsync, fd opened after the error was seen", os.fsync, fd_seen)
        twice("syncfs, dir fd opened before the error", wblib.syncfs, dir_before)
        twice("syncfs, dir fd opened after the error, while unseen", wblib.syncfs, dir_unseen)
        twice("syncfs, the victim fd whose fsync already reported", wblib.syncfs, fd_fsync)
        dir_seen = open_(upper.mnt, os.O_RDONLY | os.O_DIRECTORY)
        twice("syncfs, dir fd opened after the error was seen", wblib.syncfs, dir_seen)
        obs["page cache still holds the lost data"] = str(os.pread(fd_fsync, 64, 0) == DATA[:64])
        obs["ext4 still read-write"] = str(not upper.read_only())
    finally:
        closes = [wblib.errno_of(os.close, fd) for fd in opened]
    obs["close(2) of every fd"] = "0" if set(closes) == {"0"} else ",".join(closes)

    disarm()
    fd = os.open(victim, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.pwrite(fd, DATA, 0)
        obs["after disarm: rewrite the victim, fsync"] = wblib.errno_of(os.fsync, fd)
    finally:
        os.close(fd)
    other = upper.path("after")
    fd = os.open(other, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, DATA)
        obs["after disarm: new file, fsync"] = wblib.errno_of(os.fsync, fd)
    finally:
        os.close(fd)
    return obs


def expected_table(err: str) -> dict[str, str]:
    """What Linux 6.18 reports for a writeback error err (observed, see the module doc)."""
    exp = {"write(2) to the victim": "True"}
    for name in ("fsync, fd opened before the error",
                 "fdatasync, another fd opened before",
                 "sync_file_range(WAIT_AFTER), another fd opened before",
                 "fsync, fd opened after the error, while unseen",
                 "syncfs, dir fd opened before the error",
                 "syncfs, dir fd opened after the error, while unseen",
                 "syncfs, the victim fd whose fsync already reported"):
        exp[f"{name}, 1st"], exp[f"{name}, 2nd"] = err, "0"
    for name in ("fsync, fd opened after the error was seen",
                 "syncfs, dir fd opened after the error was seen"):
        exp[f"{name}, 1st"], exp[f"{name}, 2nd"] = "0", "0"
    exp.update({"page cache still holds the lost data": "True",
                "ext4 still read-write": "True",
                "close(2) of every fd": "0",
                "after disarm: rewrite the victim, fsync": "0",
                "after disarm: new file, fsync": "0"})
    return exp


def filefrag_ranges(path: str) -> list[tuple[int, int]]:
    """(physical start, length) in bytes, parsed from `filefrag -v`."""
    out = wblib.run(["filefrag", "-v", path]).stdout
    bs = int(re.search(r"blocks of (\d+) bytes", out).group(1))
    return [(int(m.group(1)) * bs, int(m.group(3)) * bs)
            for m in re.finditer(r"^\s*\d+:\s+\d+\.\.\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+):",
                                 out, re.M)]


def scenario_enospc(checks: wblib.Checks, tables: dict) -> None:
    with wblib.Cleanup() as cleanup:
        tmp = cleanup.tmpdir()
        upper = wblib.enospc_upper(cleanup, tmp)
        checks.true("enospc: mkfs left the journal and inode tables in the tmpfs",
                    upper.tmpfs_free() < 48 * MiB, f"tmpfs free {upper.tmpfs_free() >> 20}M")
        tables["ENOSPC way"] = obs = observe(upper, arm=upper.fill, disarm=upper.free)
        for name, want in expected_table("ENOSPC").items():
            checks.expect(f"enospc: {name}", obs.get(name), want)
    leftovers(checks, "enospc", tmp)


def scenario_eio(checks: wblib.Checks, tables: dict, faultyfs: str) -> None:
    with wblib.Cleanup() as cleanup:
        tmp = cleanup.tmpdir()
        upper = wblib.eio_upper(cleanup, tmp, faultyfs=faultyfs)
        piece = upper.loop.max_request()
        checks.true("eio: loop requests fit in one FUSE write",
                    piece <= upper.faulty.status()["max_write"], f"{piece} bytes")
        victim = upper.path("victim")

        def count_failures(obs: dict) -> None:
            obs["faultyfs failed a write during writeback"] = str(upper.failed_writes() > 0)

        def arm() -> None:
            checks.expect("eio: FIEMAP ranges equal filefrag -v", upper.extents(victim),
                          filefrag_ranges(victim))
            upper.arm(victim)

        tables["EIO way"] = obs = observe(upper, arm=arm, disarm=upper.disarm,
                                          after_writeback=count_failures)
        exp = expected_table("EIO") | {"faultyfs failed a write during writeback": "True"}
        for name, want in exp.items():
            checks.expect(f"eio: {name}", obs.get(name), want)

        # Which errno reaches ext4 depends on the block layer's statuses, not on faultyfs.
        for err, want in (("ENOSPC", "ENOSPC"), ("EDQUOT", "EIO"), ("ETIMEDOUT", "ETIMEDOUT")):
            v = upper.preallocate(f"victim-{err}", 64 << 10)
            upper.arm(v, err)
            fd = os.open(v, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(fd, DATA[:64 << 10], 0)
                checks.expect(f"eio: faultyfs fails with {err}: fsync reports", wblib.errno_of(
                    os.fsync, fd), want)
            finally:
                os.close(fd)
            upper.disarm()

        # One armed block in the middle of a 4M write still fails it (no short write
        # slips through as a success; see wblib's rules).
        for at in (1200000, 2600000):
            v = upper.preallocate(f"victim-mid-{at}", 4 * MiB)
            upper.arm(v, "EIO", offset=at // 4096 * 4096, length=4096)
            fd = os.open(v, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(fd, DATA * 4, 0)
                checks.expect(f"eio: one armed block at {at} of a 4M write: fsync reports",
                              wblib.errno_of(os.fsync, fd), "EIO")
            finally:
                os.close(fd)
            upper.disarm()
        # Why the rig caps loop requests: with the loop's own maximum (1280K here) a
        # request is two FUSE writes; when only the second fails the loop driver takes
        # the short write for a success and the error is lost. Kernel behaviour, shown
        # here, not asserted.
        with open(f"/sys/block/{upper.loop.name}/queue/max_hw_sectors_kb") as f:
            hw = int(f.read()) * 1024
        if hw > upper.faulty.status()["max_write"]:
            upper.loop.set_max_request(hw)
            v = upper.preallocate("victim-uncapped", 4 * MiB)
            upper.arm(v, "EIO", offset=1200000 // 4096 * 4096, length=4096)
            fd = os.open(v, os.O_RDWR | os.O_CLOEXEC)
            try:
                os.pwrite(fd, DATA * 4, 0)
                wblib.writeback(fd)
                hits = upper.faulty.status()["rules"][0][4]
                tables["EIO way"][f"uncapped {hw >> 10}K loop requests, 2nd FUSE chunk "
                                  f"fails ({hits} failed): fsync"] = wblib.errno_of(os.fsync, fd)
            finally:
                os.close(fd)
            upper.disarm()
            upper.loop.set_max_request(piece)
        checks.expect("eio: ext4 still read-write at the end", upper.read_only(), False)
    leftovers(checks, "eio", tmp)


def leftovers(checks: wblib.Checks, name: str, tmp: str) -> None:
    checks.expect(f"{name}: no mount left", [m["mountpoint"] for m in wblib.mounts_under(tmp)], [])
    checks.expect(f"{name}: no loop device left", wblib.loops_backed_under(tmp), [])
    checks.expect(f"{name}: temporary directory removed", os.path.exists(tmp), False)


def build_both(cleanup: wblib.Cleanup, tmp: str, faultyfs: str):
    a, b = os.path.join(tmp, "enospc"), os.path.join(tmp, "eio")
    os.mkdir(a)
    os.mkdir(b)
    return wblib.enospc_upper(cleanup, a), wblib.eio_upper(cleanup, b, faultyfs=faultyfs)


def scenario_cleanup_on_exception(checks: wblib.Checks, faultyfs: str) -> None:
    daemon = None
    tmp = ""
    try:
        with wblib.Cleanup() as cleanup:
            tmp = cleanup.tmpdir()
            _, eio = build_both(cleanup, tmp, faultyfs)
            daemon = eio.faulty.proc
            checks.expect("cleanup/exception: two loop devices while running",
                          len(wblib.loops_backed_under(tmp)), 2)
            raise RuntimeError("on purpose")
    except RuntimeError as e:
        checks.expect("cleanup/exception: the exception came through", str(e), "on purpose")
    checks.true("cleanup/exception: faultyfs exited", daemon is not None and
                daemon.poll() is not None)
    leftovers(checks, "cleanup/exception", tmp)


class _ExitRaises:
    """Wraps a context manager; its __exit__ raises Terminated before it lets the
    wrapped one close: where a signal can land in any `with` (at the call)."""

    def __init__(self, inner):
        self.inner = inner

    def __enter__(self):
        return self.inner.__enter__()

    def __exit__(self, *exc):
        raise wblib.Terminated(signal.SIGTERM)


def scenario_cleanup_signal_in_exit(checks: wblib.Checks) -> None:
    """A signal that raises in a `with`'s __exit__ leaves the fd it was about to close
    to the exception's traceback: the cleanup must still unmount the filesystem."""
    name = "cleanup/signal in __exit__"
    tmp = ""
    errors: list[str] = []
    try:
        with wblib.Cleanup() as cleanup:
            tmp = cleanup.tmpdir()
            mnt = os.path.join(tmp, "mnt")
            os.mkdir(mnt)
            wblib.mount(cleanup, "tmpfs", mnt, "tmpfs", "size=1M")
            errors = cleanup.errors
            with _ExitRaises(wblib.fd_open(os.path.join(mnt, "f"), os.O_RDWR | os.O_CREAT,
                                           0o600)):
                pass
    except wblib.Terminated:
        pass
    checks.expect(f"{name}: cleanup errors", errors, [])
    leftovers(checks, name, tmp)


def start_child(faultyfs: str, tmp: str, cleanup: wblib.Cleanup) -> subprocess.Popen:
    """A child (`--hold`) that builds both rigs under tmp in a mount namespace of its
    own, says READY, then keeps making writeback errors until signalled."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--faultyfs", faultyfs, "--hold", tmp],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=wblib.child_env(),
        preexec_fn=wblib.die_with_parent())

    def stop() -> None:
        if child.poll() is None:
            child.kill()
        child.communicate()
    cleanup.push(f"stop child {child.pid}", stop)
    return child


def wait_child(child: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        out, _ = child.communicate()
    return child.returncode, out


def wait_nothing_left(tmp: str, timeout: float = 20) -> tuple[list, list]:
    """After SIGKILL the kernel does the cleaning: faultyfs gets SIGTERM (PDEATHSIG),
    the namespace ends with its last process and takes the mounts, autoclear detaches
    the loop devices. Waits for that; returns what is left (loops, processes)."""
    deadline = time.monotonic() + timeout
    while True:
        left = wblib.loops_backed_under(tmp), _processes_mentioning(tmp)
        if left == ([], []) or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _processes_mentioning(tmp: str) -> list[str]:
    """Live processes (faultyfs daemons, children) whose command line names tmp."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(") ", 1)[1].startswith("Z")
        except (OSError, IndexError):
            continue
        if tmp in cmd and not zombie:
            found.append(f"{pid}: {cmd.strip()}")
    return found


def scenario_cleanup_on_signal(checks: wblib.Checks, faultyfs: str, sig: int) -> None:
    """A child that holds both rigs (with errors being made) gets sig."""
    name = f"cleanup/{signal.Signals(sig).name}"
    with wblib.Cleanup() as cleanup:
        tmp = cleanup.tmpdir()
        child = start_child(faultyfs, tmp, cleanup)
        line = child.stdout.readline()
        if not checks.true(f"{name}: child set up both rigs", line.startswith("READY "), line.strip()):
            return
        ready = json.loads(line[len("READY "):])
        checks.expect(f"{name}: its loop devices are visible while it runs",
                      sorted(d for d, _ in wblib.loops_backed_under(tmp)), sorted(ready["loops"]))
        time.sleep(0.2)  # let it make a few errors
        child.send_signal(sig)
        rc, out = wait_child(child)
        if sig == signal.SIGTERM:
            checks.expect(f"{name}: child exit status", rc, 128 + sig)
            checks.true(f"{name}: child ran its cleanup", "CLEANED" in out, out[-2000:])
        else:
            checks.expect(f"{name}: child exit status", rc, -sig)
        loops, procs = wait_nothing_left(tmp)
        checks.expect(f"{name}: no loop device left", loops, [])
        checks.expect(f"{name}: faultyfs gone", procs, [])
    checks.expect(f"{name}: no mount left", wblib.mounts_under(tmp), [])


def scenario_signal_anywhere(checks: wblib.Checks, faultyfs: str) -> None:
    """Signals at arbitrary moments of setup and use (not only when READY)."""
    for sig, delay in ((signal.SIGTERM, 0.05), (signal.SIGTERM, 0.15), (signal.SIGTERM, 0.3),
                       (signal.SIGINT, 0.25), (signal.SIGKILL, 0.1), (signal.SIGKILL, 0.25),
                       (signal.SIGKILL, 0.45)):
        name = f"cleanup/{signal.Signals(sig).name} after {delay}s"
        with wblib.Cleanup() as cleanup:
            tmp = cleanup.tmpdir()
            child = start_child(faultyfs, tmp, cleanup)
            time.sleep(delay)
            child.send_signal(sig)
            rc, out = wait_child(child)
            loops, procs = wait_nothing_left(tmp)
            checks.expect(f"{name}: no loop device left", loops, [])
            checks.expect(f"{name}: no process left", procs, [])
            # SIGINT during the interpreter's start-up ends it with status 1.
            by_signal = rc in (-sig, 128 + sig) or (
                sig == signal.SIGINT and rc == 1 and out.rstrip().endswith("KeyboardInterrupt"))
            checks.true(f"{name}: child ended by the signal", by_signal,
                        f"exit {rc}; " + out[-300:].replace("\n", " | "))
        checks.expect(f"{name}: no mount left", wblib.mounts_under(tmp), [])


def hold(faultyfs: str, tmp: str) -> int:
    """Child mode: build both rigs, say READY, keep making writeback errors."""
    wblib.enter_private_namespace()
    try:
        with wblib.Cleanup() as cleanup:
            enospc, eio = build_both(cleanup, tmp, faultyfs)
            print("READY " + json.dumps({
                "loops": [d for d, _ in wblib.loops_backed_under(tmp)],
                "faultyfs_pid": eio.faulty.proc.pid}), flush=True)
            for i in range(10**6):
                enospc.preallocate(f"v{i}", 64 << 10)
                v = eio.preallocate(f"v{i}", 64 << 10)
                eio.arm(v)
                with wblib.fd_open(v, os.O_RDWR) as fd:
                    os.pwrite(fd, DATA[:64 << 10], 0)
                    wblib.writeback(fd)
                eio.disarm()
    except (wblib.Terminated, KeyboardInterrupt) as t:
        print("CLEANED", flush=True)
        return 128 + getattr(t, "signum", signal.SIGINT)
    return 1


def print_table(tables: dict) -> None:
    ways = list(tables)
    rows = list(dict.fromkeys(k for t in tables.values() for k in t))
    width = max(map(len, rows), default=10)
    print("\nObserved on plain ext4 (Linux %s):" % os.uname().release)
    print(f"{'':{width}}  " + "  ".join(f"{w:12}" for w in ways))
    for r in rows:
        print(f"{r:{width}}  " + "  ".join(f"{tables[w].get(r, '-'):12}" for w in ways))
    print(flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--faultyfs", required=True)
    ap.add_argument("--hold", metavar="TMP", help=argparse.SUPPRESS)
    args = ap.parse_args()
    wblib.need_root_or_skip()
    if args.hold:
        return hold(args.faultyfs, args.hold)
    wblib.enter_private_namespace()
    start = time.monotonic()
    checks = wblib.Checks()
    tables: dict = {}
    try:
        with checks.scenario("ENOSPC way"):
            scenario_enospc(checks, tables)
        with checks.scenario("EIO way"):
            scenario_eio(checks, tables, args.faultyfs)
        with checks.scenario("cleanup after an exception"):
            scenario_cleanup_on_exception(checks, args.faultyfs)
            scenario_cleanup_signal_in_exit(checks)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with checks.scenario(f"cleanup after {signal.Signals(sig).name}"):
                scenario_cleanup_on_signal(checks, args.faultyfs, sig)
        with checks.scenario("cleanup after a signal at any moment"):
            scenario_signal_anywhere(checks, args.faultyfs)
    except wblib.Terminated as t:
        checks.true("run to the end", False, str(t))
    print_table(tables)
    print(f"run time {time.monotonic() - start:.1f} s")
    return checks.summary()


if __name__ == "__main__":
    sys.exit(main())
