"""Runs the harness inside its own private mount namespace and pid namespace.

The outer process starts `unshare --mount --propagation private --pid --fork
--mount-proc --kill-child=SIGTERM python3 run.py ...` and waits for it. The
harness is pid 1 of the new pid namespace, so when it ends for any reason
(even SIGKILL) the kernel kills every process left in it, FUSE daemons
included, and with the last process the mount namespace and every mount in
it go away. (With --rootless, tests/mount/rootless.py makes the namespaces,
user, mount and pid, for a normal user instead; see _rootless().) Signals:
unshare does not pass SIGTERM on, so the outer process
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
    if "--rootless" in argv:
        sys.exit(_rootless(argv))
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


def _rootless(argv):
    """--rootless: the whole harness as a normal user (uid 65534) in a user namespace
    of its own, with a range of subordinate ids as rootless podman has (so that the
    unprivileged caller, uid 65534 inside, and other owners exist there), and new
    mount and pid namespaces, of which the harness is pid 1 (tests/mount/rootless.py).
    Root only makes /dev/fuse usable for it in a private mount namespace of the test."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    import rootless
    import wblib
    wblib.need_root_or_skip(SKIP)
    wblib.enter_private_namespace()
    with wblib.Cleanup() as cl:
        home = rootless.setup(cl, prefix="ovlfs-diff-rootless.")
        env = dict(os.environ, **{MARK: "1", "PYTHONDONTWRITEBYTECODE": "1"})
        args = argv[1:]
        if not any(a == "--tmpdir" or a.startswith("--tmpdir=") for a in args):
            args += ["--tmpdir", home]  # everything the user makes, in root's cleanup
        return rootless.rerun(cl, home, argv[0], args, stage_args=("--impl",),
                              subids=True, env=env)


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out
