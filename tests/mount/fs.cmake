# Mounted tests of the filesystem itself: tests/mount/test_NAME.py as mount.fs.NAME,
# skipped (77) without root. TOOLS: tools of tests/tools the test is given, each as
# --NAME PATH (faultyfs: a FUSE filesystem of the tests' own that stalls or fails
# chosen requests). SERIAL: runs alone.
function(ovlfs_fs_test name timeout)
  cmake_parse_arguments(T "SERIAL" "" "TOOLS" ${ARGN})
  set(cmd python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_${name}.py --ovlfs $<TARGET_FILE:ovlfs>)
  foreach(tool IN LISTS T_TOOLS)
    list(APPEND cmd --${tool} $<TARGET_FILE:${tool}>)
  endforeach()
  add_test(NAME mount.fs.${name} COMMAND ${cmd})
  set_tests_properties(mount.fs.${name} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT ${timeout})
  if(T_SERIAL)
    set_tests_properties(mount.fs.${name} PROPERTIES RUN_SERIAL TRUE)
  endif()
endfunction()

# Options (and the engines' options), layer formats, crash safety, hostile layers,
# space given back at unlink; O_DIRECT, umask and default ACLs, and the attribute
# changes the kernel's FUSE leaves to the daemon (set-id bits, ACL modes, mmap times,
# the overlay's atime option over the upper's)
# as the kernel's overlayfs.
foreach(t options engine_opts formats sched crash hostile space acl_umask attrs atime)
  ovlfs_fs_test(${t} 300)
endforeach()
ovlfs_fs_test(direct_io 300 TOOLS aiorace)
# Any tree, any burst under a hard limit of 1,024 fds: a walk of 100,000 lower dirs
# (as the kernel's overlayfs shows it), 200,000 files unpacked beside two CPU hogs and
# 400 open files, volatile and not; the daemon's fds stay bounded. Alone: its hogs
# would slow the others.
ovlfs_fs_test(fdlimit 900 SERIAL)
# The request loop: a request blocked in the daemon (on a stopped FUSE lower) holds
# up no other.
ovlfs_fs_test(blocked 120 TOOLS faultyfs)
# Power cut during copy-up (faultyfs drops every write after the cut): no copy is
# visible without its data after the journal replay.
ovlfs_fs_test(powercut 300 TOOLS faultyfs)
# Concurrency: many processes on one mount (copy-up of one file by 16 at once, copy-up
# racing listings, lookups and FORGETs, a create/rename/unlink storm checked against the
# kernel's overlayfs, rm -rf while listing, unmount in flight), 50 rounds each, every
# round under a watchdog that prints the daemon's backtraces and fails instead of
# hanging. scripts/soak runs it for longer.
ovlfs_fs_test(concurrency 900)
# Shutdown: the daemon ends after every unmount (umount, umount -l, fusermount3 -u,
# SIGTERM) whatever is in flight, over io_uring and /dev/fuse, under a watchdog that
# prints its threads and kills it; a fast unmount/mount loop on one workdir never has
# two daemons on it and every mount sees the previous one's data.
ovlfs_fs_test(shutdown 300 TOOLS faultyfs)
# Memory: after the kernel forgets 100,000 nodes the daemon's RSS is back near its
# size at the mount, round after round. Alone: it drops the kernel's caches (echo 2 >
# drop_caches), which every other mount would feel, and reads RSS, which other tests'
# load would blur.
ovlfs_fs_test(memory 180 SERIAL)
