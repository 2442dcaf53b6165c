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

# The writeback-error contract inside a container (issue 17 item 5; SPEC.md §2): podman
# storage on an ext4 whose image sits on a full tmpfs, so that a container's upper hits
# a real ENOSPC at writeback; `podman run --rm` (volatile) and `podman run` (not) get
# SPEC §2's two columns, and `ovlfs status` of the container's mount shows the error.
# With fuse-overlayfs installed, the volatile run is shown with it too (never fails).
set(_engine_wb_reference --reference=)
if(OVLFS_FUSE_OVERLAYFS)
  set(_engine_wb_reference --reference=${OVLFS_FUSE_OVERLAYFS})
endif()
add_test(NAME engine.podman_wb
         COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/test_podman_wb.py
                 --ovlfs $<TARGET_FILE:ovlfs> ${_engine_wb_reference})
set_tests_properties(engine.podman_wb PROPERTIES
                     LABELS engine SKIP_RETURN_CODE 77 TIMEOUT 180 RUN_SERIAL TRUE)

# Rootless podman (issue 18; SPEC.md §5): the checks of engine.podman run by a normal
# user (uid 0 of its user namespace, made with newuidmap/newgidmap), ovlfs as
# mount_program against podman's native overlay in that namespace, plus `ovlfs status`
# of a container's mounts from podman's namespace (user.overlay.* metadata, no
# passthrough, the user's own writeback-error record). The test makes its user,
# subordinate ids and a usable /dev/fuse in its own mount namespace only, and runs in a
# PID namespace of its own, so that podman's pause process and every daemon go with it.
# Skipped (77) without root, podman, newuidmap/newgidmap or setpriv.
add_test(NAME engine.podman_rootless
         COMMAND python3 ${CMAKE_CURRENT_LIST_DIR}/test_podman_rootless.py
                 --ovlfs $<TARGET_FILE:ovlfs> ${_engine_reference})
set_tests_properties(engine.podman_rootless PROPERTIES
                     LABELS engine SKIP_RETURN_CODE 77 TIMEOUT 300 RUN_SERIAL TRUE)
