// The model check: every interleaving of each scenario below, run with the
// production include/ovlfs/errseq.hpp on a model_atomic word, checked against
// SPEC.md 1.3 (see checker.hpp). Then again with every thread's guess slot
// primed with values left from elsewhere (a guess must never change a
// result). Then the mutants, each of which must be caught by at least one
// scenario.

#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

#include "checker.hpp"

namespace {

using namespace ovlfs::model;
using ovlfs::errseq_rules;

// ---- scenarios ---------------------------------------------------------------
// tN is logical thread N. Every thread starts with cursor 0 (a watcher that
// joined before any error). Setup and epilogue steps run alone.

const op cav = check_and_advance();

std::vector<scenario> scenarios() {
  return {
      // Three threads.
      {"{set | check_and_advance | peek}",
       {{0, set(5)}},  // an unseen error: t1 will report it
       {{set(5), set(7)}, {cav, cav}, {peek(), check(), check()}, {}},
       {{1, cav}, {2, check()}, {3, sample()}, {3, cav}},
       {2}},
      {"{sample then check_and_advance | set | set}",
       {{3, set(7)}, {3, cav}},  // an error already seen
       {{sample(), cav, cav}, {set(5)}, {set(5), set(7)}, {}},
       {{0, cav}, {3, cav}},
       {}},
      {"{peek | check_and_advance | sample then check_and_advance}",
       {{3, set(5)}},  // unseen
       {{peek(), check(), peek()}, {cav, cav}, {sample(), cav}, {}},
       {{3, set(5)}, {0, check()}, {1, cav}, {2, cav}, {3, sample()}, {3, cav}},
       {0}},
      {"{set | set | check_and_advance}",
       {{2, set(5)}, {2, cav}},
       {{set(5), set(5)}, {set(7)}, {cav, cav, cav}, {}},
       {{2, cav}, {3, sample()}, {3, cav}},
       {}},
      {"{set | sample then check_and_advance | peek}",
       {},
       {{set(5), set(5)}, {sample(), cav, cav}, {peek(), check()}},
       {{1, cav}, {2, check()}},
       {2}},
      // Four threads, one of each kind of caller.
      {"{set | check_and_advance | peek | sample then check_and_advance}",
       {{0, set(5)}},
       {{set(5)}, {cav}, {peek(), check()}, {sample(), cav}},
       {{0, sample()}, {0, cav}, {1, cav}, {2, check()}},
       {2}},
      // Two threads.
      {"{check_and_advance | peek}",
       {{2, set(5)}},
       {{cav}, {peek()}, {}},
       {{2, sample()}, {2, cav}, {0, cav}},
       {1}},
      {"{check_and_advance x2 | check_and_advance x2}",
       {{2, set(5)}},
       {{cav, cav}, {cav, cav}, {}},
       {{2, sample()}, {2, cav}},
       {}},
      {"{set x3 | peek, check x3}",
       {{0, set(5)}},
       {{set(5), set(5), set(7)}, {peek(), check(), check(), check()}},
       {{1, check()}},
       {}},
      {"{sample then check_and_advance x2 | set x3}",
       {},
       {{sample(), cav, cav}, {set(5), set(5), set(7)}},
       {{0, cav}},
       {}},
      {"{sample then check_and_advance | check_and_advance x2}",
       {{2, set(5)}},
       {{sample(), cav}, {cav, cav}, {}},
       {{2, sample()}, {2, cav}},
       {}},
  };
}

// Explores one scenario (and, for P4, the same without its peekers).
// A mutant's run stops at the first violating interleaving.
template <class Word, class Rules = errseq_rules<Word>>
outcome explore_scenario(const scenario& sc, bool kernel_cas = false,
                         bool stop_at_violation = false,
                         guess_start<Word> start = {}) {
  outcome allowed;
  if (!sc.peekers.empty())
    allowed = explore<Word, Rules>(without_peekers(sc), kernel_cas, nullptr,
                                   false, start);
  return explore<Word, Rules>(sc, kernel_cas, sc.peekers.empty() ? nullptr : &allowed,
                              stop_at_violation, start);
}

// Every scenario, every interleaving, the guess slots starting as `start`
// says.
template <class Word>
void expect_all_hold(guess_start<Word> start = {}) {
  std::uint64_t total = 0, guessed_ok = 0, guessed_failed = 0;
  if (start.how == guess_start<Word>::primed)
    std::printf("  guesses primed with %s\n", hex(start.value).c_str());
  if (start.how == guess_start<Word>::never)
    std::printf("  no guesses: every write loads first\n");
  for (const scenario& sc : scenarios()) {
    const outcome o = explore_scenario<Word>(sc, false, false, start);
    total += o.interleavings;
    guessed_ok += o.guessed_ok;
    guessed_failed += o.guessed_failed;
    std::printf("  %-66s %7llu interleavings, %llu violating\n", sc.name.c_str(),
                static_cast<unsigned long long>(o.interleavings),
                static_cast<unsigned long long>(o.violating));
    EXPECT_EQ(o.violating, 0u) << sc.name << "\n" << o.first_counterexample;
  }
  std::printf("  %-66s %7llu interleavings\n", "total",
              static_cast<unsigned long long>(total));
  std::printf("  operations that started with a compare-exchange from a guess: "
              "%llu right, %llu wrong\n",
              static_cast<unsigned long long>(guessed_ok),
              static_cast<unsigned long long>(guessed_failed));
  if (start.how == guess_start<Word>::never) {
    EXPECT_EQ(guessed_ok + guessed_failed, 0u);
  } else {  // both outcomes of a guess were explored
    EXPECT_GT(guessed_ok, 0u);
    EXPECT_GT(guessed_failed, 0u);
  }
}

TEST(errseq_model, every_interleaving_32) { expect_all_hold<std::uint32_t>(); }
TEST(errseq_model, every_interleaving_64) { expect_all_hold<std::uint64_t>(); }

// The load-first code alone, as a thread runs it on a word its guess is not
// about (and as it ran before writes started from a guess).
TEST(errseq_model, every_interleaving_without_guesses_32) {
  expect_all_hold<std::uint32_t>({guess_start<std::uint32_t>::never});
}
TEST(errseq_model, every_interleaving_without_guesses_64) {
  expect_all_hold<std::uint64_t>({guess_start<std::uint64_t>::never});
}

// Guesses left from anywhere: the never-failed word; errno 5 and 7 as set()
// leaves them, as peek() and check_and_advance() leave them; and words the
// scenarios never reach (another counter). Some equal a value the word takes
// later, so a stale guess can be right again.
template <class Word>
void expect_all_hold_primed() {
  using R = errseq_rules<Word>;
  for (const Word prime : {Word{0}, Word{5}, Word{R::mustinc | 5u},
                           Word{R::seen | R::mustinc | 5u}, Word{R::seen | 7u},
                           Word{R::counter_one | R::mustinc | 7u},
                           Word{R::counter_one * 9u | 5u}})
    expect_all_hold<Word>({guess_start<Word>::primed, prime});
}

TEST(errseq_model, every_interleaving_with_stale_guesses_32) {
  expect_all_hold_primed<std::uint32_t>();
}
TEST(errseq_model, every_interleaving_with_stale_guesses_64) {
  expect_all_hold_primed<std::uint64_t>();
}

// ---- mutants -----------------------------------------------------------------
// Each replaces one decision of the production code; the model check must
// find a violation.

template <class Word>
struct peek_sets_seen : errseq_rules<Word> {
  using base = errseq_rules<Word>;
  static constexpr Word after_peek(Word old) noexcept {
    return old == 0 ? old : old | base::seen | base::mustinc;
  }
};

template <class Word>
struct set_never_bumps : errseq_rules<Word> {
  using base = errseq_rules<Word>;
  static constexpr Word after_set(Word old, int err) noexcept {
    return (old & base::counter_mask) | static_cast<Word>(err);
  }
};

template <class Word>
struct check_compares_flags : errseq_rules<Word> {
  static constexpr bool same_error(Word cur, Word since) noexcept {
    return cur == since;
  }
};

// Two more, beyond the four the issue names: they show that P5 and the peek
// half of P1 can fail too.
template <class Word>
struct set_always_bumps : errseq_rules<Word> {
  using base = errseq_rules<Word>;
  static constexpr Word after_set(Word old, int err) noexcept {
    return ((old & base::counter_mask) + base::counter_one) | static_cast<Word>(err);
  }
};

template <class Word>
struct peek_without_mustinc : errseq_rules<Word> {
  static constexpr Word after_peek(Word old) noexcept { return old; }
};

// Runs every scenario against a mutant, each up to its first violating
// interleaving; prints where and by which properties it was caught, and the
// counterexample from the scenario with the fewest operations. Returns the
// number of scenarios that caught it.
template <class Word, class Rules>
std::uint64_t hunt(const char* mutant, bool kernel_cas = false,
                   guess_start<Word> start = {}) {
  std::uint64_t caught_in = 0;
  std::size_t smallest = 0;  // operations in the scenario of the example
  std::uint64_t soonest = 0;
  std::string example;
  std::printf("  mutant: %s\n", mutant);
  for (const scenario& sc : scenarios()) {
    const outcome o =
        explore_scenario<Word, Rules>(sc, kernel_cas, true, start);
    if (o.violating == 0) continue;
    ++caught_in;
    std::size_t size = sc.setup.size() + sc.epilogue.size();
    for (const auto& t : sc.threads) size += t.size();
    if (soonest == 0 || size < smallest || (size == smallest && o.interleavings < soonest)) {
      smallest = size;
      soonest = o.interleavings;
      example = "    counterexample in " + sc.name + ":\n" + o.first_counterexample;
    }
    std::string props;
    for (int p = 0; p < property_count; ++p)
      if (o.by_property[p] != 0)
        props += std::string(props.empty() ? "" : ", ") +
                 property_name(static_cast<property>(p));
    std::printf("    caught in %-58s at interleaving %5llu (%s)\n", sc.name.c_str(),
                static_cast<unsigned long long>(o.interleavings), props.c_str());
  }
  std::printf("%s", example.c_str());
  return caught_in;
}

TEST(errseq_model_mutant, check_and_advance_without_the_mustinc_retry) {
  // The compare-exchange in check_and_advance reports success when it failed,
  // like lib/errseq.c's one-shot cmpxchg whose outcome is ignored.
  EXPECT_GT((hunt<std::uint32_t, errseq_rules<std::uint32_t>>(
                "check_and_advance without the retry", true)),
            0u);
}

TEST(errseq_model_mutant, peek_that_sets_seen) {
  EXPECT_GT((hunt<std::uint32_t, peek_sets_seen<std::uint32_t>>("peek that sets SEEN")),
            0u);
}

TEST(errseq_model_mutant, set_that_never_bumps_the_counter) {
  EXPECT_GT((hunt<std::uint32_t, set_never_bumps<std::uint32_t>>(
                "set that never bumps the counter")),
            0u);
}

TEST(errseq_model_mutant, check_that_compares_flag_bits) {
  EXPECT_GT((hunt<std::uint32_t, check_compares_flags<std::uint32_t>>(
                "check that compares flag bits")),
            0u);
}

}  // namespace

namespace {

TEST(errseq_model_mutant, operations_that_trust_their_guess) {
  // Every load of the word returns the thread's guess when it has one for
  // the word: operations decide from the guess what only the word can tell
  // (nothing to write, nothing new), the way a CAS-first write would if it
  // skipped the load on its read-only paths. Guesses start out empty, as in
  // every_interleaving.
  EXPECT_GT((hunt<std::uint32_t, errseq_rules<std::uint32_t>>(
                "operations that trust their guess", false,
                {guess_start<std::uint32_t>::empty, 0, true})),
            0u);
}

TEST(errseq_model_mutant, set_that_always_bumps_the_counter) {
  EXPECT_GT((hunt<std::uint32_t, set_always_bumps<std::uint32_t>>(
                "set that bumps the counter even when nobody looked")),
            0u);
}

TEST(errseq_model_mutant, peek_that_does_not_set_mustinc) {
  EXPECT_GT((hunt<std::uint32_t, peek_without_mustinc<std::uint32_t>>(
                "peek that does not set MUSTINC")),
            0u);
}

}  // namespace
