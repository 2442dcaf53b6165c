// The request loop (loop.hpp): one reader at a time, serving what it reads.
#include "fuse/loop.hpp"
#include "host/fd_slot.hpp"

#include "base/lock.hpp"

#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <thread>

namespace ovlfs {
namespace {

// Opcodes of <linux/fuse.h> whose requests may take long: the reader hands the
// reading on before serving them.
constexpr std::uint32_t kRead = 15, kWrite = 16, kFsync = 20, kFsyncDir = 30, kIoctl = 39,
                        kFallocate = 43, kCopyFileRange = 47;

// Reads and writes this large or larger: small ones are served in microseconds.
constexpr std::uint32_t kLargeIo = 128 * 1024;

bool may_take_long(const fuse_buf& b) {
  if ((b.flags & FUSE_BUF_IS_FD) || b.size < 8) return true;  // cannot tell: assume so
  const char* p = static_cast<const char*>(b.mem);
  std::uint32_t op;
  std::memcpy(&op, p + 4, sizeof op);  // fuse_in_header: len, opcode, ...
  switch (op) {
    case kRead:
    case kWrite: {
      // fuse_read_in / fuse_write_in after the 40-byte header: fh, offset, size.
      std::uint32_t size;
      if (b.size < 40 + 20) return true;
      std::memcpy(&size, p + 40 + 16, sizeof size);
      return size >= kLargeIo;
    }
    case kFsync: case kFsyncDir: case kIoctl: case kFallocate: case kCopyFileRange:
      return true;
    default:
      return false;
  }
}

std::int64_t now_ns() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

constexpr std::int64_t kHandOffNs = 1'000'000;  // a request served this long hands off
constexpr int kQuietTicks = 100;                // 1 ms ticks without a request: sleep

// The running loop's wake-up, for loop_wake() (a signal handler).
std::atomic<sem_t*> g_wake{nullptr};

class Loop {
 public:
  Loop(fuse_session* se, std::size_t max_threads, std::size_t max_idle)
      : se_(se), max_threads_(max_threads < 1 ? 1 : max_threads), max_idle_(max_idle) {
    sem_init(&wake_, 0, 0);
    g_wake.store(&wake_);
  }
  ~Loop() {
    g_wake.store(nullptr);
    sem_destroy(&wake_);
  }

  int run();

 private:
  void worker();
  void spawn_locked();      // REQUIRES(mu_)
  void hand_off_locked();   // REQUIRES(mu_)
  void end_locked();        // REQUIRES(mu_)
  void watch();
  bool requests_waiting() const;

  fuse_session* const se_;
  const std::size_t max_threads_, max_idle_;

  Mutex<LockRank::kLoop> mu_;
  CondVar cv_;       // waiting workers
  CondVar done_cv_;  // the last worker has gone
  std::uint64_t reader_ = 0;         // GUARDED_BY(mu_): the reader's ticket (0: none)
  std::uint64_t tickets_ = 0;        // GUARDED_BY(mu_)
  bool reading_ = false;             // GUARDED_BY(mu_): the reader is in receive
  pthread_t reader_thread_{};        // GUARDED_BY(mu_): valid while reading_
  std::size_t workers_ = 0;          // GUARDED_BY(mu_)
  std::size_t idle_ = 0;             // GUARDED_BY(mu_)
  bool exit_ = false;                // GUARDED_BY(mu_)
  int error_ = 0;                    // GUARDED_BY(mu_)

