// FUSE over io_uring: see uring.hpp.
#include "fuse/uring.hpp"
#include "host/fd_slot.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <thread>

#include "fuse/proto.hpp"
#include "fuse/sched.hpp"

namespace ovlfs {
namespace {

using fuse_proto::InHeader;
using fuse_proto::OutHeader;

// <linux/fuse.h>, protocol 7.42: the io_uring commands and buffers.
constexpr std::uint32_t kCmdRegister = 1;        // FUSE_IO_URING_CMD_REGISTER
constexpr std::uint32_t kCmdCommitAndFetch = 2;  // FUSE_IO_URING_CMD_COMMIT_AND_FETCH

struct EntInOut {  // struct fuse_uring_ent_in_out
  std::uint64_t flags, commit_id;
  std::uint32_t payload_sz, padding;
  std::uint64_t reserved;
};
struct ReqHeader {  // struct fuse_uring_req_header
  char in_out[128];  // fuse_in_header in, fuse_out_header out
  char op_in[128];   // the opcode's fixed argument
  EntInOut ent;
};
struct CmdReq {  // struct fuse_uring_cmd_req, in the SQE's command area
  std::uint64_t flags, commit_id;
  std::uint16_t qid;
  std::uint8_t padding[6];
};
static_assert(sizeof(EntInOut) == 32 && sizeof(ReqHeader) == 288 && sizeof(CmdReq) == 24);

// Opcodes libfuse never answers: their entry is committed without a reply.
constexpr std::uint32_t kForget = 2, kInterrupt = 36, kNotifyReply = 41, kBatchForget = 42;

// Room in front of the payload buffer where a request is rebuilt in /dev/fuse's
// layout (header, fixed argument, payload) without moving the payload.
constexpr std::size_t kPrefix = 4096;

// Workers each queue starts with: one to serve, one waiting.
constexpr int kStartPerQueue = 2;

constexpr std::uint64_t kStopTag = ~std::uint64_t{0};  // user_data of the stop message

// A worker's reply state for the request it serves.
constexpr std::uint32_t kAwaiting = 0;   // no reply yet
constexpr std::uint32_t kReplied = 1;    // the reply is in the entry
constexpr std::uint32_t kAbandoned = 2;  // stop(): no reply will be waited for

const char kEnableParam[] = "/sys/module/fuse/parameters/enable_uring";

// The kernel's queues: one per possible CPU (nr_cpu_ids).
unsigned possible_cpus() {
  std::ifstream f("/sys/devices/system/cpu/possible");
  std::string s;
  if (f >> s) {
    // "0-3" or "0-3,6-7" or "0": the highest number plus one.
    unsigned hi = 0;
    bool any = false;
    std::size_t i = 0;
    while (i < s.size()) {
      if (s[i] < '0' || s[i] > '9') {
        ++i;
        continue;
      }
      unsigned v = 0;
      while (i < s.size() && s[i] >= '0' && s[i] <= '9') v = v * 10 + static_cast<unsigned>(s[i++] - '0');
      hi = std::max(hi, v);
      any = true;
    }
    if (any && hi < 65536) return hi + 1;
  }
  int n = get_nprocs_conf();
  return n > 0 ? static_cast<unsigned>(n) : 1;
}

void pin_to(unsigned cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= CPU_SETSIZE) return;
  CPU_SET(cpu, &set);
  (void)pthread_setaffinity_np(pthread_self(), sizeof set, &set);  // an offline CPU: unpinned
}

void block_signals() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
}

}  // namespace

struct Uring::Queue {
  unsigned qid = 0;
  std::atomic<int> idle{0};  // workers waiting for a request
  std::size_t count = 0;     // GUARDED_BY(Uring::mu_): workers
};

struct Uring::Worker {
  Queue* q = nullptr;
  io_uring ring{};
  bool ring_ok = false;
  alignas(64) ReqHeader hdr{};
  char* mem = nullptr;  // kPrefix bytes, then the payload buffer
  std::size_t mem_size = 0;
  struct iovec iov[2]{};
  std::atomic<std::uint64_t> unique{0};  // the request being served (0: none)
  std::atomic<std::uint32_t> replied{kAwaiting};
  // Waits for a reply that another thread writes (stop() abandons only such a wait).
  std::atomic<bool> awaiting_other{false};
  bool late = false;  // started while the queue served: may have to kick it
  std::thread thread;

