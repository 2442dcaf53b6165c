"""bench/engine: podman on the kernel's overlayfs, on fuse-overlayfs and on ovlfs as
containers-storage's mount_program, every workload interleaved (issue 17, item 6).

Started by bench/engine/run (see README.md). Re-executes itself in a private mount
namespace (tests/mount/wblib.py), where the engines get the host isolation of the engine
tests (tests/engine/enginelib.py): system directories read-only, /run and /var/tmp
directories of the run, no cgroup hierarchy visible; each configuration has a storage
of its own under one temporary directory /tmp/oeb.XXXXXXXX (the runroot's path stays
far below podman 4.3's 50 characters).

Repetition r runs every workload on every configuration, the order of the
configurations rotating with r, so that drift of a shared machine hits all of them
alike. A trial is the wall time of one podman command; between trials (untimed) the
engine settles: every process naming its storage (conmon and its exit command, the
mount program's daemons) has ended, and the build's images are removed.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "engine"))
import enginelib as E  # noqa: E402
from enginelib import wblib  # noqa: E402

import profiling as prof  # noqa: E402
import report  # noqa: E402
import workloads as W  # noqa: E402

CONFIGS = ["kernel", "fuse-overlayfs", "ovlfs"]  # the kernel first: the ratios' base
SETTLE = 20.0  # seconds to wait for an engine's processes to end after a trial


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/engine/run",
        description="podman with the kernel's overlayfs, fuse-overlayfs and ovlfs: run, "
                    "build, unpack, ls -lR and find; medians of interleaved repetitions.")
    p.add_argument("--reps", type=int, default=7, help="repetitions (default 7)")
    p.add_argument("--only", default="", help=f"comma-separated workloads ({','.join(W.KEYS)})")
    p.add_argument("--ovlfs", default=os.path.join(REPO, "build", "ovlfs"),
                   help="the ovlfs program (default build/ovlfs; copied for the run)")
    p.add_argument("--fuse-overlayfs", default="/usr/bin/fuse-overlayfs",
                   help="the fuse-overlayfs program (default /usr/bin/fuse-overlayfs)")
    p.add_argument("--ovlfs-opts", default="",
                   help="mount options added for ovlfs only (storage option "
                        "overlay.mountopt, which containers-storage passes to the mount "
                        "program), e.g. sched=normal or io_uring=off")
    p.add_argument("--profile", choices=("missed", "all", "none"), default="missed",
                   help="after the timed repetitions, one trial per configuration under "
                        "perf (FUSE requests by type, CPU by process, mount and umount "
                        "times) of the workloads where ovlfs missed a target (default), "
                        "of all, or of none")
    p.add_argument("--out", default="",
                   help="results directory (default bench/engine/results for a run of "
                        "every workload, else bench/engine/last)")
    p.add_argument("--fs", choices=("scratch", "host"), default="scratch",
                   help="where the storages live: scratch (default), a fresh journaled "
                        "ext4 on a loop device made for the run; host, the run's "
                        "directory under /tmp itself, as the engine tests do")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--state", help=argparse.SUPPRESS)
    p.add_argument("--rerender", metavar="DIR",
                   help="render the report of a finished run again from DIR/run.json")
    a = p.parse_args(argv)
    a.only = [w for w in a.only.split(",") if w]
    for w in a.only:
        if w not in W.KEYS:
            p.error(f"unknown workload {w}; known: {', '.join(W.KEYS)}")
    if a.reps < 1:
        p.error("--reps must be at least 1")
    if not a.out:
        a.out = os.path.join(HERE, "results" if not a.only else "last")
    return a


# ---------------------------------------------------------------------------------------
# Processes the engines leave to us

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of podman (conmon, the mount program's daemons) become our children, so
    that their CPU time can be read when they end (wait4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _stat_fields(pid: int) -> tuple[str, str, int] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    comm = s[s.index("(") + 1:s.rindex(")")]
    rest = s[s.rindex(")") + 2:].split()
    return comm, rest[0], int(rest[1])  # comm, state, ppid


def _children() -> dict[int, tuple[str, str]]:
    me, out = os.getpid(), {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat_fields(int(name))
            if st and st[2] == me:
                out[int(name)] = (st[0], st[1])
    return out


def reap_adopted(wait: float = 0.0) -> dict[str, float]:
    """Reaps our children (adopted orphans: no subprocess of ours runs now), waiting up
    to `wait` seconds for those still running to end, and returns their CPU time (user
    + system, with the children they waited for) by command name. A daemon that has
    left its mount may still be ending: its command line is gone, and its main thread
    may show as a zombie while other threads still run (wait4 does not return it
    until they end)."""
    cpu: dict[str, float] = {}
    deadline = time.monotonic() + wait
    while True:
        for pid, (comm, _state) in _children().items():
            try:
                got, _, ru = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            if got == pid:
                cpu[comm] = cpu.get(comm, 0.0) + ru.ru_utime + ru.ru_stime
        if not _children():
            return cpu
        if time.monotonic() > deadline:
            if wait:
                cpu["(still running)"] = 0.0
            return cpu
        time.sleep(0.005)


def settle(eng: E.Engine, deadline: float = SETTLE) -> tuple[float, list[str]]:
    """Waits until no process names the engine's storage (conmon and the exit command
    it runs, the mount program's daemons) and reaps them; returns how long that took
    and what it had to kill when they outlived the deadline."""
    t0 = time.monotonic()
    killed = []
    while True:
        left = E.processes_mentioning(eng.top)
        if not left:
            break
        if time.monotonic() - t0 > deadline:
            killed = [f"{pid}: {line[:120]}" for pid, line in left.items()]
            E.kill_all(left)
            time.sleep(0.2)
            break
        time.sleep(0.01)
    return time.monotonic() - t0, killed


def classify(cpu: dict[str, float]) -> dict[str, float]:
    out = {"conmon+container": 0.0, "mount program": 0.0, "other": 0.0}
    for comm, t in cpu.items():
        if comm == "conmon":
            out["conmon+container"] += t
        elif comm in ("ovlfs", "fuse-overlayfs") or comm.startswith("ovlfs"):
            out["mount program"] += t
        else:
            out["other"] += t
    return out


# ---------------------------------------------------------------------------------------
# The machine


def psi_cpu_some() -> float:
    """Total microseconds some task waited for a CPU (PSI), or -1."""
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return float(line.split("total=")[1])
    except OSError:
        pass
    return -1.0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def sh(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (p.stdout or p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) * 1024
    return {"cpus": os.cpu_count(), "cpu_model": models[0] if models else "?",
            "mem_gib": round(mem / 2**30, 1), "kernel": platform.release()}


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


# ---------------------------------------------------------------------------------------
# Trials


class Runner:
    def __init__(self, engines: dict[str, E.Engine], ctx: str):
        self.engines, self.ctx = engines, ctx

    def args(self, w: W.Workload) -> list[str]:
        return [a.replace("{ctx}", self.ctx) for a in w.args]

    def after(self, eng: E.Engine, w: W.Workload) -> None:
        """Untimed: undoes what the workload left (the built image and its steps')."""
        if w.key == "build":
            eng.podman("rmi", "-f", W.BUILT, timeout=60, check=False)
            eng.podman("image", "prune", "-f", timeout=60, check=False)

    def trial(self, name: str, w: W.Workload) -> dict:
        eng = self.engines[name]
        cmd = eng.podman_cmd(self.args(w))
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        p0, t0 = psi_cpu_some(), time.perf_counter()
        p = eng.run(cmd, timeout=w.timeout, check=False)
        wall = time.perf_counter() - t0
        p1 = psi_cpu_some()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise wblib.CommandError(cmd, p.returncode, p.stderr or p.stdout)
        settled, killed = settle(eng)
        t1 = time.monotonic()
        cpu = reap_adopted(wait=SETTLE)
        settled += time.monotonic() - t1
        if "(still running)" in cpu:
            killed.append("an adopted process still ran after the trial")
        adopted = classify(cpu)
        self.after(eng, w)
        settle(eng)
        reap_adopted(wait=SETTLE)
        return {
            "wall": wall,
            "podman_cpu": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
            **{k.replace(" ", "_").replace("+", "_"): v for k, v in adopted.items()},
            "psi_some": (p1 - p0) / 1e6 / wall if p0 >= 0 and p1 >= 0 else None,
            "settle": settled, "killed": killed,
        }


def verify(engines: dict[str, E.Engine]) -> list[str]:
    """What the build made and the unpack unpacked, on each engine: the same counts
    everywhere, or a note for the report."""
    script = ("find /new2 /moved /data | wc -l; cat /data/d01/g099 | head -1; "
              "cat /data/d00/f000 | tail -1; ls /moved | wc -l; ls -A /data | wc -l; "
              "mkdir /u && tar xf /src.tar -C /u && find /u | wc -l")
    seen, notes = {}, []
    for name, eng in engines.items():
        p = eng.podman("run", "--rm", W.BUILT, "sh", "-c", script, timeout=120, check=False)
        seen[name] = (p.stdout + p.stderr).strip().replace("\n", " | ")
    base = seen[CONFIGS[0]]
    for name, text in seen.items():
        notes.append(f"{name}: {text}" + ("" if text == base else "  <-- DIFFERS"))
    return notes


def main(argv: list[str]) -> int:
    a = parse_args(argv)
    if a.rerender:
        with open(os.path.join(a.rerender, "run.json")) as f:
            run = json.load(f)
        report.write(run, a.rerender)
        print(open(os.path.join(a.rerender, "results.md")).read())
        return 0
    if os.geteuid() != 0:
        print("bench/engine: needs root", file=sys.stderr)
        return 1
    for prog in ("podman", a.fuse_overlayfs, a.ovlfs):
        if not shutil.which(prog):
            print(f"bench/engine: {prog} not found", file=sys.stderr)
            return 1
    if not E.is_static_elf(W.BUSYBOX):
        print(f"bench/engine: {W.BUSYBOX} is not static (busybox-static: scripts/deps)",
              file=sys.stderr)
        return 1
    wblib.enter_private_namespace()  # re-executes this program under unshare -m
    if a.state:
        with open(os.path.join(a.state, "mntns"), "w") as f:
            f.write(os.readlink("/proc/self/ns/mnt"))
    become_subreaper()
    workloads = [w for w in W.WORKLOADS if not a.only or w.key in a.only]
    started = time.time()
    run: dict = {
        "argv": [x for i, x in enumerate(argv) if x != "--state" and
                 (i == 0 or argv[i - 1] != "--state")],
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "reps": a.reps, "configs": CONFIGS,
        "workloads": [{"key": w.key, "title": w.title} for w in workloads],
        "machine": machine(), "load_start": loadavg(),
        "commit": sh(["git", "-C", REPO, "log", "-1", "--format=%h %cd",
                      "--date=format:%Y-%m-%d %H:%M"]),
        "src_dirty": sh(["git", "-C", REPO, "status", "--short", "--", "src", "include"]),
        "trials": [], "notes": [],
    }
    with wblib.Cleanup() as cl:
        top = tempfile_dir(cl, a.keep)
        if a.state and not a.keep:
            with open(os.path.join(a.state, "top"), "w") as f:
                f.write(top)
        if a.fs == "scratch":
            run["fs"] = scratch_fs(cl, top)
            top = f"{top}/s"
        else:
            run["fs"] = f"the host's {fs_of(top)} ({top})"
        print(f"bench/engine: {top} on {run['fs']}; " + ", ".join(E.isolate_host(cl, top)),
              flush=True)
        # A copy: the build directory may be rebuilt while this runs.
        os.makedirs(f"{top}/bin")
        ovlfs = f"{top}/bin/ovlfs"
        shutil.copy2(os.path.realpath(a.ovlfs), ovlfs)
        with open(ovlfs, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        fo = os.path.realpath(shutil.which(a.fuse_overlayfs))
        run["versions"] = {
            "podman": sh(["podman", "--version"]), "buildah": first_line(sh(["buildah", "--version"])),
            "crun": first_line(sh(["crun", "--version"])), "conmon": first_line(sh(["conmon", "--version"])),
            "ovlfs": f"{first_line(sh([ovlfs, '--version']))} ({a.ovlfs}, sha256 {digest})",
            "fuse-overlayfs": " ".join(sh([fo, "--version"]).replace("\n", " ").split()[:8]),
        }
        print("; ".join(f"{k}: {v}" for k, v in run["versions"].items()), flush=True)
        engines = {"kernel": E.Engine("kernel", f"{top}/k", None),
                   "fuse-overlayfs": E.Engine("fuse-overlayfs", f"{top}/f", fo),
                   "ovlfs": E.Engine("ovlfs", f"{top}/o", ovlfs)}
        if a.ovlfs_opts:
            o = engines["ovlfs"]
            o.storage_opts = [f"{x},{a.ovlfs_opts}" if x.startswith("overlay.mountopt=") else x
                              for x in o.storage_opts]
            run["versions"]["ovlfs"] += f", mounted with {a.ovlfs_opts}"
        for eng in engines.values():
            cl.push(f"tear down {eng.name}", lambda eng=eng: [
                print(f"cleanup: {n}") for n in eng.teardown()] and None)
        cl.push("reap", reap_adopted)
        archive, ctx = f"{top}/image.tar", f"{top}/ctx"
        t = time.monotonic()
        E.make_docker_archive(archive, W.IMAGE, W.image_layers())
        W.write_context(ctx)
        print(f"image: {os.path.getsize(archive) / 1e6:.1f} MB "
              f"({time.monotonic() - t:.1f} s)", flush=True)
        runner = Runner(engines, ctx)
        for name, eng in engines.items():
            t = time.monotonic()
            eng.podman("load", "-q", "-i", archive, timeout=120)
            settle(eng)
            reap_adopted()
            print(f"loaded on {name} ({time.monotonic() - t:.1f} s)", flush=True)
        # Warm-up: one untimed trial of every workload on every configuration (caches of
        # the image's files, podman's own start-up), and a check that the build and
        # the unpack did the same on all three.
        t = time.monotonic()
        for w in workloads:
            for name in CONFIGS:
                if w.key == "build":
                    eng = engines[name]
                    eng.podman(*runner.args(w), timeout=w.timeout)
                    settle(eng)
                else:
                    runner.trial(name, w)
        if any(w.key == "build" for w in workloads):
            run["verify"] = verify(engines)
            for name in CONFIGS:
                runner.after(engines[name], W.BY_KEY["build"])
                settle(engines[name])
            reap_adopted()
            print("check of the built image:\n  " + "\n  ".join(run["verify"]), flush=True)
        print(f"warm-up: {time.monotonic() - t:.0f} s", flush=True)
        for r in range(a.reps):
            order = CONFIGS[r % 3:] + CONFIGS[:r % 3]
            t = time.monotonic()
            for w in workloads:
                for name in order:
                    res = runner.trial(name, w)
                    res.update(rep=r, workload=w.key, config=name)
                    run["trials"].append(res)
                    if res["killed"]:
                        run["notes"].append(f"rep {r} {w.key} {name}: killed after the "
                                            f"trial: {res['killed']}")
            walls = {(x["workload"], x["config"]): x["wall"] for x in run["trials"]
                     if x["rep"] == r}
            print(f"rep {r + 1}/{a.reps} ({time.monotonic() - t:.0f} s, load "
                  f"{loadavg()}): " + "; ".join(
                      f"{w.key} " + "/".join(f"{walls[w.key, c]:.2f}" for c in CONFIGS)
                      for w in workloads), flush=True)
        run["load_end"] = loadavg()
        run["timed_s"] = time.time() - started
        summary = report.summarize(run)
        to_profile = [w for w in workloads if a.profile == "all" or (
            a.profile == "missed" and not summary[w.key]["met"])]
        if to_profile and not shutil.which("perf"):
            run["notes"].append("no perf: the profile was skipped")
            to_profile = []
        if to_profile:
            print(f"profiling: {', '.join(w.key for w in to_profile)}", flush=True)
            run["profile"] = prof.profile_all(runner, engines, to_profile, CONFIGS,
                                              f"{top}/perf", settle,
                                              lambda: reap_adopted(wait=SETTLE))
        run["duration_s"] = time.time() - started
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "run.json"), "w") as f:
        json.dump(run, f, indent=1)
    report.write(run, a.out)
    with open(os.path.join(a.out, "results.md")) as f:
        print(f.read())
    print(f"bench/engine: results in {os.path.relpath(a.out, REPO)}/ "
          f"({run['duration_s'] / 60:.1f} min)")
    return 0


