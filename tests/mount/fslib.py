"""Helpers for ovlfs's mounted filesystem tests (on top of wblib's namespace and
cleanup machinery): mounting ovlfs, and small checks every test uses."""
from __future__ import annotations

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wblib  # noqa: E402
import rootless as rootless_mod  # noqa: E402


def start(extra_args=(), rootless: bool = False) -> tuple:
    """The common start of a mounted test: --ovlfs (and extra arguments, as
    (args, kwargs) pairs for argparse), root or skip, a private mount namespace.
    Returns (args, Checker). `rootless`: the test also takes --rootless (run it as a
    normal user in a user namespace, rootless.py); in that run's user part (the same
    program, as the user) this only parses the arguments."""
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--ovlfs", required=True)
    if rootless:
        ap.add_argument("--rootless", action="store_true",
                        help="run as a normal user (uid 65534) in a user namespace")
    for a, kw in extra_args:
        ap.add_argument(a, **kw)
    args = ap.parse_args()
    if rootless_mod.in_user_part():
        return args, Checker()
    wblib.need_root_or_skip()
    wblib.enter_private_namespace()
    return args, Checker()


def rerun_as_user(cleanup: wblib.Cleanup, script: str, home: str | None = None,
                  **kw) -> int:
    """Runs the test program again, with the same arguments, as the user in a user
    namespace (rootless.rerun); returns its exit status."""
    home = home or rootless_mod.setup(cleanup)
    return rootless_mod.rerun(cleanup, home, script, sys.argv[1:], **kw)


def mount_ovlfs(cleanup: wblib.Cleanup, binary: str, mnt: str, lowers: list[str],
                upper: str | None = None, work: str | None = None, extra: str = "",
                ) -> None:
    """Mounts ovlfs at mnt (unmounted at cleanup); raises with ovlfs's message on failure."""
    opts = "lowerdir=" + ":".join(lowers)
    if upper:
        opts += f",upperdir={upper},workdir={work}"
    if extra:
        opts += "," + extra
    wblib.run([binary, "-o", opts, mnt])
    cleanup.push(f"umount {mnt}", lambda: wblib.umount(mnt))


def foreground_daemon(cleanup: wblib.Cleanup, binary: str, mnt: str, lower: str,
                      upper: str, work: str) -> subprocess.Popen:
    """Starts `ovlfs -f` (so that a test can SIGKILL it; killed at cleanup) and waits
    for its mount; raises with its message when it does not mount."""
    import time
    daemon = subprocess.Popen([binary, "-f", "-o",
                               f"lowerdir={lower},upperdir={upper},workdir={work}", mnt],
                              stderr=subprocess.PIPE)
    cleanup.push("kill daemon", lambda: daemon.kill())
    deadline = time.monotonic() + 10
    while not wblib.is_mountpoint(mnt):
        if time.monotonic() > deadline or daemon.poll() is not None:
            raise RuntimeError(f"ovlfs did not mount: {daemon.stderr.read()}")
        time.sleep(0.01)
    return daemon


def overlay_dirs(top: str) -> tuple[str, str, str, str]:
    """Makes top/l, top/u, top/w and top/m (a lower, the upper, the workdir and the
    mountpoint) and returns their paths in that order."""
    paths = (f"{top}/l", f"{top}/u", f"{top}/w", f"{top}/m")
    for p in paths:
        os.mkdir(p)
    return paths


def try_mount(binary: str, args: list[str]) -> subprocess.CompletedProcess:
    """Runs the ovlfs program with args, not raising on failure."""
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)


def write(path: str, data: bytes | str) -> None:
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Checker(wblib.Checks):
    """wblib.Checks with the condition first: expect(cond, what)."""

    def expect(self, cond: bool, what: str) -> bool:  # type: ignore[override]
        return self.true(what, cond)

    def finish(self) -> int:
        return self.summary()


def same_as_kernel(c: Checker, cl: wblib.Cleanup, binary: str, top: str,
                   modes: list[tuple[str, str]], prepare, scenario,
                   kernel_opts: str = "") -> None:
    """Runs scenario(mountpoint, upper) -> [lines] on the kernel's overlayfs (with
    `kernel_opts` added to its options) and on ovlfs with each of `modes` ((label,
    extra options)), each on its own copy of the lower that prepare(lower) makes
    (under top, so on top's filesystem); expects every line ovlfs gives to be the
    kernel's."""
    results = {}
    for label, extra in [("kernel", None)] + modes:
        run = f"{top}/{label}"
        for d in ("l", "u", "w", "m"):
            os.makedirs(f"{run}/{d}")
        prepare(f"{run}/l")
        mnt = f"{run}/m"
        if extra is None:
            wblib.mount(cl, "overlay", mnt, "overlay",
                        f"lowerdir={run}/l,upperdir={run}/u,workdir={run}/w"
                        + (f",{kernel_opts}" if kernel_opts else ""))
        else:
            mount_ovlfs(cl, binary, mnt, [f"{run}/l"], f"{run}/u", f"{run}/w", extra)
        try:
            results[label] = scenario(mnt, f"{run}/u")
        finally:
            wblib.umount(mnt)
    want = results.pop("kernel")
    for label, got in results.items():
        for w, g in zip(want, got, strict=True):
            c.expect(w == g, f"[{label}] {g}" + ("" if w == g else f"   (kernel: {w})"))