  bool setup(std::size_t payload) {
    io_uring_params p{};
    p.flags = IORING_SETUP_SQE128;
    if (io_uring_queue_init_params(4, &ring, &p) != 0) return false;
    ring_ok = true;
    mem_size = kPrefix + payload;
    void* m = ::mmap(nullptr, mem_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return false;
    mem = static_cast<char*>(m);
    iov[0] = {&hdr, sizeof hdr};
    iov[1] = {mem + kPrefix, payload};
    return true;
  }

  ~Worker() {
    if (ring_ok) io_uring_queue_exit(&ring);
    if (mem) ::munmap(mem, mem_size);
  }

  // Queues the entry's next command: REGISTER, or COMMIT_AND_FETCH of `commit`.
  bool prep(int devfd, std::uint32_t op, std::uint64_t commit) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    if (!sqe) return false;
    std::memset(static_cast<void*>(sqe), 0, 128);  // SQE128
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = devfd;
    sqe->cmd_op = op;
    sqe->user_data = reinterpret_cast<std::uintptr_t>(this);
    if (op == kCmdRegister) {
      sqe->addr = reinterpret_cast<std::uintptr_t>(iov);
      sqe->len = 2;
    }
    CmdReq cmd{};
    cmd.commit_id = commit;
    cmd.qid = static_cast<std::uint16_t>(q->qid);
    std::memcpy(sqe->cmd, &cmd, sizeof cmd);
    return true;
  }
};

thread_local Uring::Worker* Uring::tl_worker_ = nullptr;

Uring::Uring(fuse_session* se, bool allowed, std::string mountpoint)
    : se_(se), allowed_(allowed), mountpoint_(std::move(mountpoint)) {}

Uring::~Uring() {
  stop();
  {
    MutexLock g(mu_);
    workers_.clear();
  }
  if (ctl_) {
    io_uring_queue_exit(ctl_);
    delete ctl_;
  }
  if (devfd_ >= 0) ::close(devfd_);
}

std::string Uring::enable_in_kernel() {
  std::ifstream in(kEnableParam);
  std::string v;
  if (!(in >> v) || v != "N" || ::geteuid() != 0) return "";
  std::ofstream out(kEnableParam);
  if (!(out << "Y" << std::flush)) return "";
  return std::string("turned on FUSE over io_uring (") + kEnableParam + ")";
}

std::uint32_t Uring::init_reply(std::uint32_t offered, std::uint32_t max_write,
                                std::uint32_t max_pages) {
  if (!allowed_ || !(offered & kInitFlag2)) return 0;
  // The kernel's smallest payload buffer: max(8 KiB, max_write, max_pages pages),
  // max_pages being 32 unless the reply set it.
  const std::size_t page = 4096;
  payload_size_ = std::max<std::size_t>({8192, max_write, std::size_t{max_pages ? max_pages : 32} * page});
  const unsigned nq = possible_cpus();
  MutexLock g(mu_);
  // What ending needs, made now (stop() must not fail for lack of an fd): the
  // rings' own fd of the device, and the ring that sends the stop messages.
  devfd_ = ::fcntl(fuse_session_fd(se_), F_DUPFD_CLOEXEC, 0);
  if (devfd_ < 0) return 0;
  ctl_ = new io_uring{};
  if (io_uring_queue_init(64, ctl_, 0) != 0) {
    delete ctl_;
    ctl_ = nullptr;
    ::close(devfd_);
    devfd_ = -1;
    return 0;
  }
  for (unsigned i = 0; i < nq; ++i) {
    auto q = std::make_unique<Queue>();
    q->qid = i;
    queues_.push_back(std::move(q));
  }
  // kStartPerQueue workers per queue, rings made here: accepted only if all are ready.
  std::vector<std::unique_ptr<Worker>> made;
  for (auto& q : queues_) {
    for (int k = 0; k < kStartPerQueue; ++k) {
      auto w = std::make_unique<Worker>();
      w->q = q.get();
      if (!w->setup(payload_size_)) {
        queues_.clear();
        return 0;
      }
      made.push_back(std::move(w));
    }
  }
  for (auto& w : made) start_locked(std::move(w));
  have_rings_.store(true);
  return kInitFlag2;
}

void Uring::init_replied(bool ok) {
  MutexLock g(mu_);
  if (workers_.empty()) return;
  go_ = ok ? 1 : -1;
  active_.store(ok);
  cv_.notify_all();
}

void Uring::start_locked(std::unique_ptr<Worker> w) {
  Worker* p = w.get();
  ++p->q->count;
  workers_.push_back(std::move(w));
  p->thread = std::thread([this, p] { serve(*p); });
}

// A new worker for `q`, started while the queue serves.
void Uring::spawn(Queue& q) {
  auto w = std::make_unique<Worker>();
  w->q = &q;
  w->late = true;
  if (w->setup(payload_size_)) start_locked(std::move(w));
}

// A request on q's CPU that an entry of q serves and commits: the commit hands
// out what queued while no entry waited.
void Uring::kick(Queue& q) {
  std::thread([mp = mountpoint_, cpu = q.qid] {
    block_signals();
    pin_to(cpu);
    struct statfs st;
    (void)::statfs(mp.c_str(), &st);
  }).detach();
}

