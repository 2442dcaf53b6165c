// Fds that an object keeps only while it is in use.
//
// An FdSlot holds at most one fd of a real object. Users take a reference to it
// (FdRef): the fd stays open while any reference lives. The slot's owner may empty
// the slot at any moment (retire) to keep the process under its fd limit: the fd
// closes when its last user lets go, and the next user opens the object again.
//
// Code that works with raw fds gets them through FdScope::hold: the reference is
// kept until the outermost FdScope on that thread ends (a request, one pass of a
// background thread), so a raw fd taken from a slot stays valid, and means the
// same file, for the whole request however the slot changes meanwhile.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <memory>
#include <vector>

#include "host/fd.hpp"

namespace ovlfs {

// One open fd, shared by a slot and its users; closed with the last reference.
class FdBox {
 public:
  explicit FdBox(Fd fd) noexcept : fd_(fd.release()) { live_.fetch_add(1, std::memory_order_relaxed); }
  ~FdBox() {
    ::close(fd_);
    live_.fetch_sub(1, std::memory_order_relaxed);
  }
  FdBox(const FdBox&) = delete;
  FdBox& operator=(const FdBox&) = delete;
  int get() const noexcept { return fd_; }
  // Slot fds open in this process (in slots, or retired and still in use).
  static std::size_t live() noexcept { return live_.load(std::memory_order_relaxed); }

 private:
  int fd_;
  static inline std::atomic<std::size_t> live_{0};
};

using FdRef = std::shared_ptr<FdBox>;

class FdSlot {
 public:
  FdSlot() = default;
  explicit FdSlot(Fd fd) { if (fd) p_.store(std::make_shared<FdBox>(std::move(fd))); }
  // Moves a slot nobody else can see yet (while an object is built).
  FdSlot(FdSlot&& o) noexcept : p_(o.p_.exchange(nullptr)) {}
  FdSlot& operator=(FdSlot&& o) noexcept {
    p_.store(o.p_.exchange(nullptr));
    return *this;
  }
  FdSlot(const FdSlot&) = delete;
  FdSlot& operator=(const FdSlot&) = delete;

  FdRef load() const noexcept { return p_.load(std::memory_order_acquire); }
  // Puts `fd` in the empty slot; if another fd got there first, that one stays
  // (and `fd` closes). Returns the slot's fd.
  FdRef install(Fd fd) {
    FdRef mine = std::make_shared<FdBox>(std::move(fd));
    FdRef expected;
    if (p_.compare_exchange_strong(expected, mine, std::memory_order_acq_rel)) return mine;
    return expected;
  }
  // Empties the slot: its fd closes once no user holds it (nor the caller the
  // reference returned).
  FdRef take() noexcept { return p_.exchange(nullptr, std::memory_order_acq_rel); }
  // Puts a taken fd back, unless the slot was filled again meanwhile.
  void put_back(FdRef r) noexcept {
    FdRef expected;
    (void)p_.compare_exchange_strong(expected, std::move(r), std::memory_order_acq_rel);
  }

 private:
  std::atomic<std::shared_ptr<FdBox>> p_;
};

// The references behind the raw fds used on this thread, kept until the
// outermost scope ends (with no lock held: what is let go of there may close fds
// and destroy objects). A thread with no scope keeps them until it exits.
class FdScope {
 public:
  FdScope() noexcept { ++depth_; }
  ~FdScope() {
    if (--depth_ == 0) {
      fds_.clear();
      later_.clear();
    }
  }
  FdScope(const FdScope&) = delete;
  FdScope& operator=(const FdScope&) = delete;

  // r's fd, open at least until this thread's outermost scope ends.
  static int hold(FdRef r) {
    const int fd = r->get();
    fds_.push_back(std::move(r));
    return fd;
  }
  // Lets go of `p` when this thread's outermost scope ends, not here.
  static void release_later(std::shared_ptr<void> p) { later_.push_back(std::move(p)); }

  // For a loop whose every turn takes fds of its own (a listing that looks up each
  // entry): mark() before a turn, release_to() once the turn's raw fds are no
  // longer used. Holds nothing else back: only fds close there.
  static std::size_t mark() noexcept { return fds_.size(); }
  static void release_to(std::size_t m) {
    if (fds_.size() > m) fds_.resize(m);
  }

 private:
  static inline thread_local int depth_ = 0;
  static inline thread_local std::vector<FdRef> fds_;
  static inline thread_local std::vector<std::shared_ptr<void>> later_;
};

}  // namespace ovlfs
