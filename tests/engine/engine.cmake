# The real container engines (issue 17; SPEC.md §5): podman and buildah with ovlfs as
# containers-storage's mount_program, every check compared with podman's native kernel
# overlay. Root only; skipped (77) without root or podman. Runs alone: it starts many
# mounts and containers, and its podman commands have timeouts of their own.
# When fuse-overlayfs is installed, the output also shows how it fares on each check
# (for comparison only; it never fails the test).
find_program(OVLFS_FUSE_OVERLAYFS fuse-overlayfs)
set(_engine_reference)
if(OVLFS_FUSE_OVERLAYFS)
  set(_engine_reference --reference ${OVLFS_FUSE_OVERLAYFS})
endif()
add_test(NAME engine.podman
         COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/test_podman.py
                 --ovlfs $<TARGET_FILE:ovlfs> ${_engine_reference})
set_tests_properties(engine.podman PROPERTIES
                     LABELS engine SKIP_RETURN_CODE 77 TIMEOUT 300 RUN_SERIAL TRUE)
