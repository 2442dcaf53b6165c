// fd_table: grows the process's file descriptor table ahead of need, on a thread
// of its own, so that no request waits for the kernel to grow it.
//
// Why: the kernel's fd table starts small and doubles when an fd past its end is
// allocated; in a process with more than one thread each growth waits for an RCU
// grace period (expand_fdtable: synchronize_rcu), 4-14 ms on a 2-CPU VM, and the
// thread that opened the fd holds its request all that time. ovlfs keeps fds per
// node, so its table grows with the nodes the kernel holds: creating 20,000 files
// doubles it about nine times.
//
// How: after reserve() (called once, while the process has one thread), every fd
// the host hands out is passed to note(); when one reaches half of the table,
// the grower thread doubles the table by duplicating an fd to the new table's
// last slot and closing the copy. Requests go on meanwhile: the kernel lets fds
// below the table's end be allocated while it grows.
#pragma once

#include <atomic>
#include <climits>

namespace ovlfs::fd_table {

namespace detail {
inline std::atomic<int> watermark{INT_MAX};  // an fd at or past it asks for growth
void grow_soon();
}  // namespace detail

// Makes the table hold at least `n` fds now (no grace period while the process has
// one thread) and turns on growth ahead of need. Until it is called, note() does
// nothing.
void reserve(int n);

// An fd the process now holds: asks for a larger table once it reaches half of it.
inline void note(int fd) {
  if (fd >= detail::watermark.load(std::memory_order_relaxed)) detail::grow_soon();
}

// The number of fds the table holds at least (for tests; 0 before reserve()).
int reserved();

}  // namespace ovlfs::fd_table