SCRATCH_BYTES = 8 << 30  # sparse


def fs_of(path: str) -> str:
    best = None
    for m in wblib.mountinfo():
        mp = m["mountpoint"]
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (
                best is None or len(mp) > len(best["mountpoint"])):
            best = m
    if not best:
        return "?"
    journal = ""
    if best["fstype"] == "ext4":
        dev = os.path.basename(os.path.realpath(best["source"]))
        journal = (" with a journal" if any(j.startswith(dev + "-")
                                            for j in os.listdir("/proc/fs/jbd2"))
                   else " without a journal")
    return f"{best['fstype']}{journal} on {best['source']}"


def scratch_fs(cl: wblib.Cleanup, top: str) -> str:
    """A fresh journaled ext4 on a loop device (direct I/O to a sparse image in top),
    mounted at top/s, for the storages and every temporary file of the engines.

    Not the host's /tmp: there (ext4 without a journal on this kind of VM) every new
    inode is searched for past each inode freed in the last minutes (ext4's
    recently_deleted(), checked only without a journal), so a trial's creates would
    cost what the trials before it (and other work on the machine) deleted, and a
    configuration's time would depend on which block group its storage landed in."""
    img = f"{top}/scratch.img"
    with open(img, "w") as f:
        f.truncate(SCRATCH_BYTES)
    loop = wblib.attach_loop(cl, img, direct_io=True)
    wblib.run(wblib.MKFS_EXT4 + ["-L", "ovlfs-bench", loop.path], timeout=300)
    os.makedirs(f"{top}/s")
    wblib.mount(cl, loop.path, f"{top}/s", "ext4")
    try:
        with open(f"/sys/block/{loop.name}/loop/dio") as f:
            dio = "direct I/O" if f.read().strip() == "1" else "buffered I/O"
    except OSError:
        dio = "?"
    return (f"a fresh {fs_of(top + '/s')} made for the run ({SCRATCH_BYTES >> 30} GiB "
            f"sparse image under /tmp, {dio}; mkfs.ext4 -b 4096 -m 0, inode tables "
            f"initialized)")


def tempfile_dir(cl: wblib.Cleanup, keep: bool) -> str:
    if keep:
        import tempfile
        top = tempfile.mkdtemp(prefix="oeb.", dir="/tmp")
        print(f"keeping {top}")
        return top
    return cl.tmpdir("oeb.")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
