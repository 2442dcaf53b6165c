"""Runs the harness inside its own private mount namespace and pid namespace.

The outer process starts `unshare --mount --propagation private --pid --fork
--mount-proc --kill-child=SIGTERM python3 run.py ...` and waits for it. The
harness is pid 1 of the new pid namespace, so when it ends for any reason
(even SIGKILL) the kernel kills every process left in it, FUSE daemons
included, and with the last process the mount namespace and every mount in
it go away. Signals: unshare does not pass SIGTERM on, so the outer process
forwards SIGTERM and SIGINT to the harness, which then unmounts in its
finally blocks; if the outer process dies, unshare gets SIGKILL
(PR_SET_PDEATHSIG) and --kill-child sends the harness SIGTERM.
"""
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import sys

MARK = "OVLFS_DIFF_IN_NS"
SKIP = 77  # ctest SKIP_RETURN_CODE
PR_SET_PDEATHSIG = 1


def ensure(argv):
    """Returns when running inside the namespaces; otherwise runs the harness
    there and exits with its status."""
    if os.environ.get(MARK) == "1" and os.getpid() == 1:
        return
    if os.geteuid() != 0:
        print("mount.diff: needs root (mounts overlayfs in a private namespace); skipped")
        sys.exit(SKIP)
    unshare = shutil.which("unshare")
    if not unshare:
        print("mount.diff: unshare(1) not found; skipped")
        sys.exit(SKIP)
    env = dict(os.environ, **{MARK: "1", "PYTHONDONTWRITEBYTECODE": "1"})
    sys.stdout.flush()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

    def die_with_parent():
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    p = subprocess.Popen([unshare, "--mount", "--propagation", "private", "--pid", "--fork",
                          "--mount-proc", "--kill-child=SIGTERM", sys.executable, "-u"] + argv,
                         env=env, preexec_fn=die_with_parent)

    def forward(signum, frame):
        for pid in _children(p.pid):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.exit(p.wait())


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out
