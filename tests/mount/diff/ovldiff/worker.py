"""An unprivileged child that applies operations as another uid/gid.

Forked from the harness (same mount namespace), it drops to uid/gid with no
supplementary groups and then serves ops.apply() over a pipe, one JSON line
per request. Used for permission checks as a non-root caller, by the
hand-written permission case and by the random sequences.
"""
import json
import os

from . import mounts, ops


class Worker:
    def __init__(self, uid=65534, gid=65534):
        self.uid, self.gid = uid, gid
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(req_w)
            os.close(res_r)
            try:
                os.setgroups([])
                os.setgid(gid)
                os.setuid(uid)
                os.umask(0o022)
                _serve(req_r, res_w)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(res_w)
        self.pid = pid
        mounts.KEEP_CHILDREN.add(pid)
        self.req = os.fdopen(req_w, "w", buffering=1)
        self.res = os.fdopen(res_r, "r")

    def apply(self, mnt, o):
        self.req.write(json.dumps({"mnt": mnt, "op": o}) + "\n")
        line = self.res.readline()
        if not line:
            raise RuntimeError("unprivileged worker died")
        return json.loads(line)

    def close(self):
        try:
            self.req.close()
            self.res.close()
        finally:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            mounts.KEEP_CHILDREN.discard(self.pid)


def _serve(req_r, res_w):
    req = os.fdopen(req_r, "r")
    res = os.fdopen(res_w, "w", buffering=1)
    for line in req:
        msg = json.loads(line)
        res.write(json.dumps(ops.apply(msg["mnt"], msg["op"])) + "\n")
