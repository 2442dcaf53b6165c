// Fd: a move-only owner of one file descriptor.
#pragma once

#include <unistd.h>

#include <utility>

#include "host/result.hpp"

namespace ovlfs {

class Fd {
 public:
  Fd() noexcept = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  ~Fd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }
  int release() noexcept { return std::exchange(fd_, -1); }

  // Closes, ignoring the result: for fds whose close cannot report data loss
  // (O_PATH, directories, read-only files).
  void reset() noexcept {
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  }

  // Closes and returns close(2)'s error: for fds whose close matters.
  Status close() noexcept {
    if (fd_ < 0) return {};
    if (::close(std::exchange(fd_, -1)) < 0) return fail_errno();
    return {};
  }

 private:
  int fd_ = -1;
};

}  // namespace ovlfs
