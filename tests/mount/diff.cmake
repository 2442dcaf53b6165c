# Differential tests: ovlfs against the kernel's overlayfs (tests/mount/diff/).
# Included by tests/mount/CMakeLists.txt. Each test re-executes itself inside
# private mount and pid namespaces; it needs root and exits 77 (skipped) without.
#
#   mount.diff.cases.<mode>   every hand-written case, then the swap, per mode
#   mount.diff.cases_tmpfs    the same, both modes, with the layers on a tmpfs
#   mount.diff.random.<n>     OVLFS_DIFF_SEEDS seeds x OVLFS_DIFF_OPS ops each, both
#                             modes, every seed followed by the swap and more ops
#                             (odd n: layers on a tmpfs)
#   mount.diff.random.cached  one more random test with passthrough off (the daemon's
#                             data path)
#   mount.diff.concurrent     random sequences run by 4 workers at once on one tree,
#                             then the tree and both layers compared with the kernel's
#                             view of the same layers
#   mount.diff.selftest       planted differences must be caught (kernel vs kernel)
#
# OVLFS_DIFF_IMPL picks the program under test: the ovlfs target by default;
# "kernel" runs the kernel against itself (must pass), "fuse-overlayfs" another
# implementation (must fail).
if(TARGET ovlfs)
  find_package(Python3 3.9 COMPONENTS Interpreter)
  if(Python3_Interpreter_FOUND)
    set(OVLFS_DIFF_IMPL "$<TARGET_FILE:ovlfs>" CACHE STRING
        "Program the differential tests compare with the kernel (or kernel, fuse-overlayfs)")
    set(OVLFS_DIFF_SEEDS 60 CACHE STRING "Random sequences per mount.diff.random.N test")
    set(OVLFS_DIFF_OPS 60 CACHE STRING "Operations per random sequence")
    set(OVLFS_DIFF_JOBS 4 CACHE STRING "Number of mount.diff.random.N tests")
    set(_diff_opts allow_other,dev,suid)
    set(_diff_impl ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/diff/run.py
        --impl ${OVLFS_DIFF_IMPL})
    set(_diff_run ${_diff_impl} --impl-opts ${_diff_opts})

    foreach(_mode redirect_on redirect_off)
      add_test(NAME mount.diff.cases.${_mode}
               COMMAND ${_diff_run} --mode ${_mode} --cases --swap)
      list(APPEND _diff_tests mount.diff.cases.${_mode})
    endforeach()
    # The same cases with every layer on a tmpfs: another upper filesystem
    # (other readdir offsets, other file handles).
    add_test(NAME mount.diff.cases_tmpfs
             COMMAND ${_diff_run} --mode both --cases --swap --tmpfs)
    list(APPEND _diff_tests mount.diff.cases_tmpfs)

    # Odd-numbered random tests put their layers on a tmpfs, even ones on $TMPDIR.
    math(EXPR _last "${OVLFS_DIFF_JOBS} - 1")
    foreach(_n RANGE ${_last})
      math(EXPR _seed "${_n} * 100000 + 1")
      math(EXPR _odd "${_n} % 2")
      set(_fs "")
      if(_odd)
        set(_fs --tmpfs)
      endif()
      add_test(NAME mount.diff.random.${_n}
               COMMAND ${_diff_run} --mode both --random ${OVLFS_DIFF_SEEDS}
                       --ops ${OVLFS_DIFF_OPS} --seed ${_seed} --swap ${_fs})
      list(APPEND _diff_tests mount.diff.random.${_n})
    endforeach()

    # The daemon's own data path: with passthrough off every read and write of an
    # upper file is a request (appends included: the handle's fd is never O_APPEND).
    add_test(NAME mount.diff.random.cached
             COMMAND ${_diff_impl} --impl-opts ${_diff_opts},passthrough=off --mode both --random ${OVLFS_DIFF_SEEDS} --ops ${OVLFS_DIFF_OPS}
                     --seed 9000001 --swap)
    list(APPEND _diff_tests mount.diff.random.cached)

    add_test(NAME mount.diff.concurrent
             COMMAND ${_diff_run} --mode both --random 100 --concurrent 4 --ops 100
                     --seed 7000001)
    list(APPEND _diff_tests mount.diff.concurrent)

    add_test(NAME mount.diff.selftest
             COMMAND ${Python3_EXECUTABLE} ${CMAKE_CURRENT_LIST_DIR}/diff/run.py
                     --impl kernel --self-test)
    list(APPEND _diff_tests mount.diff.selftest)

    set_tests_properties(${_diff_tests} PROPERTIES
      SKIP_RETURN_CODE 77
      TIMEOUT 900
      LABELS "mount;diff")
    unset(_diff_tests)
  else()
    message(STATUS "mount.diff: no Python 3 interpreter, differential tests not registered")
  endif()
endif()
