# Mounted tests of the filesystem itself (options, crash safety, hostile layers,
# space given back at unlink).
foreach(t options sched crash hostile fdlimit space)
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
