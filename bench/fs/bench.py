"""bench/fs: every workload on every configuration, interleaved, on the same data.

Started by bench/fs/run inside a private mount namespace; see that script for usage.
Repetition r runs every workload on every configuration (the order of configurations
rotates with r) before repetition r+1 starts, so drift on a shared machine hits all
configurations alike. Results: medians over the repetitions, in report.py.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import configs
import report
import workloads

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="bench/fs/run",
        description="Filesystem benchmarks of ovlfs against a plain directory, the "
                    "kernel's overlayfs and fuse-overlayfs (issue 5).")
    p.add_argument("--runs", type=int, default=None,
                   help="repetitions; medians are over these (default 5, --quick 1)")
    p.add_argument("--quick", action="store_true",
                   help="a small smoke run: reduced sizes, 1 repetition")
    p.add_argument("--only", default="",
                   help=f"comma-separated workloads ({','.join(workloads.KEYS)})")
    p.add_argument("--configs", default="",
                   help=f"comma-separated configurations ({','.join(configs.NAMES)})")
    p.add_argument("--rootless", action="store_true",
                   help="also run fuse-overlayfs and ovlfs (and ovlfs volatile) with their "
                        "daemon as a plain user (uid 65534, through fusermount3)")
    p.add_argument("--ovlfs", default="build/ovlfs",
                   help="the ovlfs program (default build/ovlfs, relative to the repo)")
    p.add_argument("--baseline", default="", metavar="PROGRAM",
                   help="also run another ovlfs build (and its volatile mode) in the same "
                        "run, as the columns 'ovlfs baseline': a change's before and after "
                        "side by side")
    p.add_argument("--sync-ioctl", default="",
                   help="request number of ovlfs's syncfs ioctl (default: OVLFS_IOC_SYNCFS "
                        "from include/ovlfs/ioctl.h; without a working ioctl the "
                        "`ovlfs sync` command is timed)")
    doc = p.add_mutually_exclusive_group()
    doc.add_argument("--write-doc", dest="doc", action="store_const", const=True,
                     help="update BENCHMARKS.md and bench/fs/results/ even for a "
                          "partial run")
    doc.add_argument("--no-doc", dest="doc", action="store_const", const=False,
                     help="leave BENCHMARKS.md alone even for a full run")
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--repo", help=argparse.SUPPRESS)
    p.add_argument("--helper", help=argparse.SUPPRESS)
    p.add_argument("--hostns", help=argparse.SUPPRESS)
    p.add_argument("--rerender", metavar="DIR",
                   help="render a finished run again from DIR (e.g. bench/fs/results): "
                        "tables, targets and plot; BENCHMARKS.md with --write-doc")
    a = p.parse_args(argv)
    internal = {"--tmp", "--repo", "--helper", "--hostns"}
    a.user_argv = [x for i, x in enumerate(argv)
                   if x not in internal and (i == 0 or argv[i - 1] not in internal)]
    a.canonical = not (a.quick or a.only or a.configs or a.baseline or a.runs not in (None, 5))
    if a.runs is None:
        a.runs = 1 if a.quick else 5
    if a.runs < 1:
        p.error("--runs must be at least 1")
    a.only = [w for w in a.only.split(",") if w]
    a.configs = [c for c in a.configs.split(",") if c]
    for w in a.only:
        if w not in workloads.KEYS:
            p.error(f"unknown workload {w}; known: {', '.join(workloads.KEYS)}")
    for c in a.configs:
        if c not in configs.NAMES:
            p.error(f"unknown configuration {c}; known: {', '.join(configs.NAMES)}")
    if a.doc is None:
        a.doc = a.canonical and not a.rerender
    return a


class Env:
    """What a workload needs from the harness: paths, the helper, mounts, caches."""

    def __init__(self, args):
        self.args = args
        self.tmp = args.tmp
        self.fsbench = args.helper
        ovlfs = args.ovlfs
        if not os.path.isabs(ovlfs) and not os.path.exists(ovlfs):
            ovlfs = os.path.join(args.repo, ovlfs)
        self.ovlfs = os.path.abspath(ovlfs)
        self.mounter = configs.Mounter(self.tmp, self.ovlfs)
        self.ovlfs_help = ""
        self.sync_na = {}          # ovlfs config name -> why its syncfs cannot be timed
        self.sync_methods = {}     # ovlfs config name -> fsbench sync method

    def helper(self, op, *args):
        """Runs `fsbench op args`; returns its key=value result line as a dict."""
        cmd = [self.fsbench, op] + [str(a) for a in args]
        limit = 120 if self.args.quick else 900
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            raise workloads.TrialError(f"fsbench {op} took more than {limit} s; killed")
        if r.returncode != 0:
            msg = r.stderr.strip().splitlines()
            raise workloads.TrialError(msg[-1] if msg else f"fsbench {op}: exit {r.returncode}")
        lines = r.stdout.strip().splitlines()
        return report.parse_fields(lines[-1] if lines else "")

    def run(self, cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise workloads.TrialError(f"{cmd[0]}: {(r.stderr or r.stdout).strip()}")

    def drop_caches(self):
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    def sync_method(self, cfg):
        """How fsbench performs cfg's syncfs (see sync_once in fsbench.c)."""
        if cfg.kind != "ovlfs":
            return "syncfs"
        return self.sync_methods.get(cfg.name, f"cmd:{cfg.binary or self.ovlfs}")


