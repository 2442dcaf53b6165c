// The test instance of basic_errseq's Atomic parameter: a word whose every
// load and compare-exchange is one scheduled step (scheduler::step()), and
// is shown to an observer that records the history. It also gives each
// logical thread its own guess slot (the production code keeps one per OS
// thread, and here every logical thread runs on the same OS thread): the
// observer owns the slots, fresh for every execution, so that an execution
// depends only on its schedule.

#pragma once

#include <atomic>
#include <cstdint>

#include "ovlfs/errseq.hpp"
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
  // The guess slot (an errseq_guess<Word> of the execution's Word) of the
  // logical thread whose operation is running.
  virtual void* guess_slot() = 0;
  // Mutant switch: when true, a load returns the running thread's guess
  // instead of the word whenever the guess is about this word, as an
  // errseq that decided from its guess without reading the word would.
  virtual bool load_returns_guess() { return false; }
};

// The observer of the execution in progress (the model check runs on one OS
// thread; fibers take turns).
inline step_observer* observer = nullptr;

// What names the model word in a guess slot (there is one word per
// execution).
inline const char model_word_key = 0;

template <class Word>
class model_atomic {
 public:
  static constexpr bool is_always_lock_free = true;

  constexpr explicit model_atomic(Word value) noexcept : value_(value) {}

  // basic_errseq's guess slot: the running logical thread's. Reading and
  // writing it is not a step: no other thread sees it.
  static errseq_guess<Word>& errseq_guess_slot() noexcept {
    if (observer != nullptr)
      return *static_cast<errseq_guess<Word>*>(observer->guess_slot());
    static errseq_guess<Word> outside;  // calls outside an execution
    return outside;
  }
  const void* address() const noexcept { return &model_word_key; }

  Word load(std::memory_order) const noexcept {
    scheduler::step();
    const Word v = value_;
    if (observer != nullptr) observer->on_step({false, true, v, v});
    if (observer != nullptr && observer->load_returns_guess()) {
      const errseq_guess<Word>& g = errseq_guess_slot();
      if (g.key == reinterpret_cast<std::uintptr_t>(address())) return g.word;
    }
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
