#include "host/fd_table.hpp"

#include "base/lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <system_error>
#include <thread>

namespace ovlfs::fd_table {
namespace {

// Never destroyed: the grower thread may still wait on it while the process exits.
struct State {
  Mutex<LockRank::kFdTable> mu;
  CondVar cv;
  int size = 0;           // GUARDED_BY(mu): the table holds at least this many fds
  int anchor = -1;        // GUARDED_BY(mu): an fd to duplicate (O_PATH of "/")
  bool pending = false;   // GUARDED_BY(mu): growth asked for
  pid_t thread_pid = 0;   // GUARDED_BY(mu): the process the grower runs in
};

State& state() {
  static State* s = new State;
  return *s;
}

int fd_limit() {
  struct rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur > static_cast<rlim_t>(INT_MAX))
    return INT_MAX;
  return static_cast<int>(rl.rlim_cur);
}

// The table covers fd `n - 1` once a copy of `anchor` has been put there; fds from
// there up may all be in use, which is just as good.
void cover(int anchor, int n) {
  const int fd = ::fcntl(anchor, F_DUPFD_CLOEXEC, n - 1);
  if (fd >= 0) ::close(fd);
}

// The fd that asks for the next growth: half of the table; none once the table
// holds the whole limit.
void set_watermark(int size, int limit) {
  detail::watermark.store(size >= limit ? INT_MAX : size / 2, std::memory_order_relaxed);
}

void run() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);  // signals are the main thread's
  State& s = state();
  UniqueLock lk(s.mu);
  for (;;) {
    s.cv.wait(lk, [&] { return s.pending; });
    const int limit = fd_limit();
    const int want = s.size > limit / 2 ? limit : s.size * 2;
    const int anchor = s.anchor;
    lk.unlock();
    cover(anchor, want);  // waits for the grace period: only this thread
    lk.lock();
    s.size = std::max(s.size, want);
    s.pending = false;
    set_watermark(s.size, limit);
  }
}

}  // namespace

void reserve(int n) {
  State& s = state();
  MutexLock g(s.mu);
  if (s.anchor < 0) s.anchor = ::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (s.anchor < 0) return;  // growth stays the kernel's
  const int limit = fd_limit();
  n = std::min(n, limit);
  cover(s.anchor, n);
  s.size = std::max(s.size, n);
  set_watermark(s.size, limit);
}

int reserved() {
  State& s = state();
  MutexLock g(s.mu);
  return s.size;
}

void detail::grow_soon() {
  State& s = state();
  MutexLock g(s.mu);
  if (s.pending || s.anchor < 0) return;
  s.pending = true;
  // The thread starts with the first growth, in the process that grows (a fork
  // does not carry threads over).
  if (s.thread_pid != ::getpid()) {
    try {
      std::thread(run).detach();
    } catch (const std::system_error&) {  // no thread: growth stays the kernel's
      s.pending = false;
      detail::watermark.store(INT_MAX, std::memory_order_relaxed);
      return;
    }
    s.thread_pid = ::getpid();
  }
  s.cv.notify_one();
}

}  // namespace ovlfs::fd_table