def rm(path):
    shutil.rmtree(path, ignore_errors=True)


SCRATCH_BYTES = 24 << 30   # sparse: only what the workloads write takes space


class ScratchFs:
    """A fresh journaled ext4 on a loop device, where all data and trials live.

    The host's own filesystem is not used directly: without a journal, ext4 makes
    every create scan past each inode deleted in the last minutes (it avoids reusing
    them), so a trial's creates would cost what earlier trials deleted. A journaled
    ext4 of mkfs's defaults, new for the run, gives every configuration the same
    filesystem. The loop device does direct I/O to its image, so data is cached once.
    """

    def __init__(self, tmp):
        self.img = f"{tmp}/scratch.img"
        self.path = f"{tmp}/fs"
        self.dev = None
        with open(self.img, "w") as f:
            f.truncate(SCRATCH_BYTES)
        sh_checked(["mkfs.ext4", "-q", "-F", "-L", "ovlfs-bench", self.img])
        self.dev = sh_checked(["losetup", "--direct-io=on", "--sector-size", "4096",
                               "--find", "--show", self.img]).strip()
        os.makedirs(self.path)
        sh_checked(["mount", self.dev, self.path])

    def close(self):
        if self.dev:
            subprocess.run(["umount", self.path], capture_output=True)
            subprocess.run(["losetup", "-d", self.dev], capture_output=True)
            self.dev = None
        try:
            os.unlink(self.img)
        except FileNotFoundError:
            pass


