// The test instance of basic_errseq's Atomic parameter: a word whose every
// load and compare-exchange is one scheduled step (scheduler::step()), and
// is shown to an observer that records the history.

#pragma once

#include <atomic>
#include <cstdint>

#include "scheduler.hpp"

namespace ovlfs::model {

struct step_event {
  bool is_cas;
  bool ok;              // loads are always ok
  std::uint64_t before;  // the word before the step
  std::uint64_t after;   // the word after it
};

class step_observer {
 public:
  virtual ~step_observer() = default;
  virtual void on_step(const step_event& e) = 0;
  // Mutant switch: when true, a compare-exchange that failed returns true
  // without writing, as a caller that ignores the outcome of a one-shot
  // cmpxchg behaves (lib/errseq.c's errseq_check_and_advance).
  virtual bool failed_cas_claims_success() { return false; }
};

// The observer of the execution in progress (the model check runs on one OS
// thread; fibers take turns).
inline step_observer* observer = nullptr;

template <class Word>
class model_atomic {
 public:
  static constexpr bool is_always_lock_free = true;

  constexpr explicit model_atomic(Word value) noexcept : value_(value) {}

  Word load(std::memory_order) const noexcept {
    scheduler::step();
    const Word v = value_;
    if (observer != nullptr) observer->on_step({false, true, v, v});
    return v;
  }

  bool compare_exchange_strong(Word& expected, Word desired, std::memory_order,
                               std::memory_order) noexcept {
    scheduler::step();
    const Word before = value_;
    if (before == expected) {
      value_ = desired;
      if (observer != nullptr) observer->on_step({true, true, before, desired});
      return true;
    }
    if (observer != nullptr) observer->on_step({true, false, before, before});
    if (observer != nullptr && observer->failed_cas_claims_success()) return true;
    expected = before;
    return false;
  }

 private:
  Word value_;  // plain: only one fiber runs at a time
};

}  // namespace ovlfs::model
