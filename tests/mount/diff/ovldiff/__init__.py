"""Differential test harness: ovlfs against the kernel's overlayfs.

Modules, one concern each:
  layers     layer trees as data (Node), materialized identically into each copy
  randtree   seeded random multi-layer trees
  mounts     mounting the kernel's overlayfs and the implementation under test,
             the registry that unmounts everything on every exit path, the watchdog
  namespace  re-exec inside a private mount + pid namespace
  ops        operations applied identically to both mounts, results as strings
  worker     an unprivileged child that runs ops as another uid
  snapshot   the visible tree of a mount, per-mount invariants, tree comparison
  pair       two sides (kernel, implementation) built from one layer set
  randops    seeded random operation sequences
  cases      hand-written cases, one function per semantics bullet
  selftest   planted differences that the comparison must catch
"""
