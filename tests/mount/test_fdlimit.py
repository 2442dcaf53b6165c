#!/usr/bin/env python3
"""Any tree, any burst, under a small fd limit: the daemon runs with a hard limit of
1,024 open files (as many services get), and nodes keep fds only while in use
(overlay/fds.cc), so neither the size of a tree nor the pace of a writer decides
whether an operation works.

  walk    a lower tree of 100,000 directories with a file in each is walked through
          the mount (find, du -s, tar c), volatile and not: no error, and the same
          output as the kernel's overlayfs of the same lower.
  unpack  200,000 files are unpacked (tar x) into the mount, volatile and not, while
          two CPU-bound processes run; in the non-volatile round 16 processes also
          hold 25 files each open (20 for reading, 5 for writing) throughout: no
          error, the tree equals the archive (tar d), and the daemon's fd count,
          sampled every 20 ms, stays within OWN plus the open files and the
          writeback checks of those open for writing (README, Performance: nodes
          get a sixteenth of the limit, the checks of closed files a quarter at
          most, and libfuse, io_uring and the layers take a few dozen).

Every command runs under a timeout: a hang fails the test, it never stalls CI."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
from fslib import start  # noqa: E402

LIMIT = 1024
DIRS = 100_000
FILES = 200_000
HOLDERS, HELD_READ, HELD_WRITE = 16, 20, 5
TIMEOUT = 600
OWN = 5 * LIMIT // 16 + 64  # what the daemon may hold of its own (see above)


def make_walk_tree(lower: str) -> None:
    for i in range(DIRS):
        d = f"{lower}/t{i // 1000:03d}/d{i:06d}"
        os.makedirs(d)
        with open(f"{d}/f", "w") as f:
            f.write(str(i))


def make_archive(top: str) -> str:
    src = f"{top}/src"
    for i in range(FILES):
        d = f"{src}/p{i // 1000:03d}"
        if i % 1000 == 0:
            os.makedirs(d)
        with open(f"{d}/f{i:06d}", "w") as f:
            f.write(f"file {i}\n")
    archive = f"{top}/unpack.tar"
    wblib.run(["tar", "cf", archive, "-C", src, "."], timeout=TIMEOUT)
    wblib.run(["rm", "-rf", src], timeout=TIMEOUT)
    return archive


def daemon_pid(mnt: str) -> int:
    out = subprocess.run(["pgrep", "-n", "-f", f"ovlfs .*{mnt}$"], capture_output=True,
                         text=True).stdout.split()
    if not out:
        raise RuntimeError(f"no ovlfs daemon found for {mnt}")
    return int(out[0])


class FdSampler:
    """The daemon's open fds, every 20 ms, until stopped: the largest count seen."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.samples = pid, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = len(os.listdir(f"/proc/{self.pid}/fd"))
            except OSError:
                return
            self.peak, self.samples = max(self.peak, n), self.samples + 1
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def mount_limited(cl: wblib.Cleanup, binary: str, mnt: str, lower: str, upper: str,
                  work: str, extra: str) -> int:
    """ovlfs with a hard fd limit of LIMIT; returns the daemon's pid."""
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (f",{extra}" if extra else "")
    wblib.run(["prlimit", f"--nofile={LIMIT}:{LIMIT}", binary, "-o", opts, mnt])
    cl.push(f"umount {mnt}", lambda: wblib.umount(mnt))
    pid = daemon_pid(mnt)
    with open(f"/proc/{pid}/limits") as f:
        line = next(l for l in f if l.startswith("Max open files"))
    if int(line.split()[4]) != LIMIT:
        raise RuntimeError(f"the daemon's fd limit is not {LIMIT}: {line.strip()}")
    return pid


def walk_outputs(mnt: str) -> dict[str, str]:
    """What find, du -s and tar c print for the tree (digests of the long ones)."""
    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=mnt, capture_output=True, timeout=TIMEOUT)

    out = {}
    r = run(["find", "."])
    lines = sorted(r.stdout.decode().splitlines())
    out["find"] = (f"exit {r.returncode} {r.stderr.decode().strip()[:200]}, {len(lines)} "
                   f"lines, sha1 {hashlib.sha1(chr(10).join(lines).encode()).hexdigest()}")
    r = run(["du", "-s", "--apparent-size", "."])
    out["du -s"] = f"exit {r.returncode} {r.stderr.decode().strip()[:200]}, " + \
        r.stdout.decode().strip()
    # The tree below the root (the root is the upper's own directory).
    r = run(["tar", "c", "--sort=name", "--numeric-owner", *sorted(os.listdir(mnt))])
    out["tar c"] = (f"exit {r.returncode} {r.stderr.decode().strip()[:200]}, "
                    f"{len(r.stdout)} bytes, sha1 {hashlib.sha1(r.stdout).hexdigest()}")
    return out


def holder(paths_r: list[str], paths_w: list[str], ready, go_r: int) -> None:
    fds = [os.open(p, os.O_RDONLY) for p in paths_r]
    fds += [os.open(p, os.O_WRONLY | os.O_APPEND) for p in paths_w]
    for fd in fds[len(paths_r):]:
        os.write(fd, b"+")
    os.write(ready, b"r")
    os.read(go_r, 1)  # held until the parent closes its end


