# Rootless (issue 18): the mounted suites that make sense without root, run once more
# as a normal user (uid 65534, nobody) in a user namespace of its own, as
# `setpriv --reuid 65534 --regid 65534 --clear-groups unshare -Urm` would run them
# (tests/mount/rootless.py). Root does only what a user cannot (the loop devices and
# ext4 images of the writeback-error rigs, faultyfs, a device node in the hostile
# layers, a 0666 /dev/fuse bound over the host's in the test's private mount
# namespace) and hands the directories over. Each needs root to start, and a kernel
# that lets a user make a user namespace; it exits 77 (skipped) without.
#
#   mount.rootless.diff.cases.<mode>  the hand-written differential cases and the
#                                     swap, against the kernel's overlayfs mounted
#                                     with userxattr in the same user namespace (with
#                                     subordinate ids, as rootless podman has them);
#                                     ovlfs gets no userxattr and must choose it. The
#                                     kernel allows only redirect_dir=nofollow there,
#                                     so the modes are ovlfs's redirect_dir=off and
#                                     =nofollow
#   mount.rootless.diff.random        seeded random sequences (30 x 60 ops, both modes,
#                                     each seed followed by the swap), as the user
#   mount.rootless.hostile            hostile layers (root makes them, the user mounts)
#   mount.rootless.crash              the daemon SIGKILLed during copy-ups and renames
#   mount.rootless.wb.table.<rig>     SPEC 2's table, volatile and non-volatile
#                                     columns, with a real error (root strikes it)
#   mount.rootless.users              writeback-error records across users: root's,
#                                     user A's (in a user namespace and through
#                                     fusermount3), user B's; squatters; one real
#                                     error found by root, one by A
if(TARGET ovlfs)
  set(_rl ${CMAKE_CURRENT_SOURCE_DIR})
  foreach(_mode redirect_off nofollow)
    add_test(NAME mount.rootless.diff.cases.${_mode}
             COMMAND python3 ${_rl}/diff/run.py --impl $<TARGET_FILE:ovlfs> --rootless
                     --mode ${_mode} --cases --swap)
    list(APPEND _rl_tests mount.rootless.diff.cases.${_mode})
  endforeach()
  add_test(NAME mount.rootless.diff.random
           COMMAND python3 ${_rl}/diff/run.py --impl $<TARGET_FILE:ovlfs> --rootless
                   --mode both --random 30 --ops 60 --seed 8000001 --swap)
  list(APPEND _rl_tests mount.rootless.diff.random)
  foreach(_t hostile crash)
    add_test(NAME mount.rootless.${_t}
             COMMAND python3 ${_rl}/test_${_t}.py --ovlfs $<TARGET_FILE:ovlfs> --rootless)
    list(APPEND _rl_tests mount.rootless.${_t})
  endforeach()
  foreach(_rig enospc eio)
    add_test(NAME mount.rootless.wb.table.${_rig}
             COMMAND python3 ${_rl}/wb_table.py --rig ${_rig} --rootless
                     --ovlfs $<TARGET_FILE:ovlfs> --faultyfs $<TARGET_FILE:faultyfs>)
    list(APPEND _rl_tests mount.rootless.wb.table.${_rig})
  endforeach()
  add_test(NAME mount.rootless.users
           COMMAND python3 ${_rl}/wb_users.py
                   --ovlfs $<TARGET_FILE:ovlfs> --faultyfs $<TARGET_FILE:faultyfs>)
  list(APPEND _rl_tests mount.rootless.users)
  set_tests_properties(${_rl_tests} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300
                       LABELS "mount;rootless")
  unset(_rl_tests)
  unset(_rl)
endif()
