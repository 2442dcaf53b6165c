#!/usr/bin/env python3
"""Differential tests: the implementation under test against the kernel's overlayfs.

  run.py --impl build/ovlfs [--mode redirect_on|redirect_off|both] [--cases [NAME...]]
         [--random COUNT --ops N [--seed S]] [--swap] [--swap-ops N] [--self-test]

--impl kernel mounts overlayfs on both sides (the harness must then report
nothing); --impl fuse-overlayfs runs fuse-overlayfs (it must find differences).
Exit status: 0 no difference, 1 differences, 2 harness error, 77 skipped.
Re-executes itself inside private mount and pid namespaces (needs root).
"""
import os
import sys

sys.dont_write_bytecode = True  # keep the source tree clean
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ovldiff import namespace  # noqa: E402

if __name__ == "__main__":
    namespace.ensure([os.path.abspath(__file__)] + sys.argv[1:])
    from ovldiff import main  # noqa: E402
    sys.exit(main.main(sys.argv[1:]))
