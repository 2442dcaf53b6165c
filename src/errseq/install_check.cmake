# The errseq_install test: installs the build tree into a fresh prefix, then
# configures, builds and runs src/errseq/consumer against that prefix only.
# Variables: BUILD_DIR (the ovlfs build tree), CONSUMER_DIR, WORK_DIR,
# GENERATOR, CXX_COMPILER.

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${prefix}" --component errseq)
if(NOT EXISTS "${prefix}/include/ovlfs/errseq.hpp")
  message(FATAL_ERROR "errseq.hpp was not installed under ${prefix}")
endif()
run(${CMAKE_COMMAND} -S "${CONSUMER_DIR}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_PREFIX_PATH=${prefix}"
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer")
message(STATUS "installed to ${prefix}; the consumer found, built and ran it")
