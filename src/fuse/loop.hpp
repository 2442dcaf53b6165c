// The request loop: which thread reads the next FUSE request, and which serves it.
//
// Most requests take microseconds, and then the cheapest way to serve them is one
// thread that reads a request, serves it and reads the next: the kernel wakes the
// thread that just replied, warm on its CPU. libfuse's multi-threaded loop keeps a
// pool of idle threads blocked in read(2) instead, and the kernel hands each request
// to the one that has waited longest, so every request is served by another thread
// (about 1.5 us more per request here, a fifth of a lookup's round trip).
//
// Loop therefore has one *reader* at a time, which serves what it reads itself;
// the other workers wait. It hands the reading on to a waiting worker (or a new
// one, up to the limit) before serving a request that may take long (fsync, data,
// ioctl), and the loop's own thread hands it on when the reader has served one
// request for over a millisecond or when requests wait in the kernel's queue
// meanwhile: a request that blocks holds up the others for a millisecond at most,
// and concurrent callers get more threads within one. While requests come, the
// loop's thread looks every millisecond; it sleeps once none came for 100 ms, and
// the next request wakes it.
//
// The loop ends when the session ends: the filesystem is unmounted (the reader
// reads ENODEV), a request ended it (a failed INIT), or a signal handler asked
// it to (fuse_session_exit, then loop_wake(): the loop's thread sleeps without a
// timeout, so whatever ends the session wakes it). A reader blocked in read(2)
// is then cancelled there; a worker serving a request finishes it. run_loop
// returns once every worker has gone, whatever state the transport is in.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>

#include <cstddef>

namespace ovlfs {

// Serves `se` until it ends; returns 0, or the session's error (as
// fuse_session_loop_mt does). `max_threads`: workers at most; `max_idle`: waiting
// workers kept.
int run_loop(fuse_session* se, std::size_t max_threads, std::size_t max_idle);

// Wakes the running loop's thread to look at its session again. Async-signal-safe:
// for a signal handler that has just called fuse_session_exit().
void loop_wake();

}  // namespace ovlfs
