# Writeback errors (SPEC 2) with real errors on a loop device: the whole table on
# both rigs, many mounts on one upper, no durability call in volatile mode, and an
# error found by one ovlfs process seen by another; an error the kernel keeps on one
# file stays that file's.
foreach(rig eio enospc)
  add_test(NAME mount.wb.table.${rig}
           COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/wb_table.py --rig ${rig}
                   --ovlfs $<TARGET_FILE:ovlfs> --faultyfs $<TARGET_FILE:faultyfs>)
endforeach()
foreach(t many zero_sync two_process)
  add_test(NAME mount.wb.${t}
           COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/wb_${t}.py
                   --ovlfs $<TARGET_FILE:ovlfs> --faultyfs $<TARGET_FILE:faultyfs>)
endforeach()
add_test(NAME mount.wb.local
         COMMAND python3 ${CMAKE_CURRENT_SOURCE_DIR}/wb_local.py
                 --ovlfs $<TARGET_FILE:ovlfs> --diocollide $<TARGET_FILE:diocollide>)
set_tests_properties(mount.wb.table.eio mount.wb.table.enospc mount.wb.many mount.wb.zero_sync
                     mount.wb.two_process mount.wb.local PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 240)
