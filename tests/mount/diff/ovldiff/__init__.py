"""Differential test harness: ovlfs against the kernel's overlayfs.

Modules, one concern each:
  namespace  re-exec inside private mount and pid namespaces, signal forwarding
  main       command line, the run loop, the summary
  mounts     mounting the kernel's overlayfs and the implementation under test,
             the registry that unmounts everything on every exit path, the watchdog
  layers     layer trees as data (Node), materialized identically into each copy
  randtree   seeded random multi-layer trees that the kernel could have written
  ops        operations applied identically to both mounts, results as strings
  worker     an unprivileged child that runs ops as another uid
  snapshot   the visible tree of a mount, per-mount invariants, tree comparison
  pair       two sides (kernel, implementation) built from one layer set, the swap
  randops    seeded random operation sequences
  casekit    the context of a hand-written case and the case runner
  cases      hand-written cases, one function per semantics bullet
  dirstream  opendir/telldir/seekdir through libc, readdir scenarios
  selftest   planted differences that the comparison must catch
"""