def main() -> int:
    args, c = start()
    binary = os.path.abspath(args.ovlfs)
    with wblib.Cleanup() as cl:
        top = os.path.realpath(cl.tmpdir("ovlfs-fdlimit."))
        wblib.mount(cl, "tmpfs", top, "tmpfs", "size=6g,mode=0755")
        lower = f"{top}/l"
        t0 = time.monotonic()
        make_walk_tree(lower)
        archive = make_archive(top)
        print(f"made {DIRS} lower dirs and an archive of {FILES} files in "
              f"{time.monotonic() - t0:.1f} s", flush=True)

        # The kernel's overlayfs of the same lower: the reference for the walk.
        for d in ("ku", "kw", "km"):
            os.mkdir(f"{top}/{d}")
        wblib.mount(cl, "overlay", f"{top}/km", "overlay",
                    f"lowerdir={lower},upperdir={top}/ku,workdir={top}/kw")
        want = walk_outputs(f"{top}/km")
        wblib.umount(f"{top}/km")

        for mode in ("", "volatile"):
            label = mode or "default"
            run = f"{top}/{label}"
            for d in ("u", "w", "m"):
                os.makedirs(f"{run}/{d}")
            mnt = f"{run}/m"
            pid = mount_limited(cl, binary, mnt, lower, f"{run}/u", f"{run}/w", mode)

            # walk
            t0 = time.monotonic()
            sampler = FdSampler(pid)
            got = walk_outputs(mnt)
            peak = sampler.stop()
            for k in want:
                c.expect(got[k] == want[k], f"[{label}] walk of {DIRS} dirs: {k} as the "
                         f"kernel's overlayfs: {got[k]}" + ("" if got[k] == want[k] else
                                                            f" (kernel: {want[k]})"))
            c.expect(peak <= OWN, f"[{label}] walk: the daemon's fds peaked at {peak} "
                     f"(at most {OWN}), {time.monotonic() - t0:.1f} s")

            # unpack, with two CPU hogs (and the open files, in the default round)
            holders, go_w = [], None
            held = 0
            if not mode:
                ready_r, ready_w = os.pipe()
                go_r, go_w = os.pipe()
                for h in range(HOLDERS):
                    base = h * (HELD_READ + HELD_WRITE)
                    paths = [f"{mnt}/t{(base + k) // 1000:03d}/d{base + k:06d}/f"
                             for k in range(HELD_READ + HELD_WRITE)]
                    pid_h = os.fork()
                    if pid_h == 0:
                        code = 1
                        try:
                            os.close(ready_r)
                            os.close(go_w)
                            holder(paths[:HELD_READ], paths[HELD_READ:], ready_w, go_r)
                            code = 0
                        finally:
                            os._exit(code)
                    holders.append(pid_h)
                    cl.push(f"holder {pid_h}", lambda p=pid_h: _kill(p))
                os.close(ready_w)
                os.close(go_r)
                got_ready = b""
                deadline = time.monotonic() + 60
                while len(got_ready) < HOLDERS and time.monotonic() < deadline:
                    b = os.read(ready_r, HOLDERS)
                    if not b:
                        break
                    got_ready += b
                os.close(ready_r)
                c.expect(len(got_ready) == HOLDERS, f"[{label}] {HOLDERS} processes hold "
                         f"{HELD_READ} files open for reading and {HELD_WRITE} for writing each")
                held = HOLDERS * (HELD_READ + HELD_WRITE)
            hogs = [subprocess.Popen([sys.executable, "-c",
                                      "import time\nt=time.monotonic()+%f\n"
                                      "while time.monotonic()<t: pass" % TIMEOUT])
                    for _ in range(2)]
            for hp in hogs:
                cl.push(f"hog {hp.pid}", hp.kill)
            t0 = time.monotonic()
            sampler = FdSampler(pid)
            os.mkdir(f"{mnt}/unpack")
            x = subprocess.run(["tar", "xf", archive, "-C", f"{mnt}/unpack"],
                               capture_output=True, text=True, timeout=TIMEOUT)
            took = time.monotonic() - t0
            peak = sampler.stop()
            for hp in hogs:
                hp.kill()
                hp.wait()
            c.expect(x.returncode == 0 and not x.stderr,
                     f"[{label}] tar x of {FILES} files beside 2 CPU hogs"
                     + (f" and {held} open files" if held else "")
                     + f": exit {x.returncode} {x.stderr.strip()[:300]}, {took:.1f} s")
            bound = OWN + held + (HOLDERS * HELD_WRITE if held else 0)
            c.expect(peak <= bound, f"[{label}] unpack: the daemon's fds peaked at {peak} "
                     f"(at most {bound}: its own {OWN}, the open files and their "
                     f"writeback checks), {sampler.samples} samples")
            d = subprocess.run(["tar", "df", archive, "-C", f"{mnt}/unpack"],
                               capture_output=True, text=True, timeout=TIMEOUT)
            c.expect(d.returncode == 0, f"[{label}] the unpacked tree equals the archive "
                     f"(tar d): exit {d.returncode} {d.stdout.strip()[:300]}")
            if go_w is not None:
                os.close(go_w)
                for p in holders:
                    _, st = os.waitpid(p, 0)
                    c.expect(st == 0, f"[{label}] holder {p} exited with status {st}")
            wblib.umount(mnt)
    return c.finish()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


if __name__ == "__main__":
    sys.exit(main())