def sh_checked(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench.py: {' '.join(cmd)}: {(r.stderr or r.stdout).strip()}")
    return r.stdout


def select_configs(env, args):
    chosen = configs.ALL + (configs.ROOTLESS if args.rootless else [])  # the tables' columns
    if args.baseline:
        for cfg in configs.BASELINE:
            cfg.binary = os.path.abspath(args.baseline)
        chosen += configs.BASELINE
    if args.rootless:
        configs.enable_rootless(env.tmp)
    for cfg in chosen:
        if args.configs and cfg.name not in args.configs:
            cfg.na = "not selected in this run (--configs)"
        elif cfg.kind == "ovlfs" and not os.access(env.ovlfs, os.X_OK):
            cfg.na = f"no ovlfs program at {env.ovlfs} (build it with scripts/build)"
        elif cfg.kind == "fuse-overlayfs" and not shutil.which("fuse-overlayfs"):
            cfg.na = "fuse-overlayfs is not installed"
    if any(c.kind == "ovlfs" and not c.na for c in chosen):
        env.ovlfs_help = configs.ovlfs_help(env.ovlfs)
    for cfg in chosen:
        if cfg.is_overlay and not cfg.na:
            cfg.na = probe(env, cfg)
    return chosen


def probe(env, cfg):
    """Mounts cfg once on tiny layers and writes a file; "" or why it cannot run."""
    base = f"{env.tmp}/probe"
    rm(base)
    for d in ("lower", "upper", "work", "mnt"):
        os.makedirs(f"{base}/{d}")
    with open(f"{base}/lower/file", "w") as f:
        f.write("lower\n")
    if cfg.rootless:
        configs.chown_tree(f"{base}/lower", configs.ROOTLESS_UID)
    mnt = f"{base}/mnt"
    try:
        env.mounter.mount(cfg, [f"{base}/lower"], f"{base}/upper", f"{base}/work", mnt)
    except configs.MountError as e:
        return f"mount failed: {e}"
    try:
        with open(f"{mnt}/file", "a") as f:
            f.write("upper\n")
        with open(f"{mnt}/file") as f:
            if f.read() != "lower\nupper\n":
                return "probe: the mount does not show what was written"
        if cfg.kind == "ovlfs":
            env.sync_na[cfg.name] = probe_sync(env, cfg, mnt)
    except OSError as e:
        return f"probe: {e}"
    finally:
        env.mounter.umount(mnt)
        rm(base)
    return ""


def probe_sync(env, cfg, mnt):
    """Chooses how to time cfg's syncfs: the ioctl (--sync-ioctl, or OVLFS_IOC_SYNCFS
    from include/ovlfs/ioctl.h) when it succeeds on a healthy mount, else `ovlfs sync
    MNT` when that does. Returns "" or why neither works."""
    request = env.args.sync_ioctl
    if not request:
        try:
            request = env.helper("ovlfs-ioctl").get("request", "")
        except workloads.TrialError:
            request = ""
    if request:
        try:
            if env.helper("sync", f"ioctl:{request}", mnt).get("errno") == 0:
                env.sync_methods[cfg.name] = f"ioctl:{request}"
                return ""
        except workloads.TrialError:
            pass
        if env.args.sync_ioctl:
            return f"ioctl {request} fails on a fresh mount"
    env.sync_methods[cfg.name] = f"cmd:{env.ovlfs}"
    if not configs.has_sync_command(env.ovlfs_help):
        return "ovlfs has no syncfs ioctl and no `sync` command yet (not in ovlfs --help)"
    try:
        r = subprocess.run([env.ovlfs, "sync", mnt], capture_output=True, text=True,
                           timeout=60)
    except subprocess.TimeoutExpired:
        return "`ovlfs sync` did not return within 60 s on a fresh mount"
    if r.returncode != 0:
        first = ((r.stderr or r.stdout).strip().splitlines() or ["no message"])[0]
        if len(first) > 60:
            first = first[:57] + "..."
        return f"`ovlfs sync MNT` does not work yet (exit {r.returncode} on a fresh mount: {first})"
    return ""


def prepare(env, wl):
    """Builds a workload's data once: lowers L1 (top) and L2, the plain tree, extras."""
    base = f"{env.tmp}/data/{wl.key}"
    data = {"lowers": [f"{base}/L1", f"{base}/L2"], "plain": f"{base}/plain",
            "extra": f"{base}/extra"}
    for d in data["lowers"] + [data["plain"], data["extra"]]:
        os.makedirs(d, exist_ok=True)
    for layer, path in enumerate(data["lowers"]):
        wl.build_layer(env, path, layer)
    if not wl.writes:
        wl.build_plain(env, data["plain"])
    wl.build_extra(env, data["extra"])
    return data


def trial(env, wl, cfg, data):
    """One timed run of wl on cfg; returns the helper's result dict."""
    if hasattr(wl, "run_trial"):
        os.sync()
        return wl.run_trial(env, cfg, data)
    t = f"{env.tmp}/trial"
    rm(t)
    os.makedirs(t)
    mnt = None
    try:
        if cfg.is_overlay:
            for d in ("upper", "work", "mnt"):
                os.makedirs(f"{t}/{d}")
            mnt = f"{t}/mnt"
            env.mounter.mount(cfg, data["lowers"], f"{t}/upper", f"{t}/work", mnt)
            view = mnt
        elif wl.writes:
            view = f"{t}/plain"
            os.makedirs(view)
            wl.build_plain(env, view)
        else:
            view = data["plain"]
        os.sync()                      # nothing from earlier steps still being written
        wl.before(env, cfg, view, data)
        return wl.measure(env, cfg, view, data)
    finally:
        if mnt:
            env.mounter.umount(mnt)
        rm(t)


def rerender(args):
    args.repo = args.repo or os.path.dirname(os.path.dirname(HERE))
    args.doc = bool(args.doc)
    results = report.Results.load(os.path.abspath(args.rerender), args, workloads.ALL,
                                  configs.ALL + configs.ROOTLESS)
    results.render()
    return 0


def main(argv):
    args = parse_args(argv)
    if args.rerender:
        return rerender(args)
    if os.readlink("/proc/self/ns/mnt") == args.hostns:
        sys.exit("bench.py: not in a private mount namespace; use bench/fs/run")
    with open(f"{args.tmp}/mntns", "w") as f:     # for run's last-resort cleanup
        f.write(os.readlink("/proc/self/ns/mnt") + "\n")

    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    scratch = ScratchFs(args.tmp)
    args.tmp = scratch.path
    env = Env(args)
    started = time.monotonic()
    sizes = workloads.SIZES["quick" if args.quick else "full"]
    wls = [w(sizes) for w in workloads.ALL if not args.only or w.key in args.only]
    results = report.Results(args, wls)
    try:
        cfgs = select_configs(env, args)
        results.machine = report.machine_info(env, args)
        print(report.machine_text(results.machine), flush=True)
        for cfg in cfgs:
            if cfg.na:
                print(f"config {cfg.name}: n/a: {cfg.na}", flush=True)
        results.configs = cfgs
        results.sync_methods = env.sync_methods
        live = [c for c in cfgs if not c.na]

        print("preparing data ...", flush=True)
        t0 = time.monotonic()
        data = {}
        for wl in wls:
            data[wl.key] = prepare(env, wl)
        if args.rootless:
            # A user's daemon copies up only files it may own: the layers are the
            # user's (as a rootless engine's are), for every configuration alike.
            configs.chown_tree(f"{env.tmp}/data", configs.ROOTLESS_UID)
        os.sync()
        print(f"data ready in {time.monotonic() - t0:.0f} s", flush=True)

        for rep in range(args.runs):
            order = live[rep % len(live):] + live[:rep % len(live)] if live else []
            for wl in wls:
                for cfg in order:
                    reason = wl.na(cfg, env)
                    if reason:
                        results.add_na(wl, cfg, reason)
                        continue
                    try:
                        res = trial(env, wl, cfg, data[wl.key])
                        results.add(rep, wl, cfg, res)
                    except (workloads.TrialError, configs.MountError) as e:
                        results.add_fail(rep, wl, cfg, str(e))
        results.elapsed = time.monotonic() - started
        results.finish()
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({e or 'SIGINT'}); cleaning up", file=sys.stderr)
        return 130
    finally:
        env.mounter.cleanup()
        left = configs.mounted_under(env.tmp)
        if left:
            print(f"WARNING: still mounted: {left}", file=sys.stderr)
        scratch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
