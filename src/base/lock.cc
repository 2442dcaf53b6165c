// The lock-order checker (lock.hpp): each thread's held locks, checked at every
// acquisition. It allocates nothing and prints with write(2) only, so that it can
// report from any thread in any state.
#include "base/lock.hpp"

#include <execinfo.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ovlfs {

const char* lock_rank_name(LockRank r) {
  switch (r) {
    case LockRank::kWbSync: return "Writeback::sync_mu_";
    case LockRank::kWbPass: return "Writeback::pass_mu_";
    case LockRank::kPassthrough: return "Passthrough::mu_";
    case LockRank::kCopyUp: return "Node::copy_mu";
    case LockRank::kDirHandle: return "DirHandle::mu";
    case LockRank::kFileHandle: return "FileHandle::mu";
    case LockRank::kNode: return "Node::mu";
    case LockRank::kWbInode: return "WbInode::mu";
    case LockRank::kWbOpen: return "WbOpen::mu";
    case LockRank::kNodeLookup: return "Node::lookup_mu";
    case LockRank::kNodeTable: return "Overlay::table_mu_";
    case LockRank::kOrigin: return "Overlay::origin_mu_";
    case LockRank::kFdRing: return "Overlay::ring_mu_";
    case LockRank::kWbNodes: return "Writeback::nodes_mu_";
    case LockRank::kWbDirty: return "Writeback::dirty_mu_";
    case LockRank::kWbThread: return "Writeback::thread_mu_";
    case LockRank::kReclaim: return "Reclaimer::mu_";
    case LockRank::kLoop: return "Loop::mu_";
    case LockRank::kUring: return "Uring::mu_";
    case LockRank::kSchedTick: return "sched tick";
    case LockRank::kFdTable: return "fd_table";
    case LockRank::kFaultHost: return "FaultyHost::mu_";
    case LockRank::kTest: return "test lock";
  }
  return "?";
}

namespace lock_check {
namespace {

struct Held {
  const void* mu;
  LockRank rank;
  std::source_location at;
};

constexpr int kMaxHeld = 16;
thread_local Held tl_held[kMaxHeld];
thread_local int tl_count = 0;

std::atomic<bool> g_abort{true};
std::atomic<std::uint64_t> g_violations{0};

[[gnu::format(printf, 1, 2)]] void say(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n > 0) (void)!::write(STDERR_FILENO, buf, std::min<std::size_t>(static_cast<std::size_t>(n), sizeof buf - 1));
}

void where(const char* what, LockRank rank, const std::source_location& at) {
  say("  %s %s (rank %d) at %s:%u in %s\n", what, lock_rank_name(rank), static_cast<int>(rank),
      at.file_name(), at.line(), at.function_name());
}

void violation(const char* why, LockRank rank, const std::source_location& at,
               const Held* against) {
  g_violations.fetch_add(1, std::memory_order_relaxed);
  if (!g_abort.load(std::memory_order_relaxed)) return;
  say("ovlfs: lock order violation (%s), thread %d:\n", why, static_cast<int>(::gettid()));
  where("taking ", rank, at);
  if (against) where("holding", against->rank, against->at);
  for (int i = 0; i < tl_count; ++i)
    if (&tl_held[i] != against) where("also holding", tl_held[i].rank, tl_held[i].at);
  say("  stack of this thread:\n");
  void* frames[64];
  ::backtrace_symbols_fd(frames, ::backtrace(frames, 64), STDERR_FILENO);
  std::abort();
}

}  // namespace

void acquire(const void* mu, LockRank rank, const std::source_location& at) {
  for (int i = 0; i < tl_count; ++i) {
    const Held& h = tl_held[i];
    if (h.rank < rank) continue;
    violation(h.mu == mu ? "a lock this thread already holds" : "a lock of this rank or an outer one after an inner one",
              rank, at, &h);
    return;
  }
}

void acquired(const void* mu, LockRank rank, const std::source_location& at) {
  if (tl_count == kMaxHeld) {
    violation("too many locks held at once", rank, at, nullptr);
    return;
  }
  tl_held[tl_count++] = Held{mu, rank, at};
}

void released(const void* mu) {
  for (int i = tl_count - 1; i >= 0; --i) {
    if (tl_held[i].mu != mu) continue;
    for (int j = i + 1; j < tl_count; ++j) tl_held[j - 1] = tl_held[j];
    --tl_count;
    return;
  }
  // A lock let go by a thread that does not hold it (or held past kMaxHeld).
  violation("letting go of a lock this thread does not hold", LockRank::kTest,
            std::source_location::current(), nullptr);
}

int held_count() { return tl_count; }
void set_abort_on_violation(bool abort) { g_abort.store(abort, std::memory_order_relaxed); }
std::uint64_t violations() { return g_violations.load(std::memory_order_relaxed); }

}  // namespace lock_check
}  // namespace ovlfs
