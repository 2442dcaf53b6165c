// The daemon's locks and the one order in which they are taken.
//
// Every lock of the daemon is a Mutex<rank>. A thread takes locks only in rising
// rank: holding a lock of rank R it may take only locks of a rank above R, never
// one of R itself (two nodes' locks, say, are never held at once). A cycle of
// waits needs some thread to take a lock against that order, so a daemon that
// keeps it cannot deadlock on its own locks. The order, outermost first, with the
// reason each lock sits where it does:
//
//   kWbSync      Writeback::sync_mu_: one syncfs of the mount at a time; it runs a
//                writeback pass.
//   kWbPass      Writeback::pass_mu_: one writeback pass at a time; checks files.
//   kPassthrough Passthrough::mu_ (fuse/): held while it asks the overlay for a
//                backing file (which reads the open file's fd).
//   kCopyUp      Node::copy_mu: one copy-up of a node at a time, held across the
//                whole copy; the copy takes the node's mu, the writeback state of
//                the copy and the node table.
//   kDirHandle   DirHandle::mu: an open directory's listing; readdirplus looks
//                entries up (node locks, the node table) while it holds it.
//   kFileHandle  FileHandle::mu: which real fd an open file uses.
//   kNode        Node::mu: where a node was last seen (parent, name) and its
//                directory xattrs. Short; nothing but leaves below it.
//   kWbInode     WbInode::mu: an upper file's detector; held across its check.
//   kWbOpen      WbOpen::mu: an open file's error cursors.
//   kNodeLookup  Node::lookup_mu: the kernel's lookup count of a node.
//   kNodeTable   Overlay::table_mu_: the node table. Nothing is destroyed under
//                it: dropping a node's last reference takes it again (~Node).
//   kOrigin ...  leaves: nothing is taken while holding them.
//
// The checker (OVLFS_LOCK_RANK, on in debug and sanitizer builds and in the test
// build) keeps each thread's held locks and aborts the process on the first
// acquisition against the order, printing where both locks were taken and the
// stack of the thread that broke the order. It needs no second thread to race:
// a wrong order is caught the first time it runs, deadlock or not.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <source_location>

namespace ovlfs {

enum class LockRank : std::uint8_t {
  kWbSync = 1,
  kWbPass,
  kPassthrough,
  kCopyUp,
  kDirHandle,
  kFileHandle,
  kNode,
  kWbInode,
  kWbOpen,
  kNodeLookup,
  kNodeTable,
  // Leaves: each guards its own few fields, and its holder takes no other lock.
  kOrigin,       // Overlay::origin_mu_: decoded origin handles
  kWbNodes,      // Writeback::nodes_mu_: Node::wb
  kWbDirty,      // Writeback::dirty_mu_: files to check
  kWbThread,     // Writeback::thread_mu_: the writeback thread's wake-ups
  kReclaim,      // the FUSE adapter's reclaimer thread
  kLoop,         // the request loop's worker state (fuse/loop.cc)
  kUring,        // FUSE over io_uring's workers (fuse/uring.hpp)
  kSchedTick,    // the scheduling-policy tick (fuse/sched.cc)
  kFdTable,      // the fd table's grower (host/fd_table.cc)
  kFaultHost,    // a test host's fault rules (host/fault_host.hpp)
  kFdRing,       // Overlay::ring_mu_: nodes holding fds (fds.cc); any lock may be held
  kTest,         // tests of the checker itself
};

const char* lock_rank_name(LockRank r);

namespace lock_check {
// Whether this build checks the order.
#ifdef OVLFS_LOCK_RANK
inline constexpr bool kEnabled = true;
#else
inline constexpr bool kEnabled = false;
#endif
// Called before a thread blocks on `mu` (aborts if that breaks the order) and
// after it holds it; `unheld` when it lets go.
void acquire(const void* mu, LockRank rank, const std::source_location& at);
void acquired(const void* mu, LockRank rank, const std::source_location& at);
void released(const void* mu);
// How many locks this thread holds (tests).
int held_count();
// What the checker does on a violation: abort (the default), or count it and go
// on (tests of the checker).
void set_abort_on_violation(bool abort);
std::uint64_t violations();
}  // namespace lock_check

// A mutex with a place in the daemon's lock order.
template <LockRank Rank>
class Mutex {
 public:
  static constexpr LockRank kRank = Rank;
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void lock(const std::source_location& at = std::source_location::current()) {
    if constexpr (lock_check::kEnabled) lock_check::acquire(this, Rank, at);
    mu_.lock();
    if constexpr (lock_check::kEnabled) lock_check::acquired(this, Rank, at);
  }
  bool try_lock(const std::source_location& at = std::source_location::current()) {
    // A try never waits, so it cannot close a cycle: no order to check.
    if (!mu_.try_lock()) return false;
    if constexpr (lock_check::kEnabled) lock_check::acquired(this, Rank, at);
    return true;
  }
  void unlock() {
    if constexpr (lock_check::kEnabled) lock_check::released(this);
    mu_.unlock();
  }

 private:
  std::mutex mu_;
};

// Holds a Mutex for a scope: `MutexLock g(node->mu);`.
template <class M>
class [[nodiscard]] MutexLock {
 public:
  explicit MutexLock(M& mu, const std::source_location& at = std::source_location::current())
      : mu_(mu) {
    mu_.lock(at);
  }
  ~MutexLock() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  M& mu_;
};

// A Mutex held, let go and taken again (for condition variables, which take it
// as their lock: `CondVar cv; UniqueLock lk(mu); cv.wait(lk, pred);`).
template <class M>
class [[nodiscard]] UniqueLock {
 public:
  explicit UniqueLock(M& mu, const std::source_location& at = std::source_location::current())
      : mu_(&mu), at_(at) {
    lock();
  }
  UniqueLock(M& mu, std::try_to_lock_t,
             const std::source_location& at = std::source_location::current())
      : mu_(&mu), at_(at) {
    owns_ = mu_->try_lock(at_);
  }
  ~UniqueLock() {
    if (owns_) mu_->unlock();
  }
  UniqueLock(const UniqueLock&) = delete;
  UniqueLock& operator=(const UniqueLock&) = delete;

  void lock() {
    mu_->lock(at_);
    owns_ = true;
  }
  void unlock() {
    owns_ = false;
    mu_->unlock();
  }
  bool owns_lock() const { return owns_; }

 private:
  M* mu_;
  std::source_location at_;
  bool owns_ = false;
};

// A condition variable for UniqueLock<Mutex<...>>.
using CondVar = std::condition_variable_any;

}  // namespace ovlfs