  // When the reader started serving what it read (0: it is reading, or handed off).
  std::atomic<std::int64_t> busy_since_{0};
  std::atomic<std::uint64_t> served_{0};
  std::atomic<bool> watcher_asleep_{false};
  sem_t wake_;  // wakes the loop's thread: a request while it slept, or the end
};

// Whether requests wait in the kernel's queue (while the reader serves one).
bool Loop::requests_waiting() const {
  struct pollfd p {fuse_session_fd(se_), POLLIN, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

void Loop::spawn_locked() {
  ++workers_;
  std::thread([this] { worker(); }).detach();
}

// The reader is taken to be stuck: a waiting worker (or a new one) reads next.
void Loop::hand_off_locked() {
  reader_ = 0;
  busy_since_.store(0);
  if (idle_ > 0)
    cv_.notify_one();
  else if (workers_ < max_threads_)
    spawn_locked();
}

void Loop::end_locked() {
  exit_ = true;
  cv_.notify_all();
  sem_post(&wake_);
}

void Loop::worker() {
  // Signals go to the loop's thread, which waits interruptibly.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);

  fuse_buf buf{};
  struct Gone {  // also run when cancelled inside receive (a forced unwind)
    Loop* l;
    fuse_buf* b;
    ~Gone() {
      std::free(b->mem);
      MutexLock g(l->mu_);
      l->reading_ = false;
      if (--l->workers_ == 0) l->done_cv_.notify_all();
    }
  } gone{this, &buf};

  UniqueLock lk(mu_);
  std::uint64_t me = 0;
  for (;;) {
    if (exit_) return;
    if (reader_ != 0 && reader_ != me) {  // another worker reads
      if (idle_ >= max_idle_) return;
      ++idle_;
      cv_.wait(lk);
      --idle_;
      continue;
    }
    if (reader_ == 0) reader_ = me = ++tickets_;
    busy_since_.store(0);
    reading_ = true;
    reader_thread_ = pthread_self();
    lk.unlock();
    pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, nullptr);
    const int res = fuse_session_receive_buf(se_, &buf);
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, nullptr);
    lk.lock();
    reading_ = false;
    if (res == -EINTR || res == -EAGAIN) continue;  // (exit_ is looked at first)
    if (res <= 0) {  // unmounted (0), or the device failed
      // An aborted connection (a lazy unmount can end that way) is an end too.
      if (res < 0 && res != -ECONNABORTED) error_ = -res;
      end_locked();
      return;
    }
    if (exit_ || fuse_session_exited(se_)) {
      // The loop ends (a signal) with a request read: it is answered, not dropped.
      end_locked();
      lk.unlock();
      FdScope scope;  // the request's fds (host/fd_slot.hpp)
      fuse_session_process_buf(se_, &buf);
      return;
    }
    const bool long_op = may_take_long(buf);
    if (long_op)
      hand_off_locked();
    else
      busy_since_.store(now_ns());
    lk.unlock();
    // Only "something was served" matters to the watcher: a lost increment of
    // two readers at once is harmless, and a plain store needs no locked
    // instruction. The wake-up is read first (seq_cst, after busy_since_'s
    // seq_cst store) and exchanged only when the watcher sleeps.
    served_.store(served_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    if (!long_op && watcher_asleep_.load() && watcher_asleep_.exchange(false))
      sem_post(&wake_);
    {
      FdScope scope;  // the request's fds (host/fd_slot.hpp)
      fuse_session_process_buf(se_, &buf);
    }
    lk.lock();
    if (fuse_session_exited(se_)) end_locked();  // the request ended the session
  }
}

// The loop's thread: hands the reading on when the reader is stuck in a request;
// sleeps while no request comes; ends the loop when the session ends.
void Loop::watch() {
  std::uint64_t seen = served_.load();
  int quiet = 0;
  while (!fuse_session_exited(se_)) {
    {
      MutexLock g(mu_);
      if (exit_) return;
      const std::int64_t since = busy_since_.load();
      if (reader_ != 0 && !reading_ && since != 0 &&
          (now_ns() - since > kHandOffNs || requests_waiting()))
        hand_off_locked();
    }
    const std::uint64_t s = served_.load();
    quiet = s == seen ? quiet + 1 : 0;
    seen = s;
    if (quiet >= kQuietTicks) {
      // Asleep until a request is served. Set before looking at the reader, as the
      // reader sets busy_since_ before looking at this: one of the two sees the other.
      watcher_asleep_.store(true);
      // No timeout: a request served, the end of the loop (end_locked) and a
      // signal handler's loop_wake() each post. EINTR: look again.
      if (busy_since_.load() == 0 && !fuse_session_exited(se_)) (void)sem_wait(&wake_);
      watcher_asleep_.store(false);
      if (const std::uint64_t s2 = served_.load(); s2 != seen) {  // else: back to sleep
        quiet = 0;
        seen = s2;
      }
      continue;
    }
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    t.tv_nsec += 1'000'000;
    if (t.tv_nsec >= 1'000'000'000) {
      t.tv_nsec -= 1'000'000'000;
      ++t.tv_sec;
    }
    (void)sem_clockwait(&wake_, CLOCK_MONOTONIC, &t);  // EINTR: a signal, look again
  }
}

int Loop::run() {
  {
    MutexLock g(mu_);
    spawn_locked();
  }
  watch();
  UniqueLock lk(mu_);
  exit_ = true;
  cv_.notify_all();
  // A reader blocked in read(2) is cancelled there (libfuse's loops do the same);
  // anywhere else it sees exit_ on its own.
  if (reading_) pthread_cancel(reader_thread_);
  done_cv_.wait(lk, [&] { return workers_ == 0; });
  return error_;
}

}  // namespace

int run_loop(fuse_session* se, std::size_t max_threads, std::size_t max_idle) {
  Loop loop(se, max_threads, max_idle);
  return loop.run();
}

void loop_wake() {
  if (sem_t* w = g_wake.load()) sem_post(w);
}

}  // namespace ovlfs
