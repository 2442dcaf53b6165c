// FaultyHost: a Host for unit tests that fails chosen calls with chosen errnos,
// deterministically, and counts every call. Everything else goes to the inner Host
// (usually a SysHost over a temporary directory).
//
//   SysHost sys;
//   FaultyHost host(sys);
//   host.inject(HostOp::sync_file_range, EIO);        // every call from now on
//   host.inject(HostOp::fsync, ENOSPC, /*times=*/1);   // only the next one
//   host.clear();
#pragma once

#include "base/lock.hpp"

#include "host/forwarding_host.hpp"

namespace ovlfs {

class FaultyHost : public ForwardingHost {
 public:
  using ForwardingHost::ForwardingHost;

  // From now on, fail `op` with `err`: `times` calls (-1: every call), after
  // letting `skip` calls through.
  void inject(HostOp op, int err, int times = -1, int skip = 0) {
    MutexLock g(mu_);
    rules_[index(op)] = Rule{err, times, skip};
  }
  void clear(HostOp op) {
    MutexLock g(mu_);
    rules_[index(op)] = Rule{};
  }
  void clear() {
    MutexLock g(mu_);
    rules_.fill(Rule{});
  }
  // Calls made (failed ones included) since construction.
  std::uint64_t calls(HostOp op) const override {
    MutexLock g(mu_);
    return counts_[index(op)];
  }

  int intercept(HostOp op) override {
    MutexLock g(mu_);
    ++counts_[index(op)];
    Rule& r = rules_[index(op)];
    if (r.err == 0 || r.times == 0) return 0;
    if (r.skip > 0) {
      --r.skip;
      return 0;
    }
    if (r.times > 0) --r.times;
    return r.err;
  }

 private:
  struct Rule {
    int err = 0;
    int times = 0;
    int skip = 0;
  };
  static std::size_t index(HostOp op) { return static_cast<std::size_t>(op); }

  mutable Mutex<LockRank::kFaultHost> mu_;
  std::array<Rule, kHostOps> rules_{};            // GUARDED_BY(mu_)
  std::array<std::uint64_t, kHostOps> counts_{};  // GUARDED_BY(mu_)
};

}  // namespace ovlfs