Uring::Worker* Uring::find(std::uint64_t unique) {
  MutexLock g(mu_);
  for (auto& w : workers_)
    if (w->unique.load(std::memory_order_acquire) == unique) return w.get();
  return nullptr;
}

void Uring::serve(Worker& w) {
  block_signals();
  pin_to(w.q->qid);
  Queue& q = *w.q;
  const int devfd = devfd_;
  {
    UniqueLock lk(mu_);
    cv_.wait(lk, [&] { return go_ != 0 || stopping_; });
    if (go_ < 0 || stopping_) return;
  }
  // REGISTER is done when io_uring_submit returns (the command then waits for a
  // request, which is its completion).
  if (!w.prep(devfd, kCmdRegister, 0) || io_uring_submit(&w.ring) != 1) return;
  if (q.idle.fetch_add(1) == 0 && w.late) kick(q);
  bool served = false;
  std::uint64_t commit = 0;
  for (;;) {
    int rc = io_uring_submit_and_wait(&w.ring, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) break;
    io_uring_cqe* cqe = nullptr;
    if (io_uring_peek_cqe(&w.ring, &cqe) != 0 || !cqe) continue;
    const std::uint64_t tag = cqe->user_data;
    const int res = cqe->res;
    io_uring_cqe_seen(&w.ring, cqe);
    if (tag == kStopTag) break;
    if (res < 0) {
      // ENOTCONN, ECONNABORTED: unmounted; anything else before a first request:
      // the kernel refused the ring and serves the mount through /dev/fuse.
      if (!served && res != -ENOTCONN && res != -ECONNABORTED && res != -ECANCELED) {
        std::fprintf(stderr, "ovlfs: FUSE over io_uring refused (%s); using /dev/fuse\n",
                     std::strerror(-res));
        active_.store(false);
      }
      break;
    }
    served = true;
    sched_tick();  // sched.hpp
    // A request: rebuild /dev/fuse's layout in front of the payload.
    InHeader in;
    std::memcpy(&in, w.hdr.in_out, sizeof in);
    const std::uint32_t psz = w.hdr.ent.payload_sz;
    commit = w.hdr.ent.commit_id;
    if (q.idle.fetch_sub(1) == 1) {  // none of the queue waits now: one more
      MutexLock g(mu_);
      if (!stopping_ && q.count < kMaxPerQueue) spawn(q);
    }
    if (in.len < sizeof in + psz || in.len - sizeof in - psz > sizeof w.hdr.op_in ||
        psz > payload_size_) {
      OutHeader out{sizeof(OutHeader), -EIO, in.unique};
      std::memcpy(w.hdr.in_out, &out, sizeof out);
      w.hdr.ent.payload_sz = 0;
    } else {
      const std::size_t opsz = in.len - sizeof in - psz;
      char* start = w.mem + kPrefix - sizeof in - opsz;
      std::memcpy(start, &in, sizeof in);
      std::memcpy(start + sizeof in, w.hdr.op_in, opsz);
      w.replied.store(kAwaiting, std::memory_order_relaxed);
      w.unique.store(in.unique, std::memory_order_release);
      tl_worker_ = &w;
      fuse_buf fb{};
      fb.mem = start;
      fb.size = in.len;
      {
        FdScope scope;  // the request's fds (host/fd_slot.hpp)
        fuse_session_process_buf(se_, &fb);
      }
      tl_worker_ = nullptr;
      bool abandoned = false;
      if (w.replied.load(std::memory_order_acquire) == kAwaiting) {
        if (in.opcode == kForget || in.opcode == kBatchForget || in.opcode == kInterrupt ||
            in.opcode == kNotifyReply) {
          OutHeader out{sizeof(OutHeader), 0, in.unique};
          std::memcpy(w.hdr.in_out, &out, sizeof out);
          w.hdr.ent.payload_sz = 0;
        } else {
          // Answered by another thread, until stop(): it sets stopping_ before it
          // looks at awaiting_other, this thread sets awaiting_other before it
          // looks at stopping_ (both seq_cst), so one of the two sees the other.
          w.awaiting_other.store(true);
          if (stopping_flag_.load()) {
            std::uint32_t want = kAwaiting;
            w.replied.compare_exchange_strong(want, kAbandoned);
          }
          w.replied.wait(kAwaiting, std::memory_order_acquire);
          w.awaiting_other.store(false);
          abandoned = w.replied.load(std::memory_order_acquire) == kAbandoned;
        }
      }
      w.unique.store(0, std::memory_order_relaxed);
      if (abandoned) break;  // the session ended: no reply to commit
    }
    q.idle.fetch_add(1);
    if (!w.prep(devfd, kCmdCommitAndFetch, commit)) break;
  }
  q.idle.fetch_sub(1);
}

