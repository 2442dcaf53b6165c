# Mounted tests of the filesystem itself (options, the engines' options, layer formats,
# crash safety, hostile layers, space given back at unlink).
foreach(t options engine_opts formats sched crash hostile fdlimit space)
  add_test(NAME mount.fs.${t}
           COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_${t}.py --ovlfs $<TARGET_FILE:ovlfs>)
  set_tests_properties(mount.fs.${t} PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
endforeach()
# The request loop: a request blocked in the daemon (on a stopped FUSE lower) holds
# up no other.
add_test(NAME mount.fs.blocked
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_blocked.py --ovlfs $<TARGET_FILE:ovlfs>
                 --faultyfs $<TARGET_FILE:faultyfs>)
set_tests_properties(mount.fs.blocked PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120)
# Power cut during copy-up (faultyfs drops every write after the cut): no copy is
# visible without its data after the journal replay.
add_test(NAME mount.fs.powercut
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_powercut.py --ovlfs $<TARGET_FILE:ovlfs>
                 --faultyfs $<TARGET_FILE:faultyfs>)
set_tests_properties(mount.fs.powercut PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
# Concurrency: many processes on one mount (copy-up of one file by 16 at once, copy-up
# racing listings, lookups and FORGETs, a create/rename/unlink storm checked against the
# kernel's overlayfs, rm -rf while listing); every round under a watchdog that prints
# the daemon's backtraces and fails instead of hanging. scripts/soak runs it for longer.
add_test(NAME mount.fs.concurrency
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_concurrency.py --ovlfs $<TARGET_FILE:ovlfs>)
set_tests_properties(mount.fs.concurrency PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 600)
# Shutdown (issue 20): the daemon ends after every unmount (umount, umount -l,
# fusermount3 -u, SIGTERM) whatever is in flight, over io_uring and /dev/fuse, under
# a watchdog that prints its threads and kills it; a fast unmount/mount loop on one
# workdir never has two daemons on it and every mount sees the previous one's data.
add_test(NAME mount.fs.shutdown
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_shutdown.py --ovlfs $<TARGET_FILE:ovlfs>
                 --faultyfs $<TARGET_FILE:faultyfs>)
set_tests_properties(mount.fs.shutdown PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 300)
# Memory (issue 20): after the kernel forgets 100,000 nodes the daemon's RSS is back
# near its size at the mount, round after round. Alone: it drops the kernel's caches
# (echo 2 > drop_caches), which every other mount would feel, and reads RSS, which
# other tests' load would blur.
add_test(NAME mount.fs.memory
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/test_memory.py --ovlfs $<TARGET_FILE:ovlfs>)
set_tests_properties(mount.fs.memory PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 180 RUN_SERIAL TRUE)
