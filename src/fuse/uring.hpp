// FUSE over io_uring (Linux 6.14+) for libfuse 3.14, which has no API for it.
//
// Why: a request read from /dev/fuse wakes a daemon thread wherever the scheduler
// finds an idle CPU, mostly not the caller's, and the wake-up across CPUs is most
// of a round trip (a negative lookup here: 11 us, 4 us when caller and daemon
// share a CPU). With io_uring the kernel puts each request on the queue of the CPU
// the caller runs on, and that queue's threads are pinned to that CPU: the caller
// sleeps, the daemon thread runs on the same CPU, replies, and the caller runs on
// (7.5 us for ovlfs's lookup). The scheduler may still move the caller to an idle
// CPU when the reply wakes it, since the daemon thread is running at that moment.
//
// How: the kernel offers FUSE_OVER_IO_URING in INIT when the fuse module's
// enable_uring parameter is on; libfuse answers INIT on /dev/fuse, and Uring adds
// the flag to the reply (Passthrough's InitHook) only once it has a ring and a
// thread for every queue, since the kernel holds back every request after that
// reply until each queue (one per possible CPU) has a registered entry. Each
// thread owns one ring and registers one entry (a header and a payload buffer)
// with FUSE_IO_URING_CMD_REGISTER; a request arrives as that command's completion;
// the thread rebuilds it in /dev/fuse's layout in front of the payload (no copy of
// the data) and hands it to libfuse, whose reply (the session's custom writev)
// lands in the entry's buffers; the thread then sends COMMIT_AND_FETCH, which
// delivers the reply and waits for the next request in one step.
//
// A thread that serves a request is not waiting for the next, and the kernel
// hands a request only to a waiting entry of its CPU's queue (one thread per entry
// here, so a thread blocked in a layer holds up only its own request). Each queue
// starts with two threads; a thread that takes a request while no other thread of
// its queue waits starts one more (up to kMaxPerQueue), and a new thread that
// finds all the others busy sends a statfs from its CPU, since a request that
// queued meanwhile is handed out only when an entry of the queue commits.
//
// FORGET and INTERRUPT still come through /dev/fuse (the kernel sends them
// there), as do the requests before INIT's reply; notifications go there too.
//
// Ending. Every worker ends whatever state the transport is in, so that stop()
// always returns once the requests being served are done:
// - a worker waiting for a request ends on the completion the kernel gives it
//   at unmount (ENOTCONN), or on a message stop() posts to its ring (a lazily
//   unmounted mount still in use, a signal); the ring that sends those
//   messages is made with the others, so stop() needs nothing it could fail to get;
// - a worker serving a request gets its reply into its entry however the
//   transport changed meanwhile: a reply is routed by the request it answers,
//   never by whether the rings are still in use (a reply to a ring's request
//   written to /dev/fuse is lost, and its worker would wait for it for ever);
// - a worker whose request is answered by another thread waits for that reply
//   only until stop();
// - the rings use a /dev/fuse fd of their own, so that the session closing its
//   fd at unmount never leaves a worker committing to a closed (or reused) fd.
#pragma once

#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
#include <sys/types.h>
#include <sys/uio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "base/lock.hpp"
#include "fuse/passthrough.hpp"

struct io_uring;  // <liburing.h>

namespace ovlfs {

class Uring final : public InitHook {
 public:
  // FUSE_OVER_IO_URING, in INIT's flags2.
  static constexpr std::uint32_t kInitFlag2 = 1u << 9;
  static constexpr std::size_t kMaxPerQueue = 16;

  // `allowed`: the mount's options permit it; `mountpoint`: absolute, for the
  // statfs that hands out a queued request.
  Uring(fuse_session* se, bool allowed, std::string mountpoint);
  ~Uring() override;
  Uring(const Uring&) = delete;
  Uring& operator=(const Uring&) = delete;

  // Turns the fuse module's enable_uring on if it is off and this process may
  // (root). Returns a one-line note of what it did, or "" if nothing.
  static std::string enable_in_kernel();

  // InitHook: prepares the queues' threads and rings (accepting the flag only if
  // every one is ready), then starts them registering.
  std::uint32_t init_reply(std::uint32_t offered, std::uint32_t max_write,
                           std::uint32_t max_pages) override;
  void init_replied(bool ok) override;

  // A reply from libfuse (the session's writev): if it answers a request that came
  // through a ring, puts it in that entry and returns what writev returns, also
  // after stop(); std::nullopt for anything else (it goes to /dev/fuse).
  std::optional<ssize_t> reply(const struct iovec* iov, int count);

  // Whether requests come through the rings (INIT accepted it).
  bool active() const { return active_.load(std::memory_order_relaxed); }

  // After the session ended: stops and joins every thread (each finishes the
  // request it serves). Returns however the transport ended (unmounted, lazily
  // detached, a signal, the connection aborted). Idempotent.
  void stop();

 private:
  struct Queue;
  struct Worker;

  void start_locked(std::unique_ptr<Worker> w);  // REQUIRES(mu_)
  void spawn(Queue& q);                          // REQUIRES(mu_)
  void serve(Worker& w);
  void kick(Queue& q);
  Worker* find(std::uint64_t unique);

  static thread_local Worker* tl_worker_;  // the worker serving on this thread

  fuse_session* const se_;
  const bool allowed_;
  const std::string mountpoint_;
  std::size_t payload_size_ = 0;  // each entry's payload buffer
  std::atomic<bool> active_{false};
  // Rings were made (init_reply accepted them): replies may belong to an entry.
  std::atomic<bool> have_rings_{false};
  int devfd_ = -1;                // the rings' own /dev/fuse fd (a dup of the session's)
  ::io_uring* ctl_ = nullptr;  // sends the stop messages; made with the rings

  Mutex<LockRank::kUring> mu_;    // leaf lock
  CondVar cv_;                    // go_ changed
  int go_ = 0;                    // GUARDED_BY(mu_): 0 wait, 1 register, -1 end
  bool stopping_ = false;         // GUARDED_BY(mu_)
  std::atomic<bool> stopping_flag_{false};  // stopping_, for serve() without mu_
  std::vector<std::unique_ptr<Queue>> queues_;  // fixed once INIT is answered
  // GUARDED_BY(mu_): every worker; freed only by ~Uring, so that a reply that
  // another thread writes late never lands in freed memory.
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace ovlfs