std::optional<ssize_t> Uring::reply(const struct iovec* iov, int count) {
  // Routed by the request it answers, not by active_: stop() clears that while
  // workers still serve, and their replies belong in their entries.
  if (!have_rings_.load(std::memory_order_relaxed) || count < 1 ||
      iov[0].iov_len < sizeof(OutHeader))
    return std::nullopt;
  OutHeader out;
  std::memcpy(&out, iov[0].iov_base, sizeof out);
  if (out.unique == 0) return std::nullopt;  // a notification
  Worker* w = tl_worker_;
  if (!w || w->unique.load(std::memory_order_relaxed) != out.unique) w = find(out.unique);
  if (!w) return std::nullopt;
  std::size_t total = iov[0].iov_len - sizeof out;
  for (int i = 1; i < count; ++i) total += iov[i].iov_len;
  const std::size_t whole = sizeof out + total;
  char* dst = w->mem + kPrefix;
  if (total > payload_size_) {
    out.error = -EIO;
    total = 0;
  } else {
    std::size_t at = 0;
    auto put = [&](const void* p, std::size_t n) {
      std::memmove(dst + at, p, n);  // a reply may point into its request
      at += n;
    };
    put(static_cast<const char*>(iov[0].iov_base) + sizeof out, iov[0].iov_len - sizeof out);
    for (int i = 1; i < count; ++i) put(iov[i].iov_base, iov[i].iov_len);
  }
  out.len = static_cast<std::uint32_t>(sizeof out + total);
  std::memcpy(w->hdr.in_out, &out, sizeof out);
  w->hdr.ent.payload_sz = static_cast<std::uint32_t>(total);
  if (w == tl_worker_) {
    w->replied.store(kReplied, std::memory_order_release);
  } else {
    // Another thread's reply: its worker waits, unless stop() abandoned the wait
    // (the entry stays allocated until ~Uring, so this write was harmless).
    std::uint32_t want = kAwaiting;
    if (w->replied.compare_exchange_strong(want, kReplied, std::memory_order_acq_rel))
      w->replied.notify_all();
  }
  return static_cast<ssize_t>(whole);
}

void Uring::stop() {
  std::vector<Worker*> all;
  {
    MutexLock g(mu_);
    if (stopping_) return;
    stopping_ = true;  // no worker is spawned from now on
    stopping_flag_.store(true);
    cv_.notify_all();
    for (auto& w : workers_) all.push_back(w.get());
  }
  active_.store(false);
  // A worker that waits for another thread's reply waits no more (see serve()).
  for (Worker* w : all) {
    if (!w->awaiting_other.load()) continue;
    std::uint32_t want = kAwaiting;
    if (w->replied.compare_exchange_strong(want, kAbandoned)) w->replied.notify_all();
  }
  // A worker still waiting in its ring for a request (the mount lives on: lazily
  // detached and in use, or the session ended by a signal) gets a message that
  // ends it. One that ended already (ENOTCONN at unmount) has its ring still
  // open, so the message always has somewhere to go; a message the kernel
  // refused is sent again.
  std::vector<Worker*> todo;
  for (Worker* w : all)
    if (w->ring_ok) todo.push_back(w);
  for (int attempt = 0; ctl_ && !todo.empty() && attempt < 100; ++attempt) {
    std::vector<Worker*> failed;
    std::size_t sent = 0;
    auto reap = [&](std::size_t n) {
      for (std::size_t i = 0; i < n; ++i) {
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(ctl_, &cqe) != 0 || !cqe) break;
        if (cqe->res < 0) failed.push_back(reinterpret_cast<Worker*>(cqe->user_data));
        io_uring_cqe_seen(ctl_, cqe);
      }
    };
    for (Worker* w : todo) {
      io_uring_sqe* sqe = io_uring_get_sqe(ctl_);
      if (!sqe) {
        const int n = io_uring_submit(ctl_);
        reap(n > 0 ? static_cast<std::size_t>(n) : 0);
        sent = 0;
        sqe = io_uring_get_sqe(ctl_);
        if (!sqe) {
          failed.push_back(w);
          continue;
        }
      }
      io_uring_prep_msg_ring(sqe, w->ring.ring_fd, 0, kStopTag, 0);
      io_uring_sqe_set_data(sqe, w);
      ++sent;
    }
    const int n = io_uring_submit(ctl_);
    reap(n > 0 ? static_cast<std::size_t>(n) : 0);
    if (n < 0 || static_cast<std::size_t>(n) < sent) {
      failed = todo;  // cannot tell which went: all again (a second message is harmless)
    }
    todo = std::move(failed);
    if (!todo.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (Worker* w : all) {
    if (w->thread.joinable()) w->thread.join();
  }
}

}  // namespace ovlfs
