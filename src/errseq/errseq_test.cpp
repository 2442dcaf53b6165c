// Unit tests of ovlfs/errseq.hpp: layout, each operation's contract, the
// rejection of bad errno values, the one-load fast paths, writes that start
// with the compare-exchange from the thread's guess (and stale or garbage
// guesses), counter wrap, and a word shared between two processes.

#include "ovlfs/errseq.hpp"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <random>

namespace {

using ovlfs::errseq_rules;

// ---- layout --------------------------------------------------------------

using rules32 = errseq_rules<std::uint32_t>;
using rules64 = errseq_rules<std::uint64_t>;

// SPEC 1.1: errno bits 0-11, SEEN 12, MUSTINC 13, counter from 14.
static_assert(rules32::errno_mask == 0x00000fffu);
static_assert(rules32::seen == 0x00001000u);  // lib/errseq.c's ERRSEQ_SEEN
static_assert(rules32::mustinc == 0x00002000u);
static_assert(rules32::counter_mask == 0xffffc000u);
static_assert(rules64::counter_mask == 0xffffffffffffc000u);
static_assert(rules32::errno_of(rules32::seen | rules32::mustinc | 4095u) == 4095);
// The 32-bit counter wraps after 2^18 bumps; the word stays non-zero.
static_assert(rules32::after_set(0xffffc000u | rules32::mustinc, 5) == 5u);
static_assert(rules64::after_set(rules64::mustinc | 7u, 5) ==
              (rules64::counter_one | 5u));
static_assert(rules32::after_peek(0) == 0);

static_assert(ovlfs::errseq32::valid_errno(1) &&
              ovlfs::errseq32::valid_errno(4095));
static_assert(!ovlfs::errseq32::valid_errno(0) &&
              !ovlfs::errseq32::valid_errno(-5) &&
              !ovlfs::errseq32::valid_errno(4096));

// ---- a word whose every access is counted --------------------------------

struct access_counts {
  int loads = 0;
  int cases = 0;
  int failed_cases = 0;
};
access_counts counts;

// An atomic-like reference to a plain word (single-threaded tests only) that
// counts loads and compare-exchanges.
template <class Word>
class counting_ref {
 public:
  static constexpr bool is_always_lock_free = true;
  explicit counting_ref(Word& word) noexcept : word_(&word) {}
  Word load(std::memory_order) const noexcept {
    ++counts.loads;
    return *word_;
  }
  bool compare_exchange_strong(Word& expected, Word desired, std::memory_order,
                               std::memory_order) noexcept {
    ++counts.cases;
    if (*word_ == expected) {
      *word_ = desired;
      return true;
    }
    expected = *word_;
    ++counts.failed_cases;
    return false;
  }

 private:
  Word* word_;
};

// This thread's guess slot for words of type Word.
template <class Word>
ovlfs::errseq_guess<Word>& guess() {
  return ovlfs::errseq_detail::thread_guess<Word>;
}

// Starts with no guess (an earlier test may have left one for a word that
// lived at the same address).
template <class Word>
struct counted {
  using errseq = ovlfs::basic_errseq<Word, counting_ref<Word>>;
  using rules = errseq_rules<Word>;
  Word word = 0;
  errseq e{word};
  counted() {
    counts = {};
    guess<Word>() = {};
  }
  access_counts reset() {
    const access_counts before = counts;
    counts = {};
    return before;
  }
  // Runs op and expects exactly `loads` loads and `cases` compare-exchanges.
  template <class Op>
  void expect_accesses(Op op, int loads, int cases, const char* what) {
    reset();
    op();
    const access_counts n = reset();
    EXPECT_EQ(n.loads, loads) << what;
    EXPECT_EQ(n.cases, cases) << what;
  }
  // What names this word in the guess slot: the address of the Atomic, the
  // only member of a standard-layout basic_errseq.
  std::uintptr_t key() const {
    static_assert(std::is_standard_layout_v<errseq>);
    return reinterpret_cast<std::uintptr_t>(&e);
  }
};

template <class Word>
class errseq_unit : public ::testing::Test {};
using word_types = ::testing::Types<std::uint32_t, std::uint64_t>;
TYPED_TEST_SUITE(errseq_unit, word_types);

TYPED_TEST(errseq_unit, zero_means_never_failed) {
  counted<TypeParam> c;
  TypeParam since = c.e.sample();
  EXPECT_EQ(since, 0u);
  EXPECT_EQ(c.e.peek(), 0u);
  EXPECT_EQ(c.e.check(0), 0);
  EXPECT_EQ(c.e.check_and_advance(since), 0);
  EXPECT_EQ(c.word, 0u) << "looking at a never-failed word must not mark it";
  EXPECT_EQ(c.reset().cases, 0);
}

TYPED_TEST(errseq_unit, set_records_errno_and_clears_flags) {
  using R = errseq_rules<TypeParam>;
  counted<TypeParam> c;
  EXPECT_EQ(c.e.set(5), TypeParam{5});
  EXPECT_EQ(c.word, TypeParam{5}) << "first error: counter 0, no flags";
  EXPECT_EQ(c.e.check(0), 5);
  TypeParam since = 0;
  EXPECT_EQ(c.e.check_and_advance(since), 5);
  EXPECT_EQ(c.word, R::seen | R::mustinc | 5u);
  EXPECT_EQ(since, c.word);
  EXPECT_EQ(c.e.set(7), R::counter_one | 7u) << "MUSTINC set: bump, clear";
  EXPECT_EQ(c.word, R::counter_one | 7u);
}

TYPED_TEST(errseq_unit, rejects_bad_errno_without_touching_the_word) {
  using R = errseq_rules<TypeParam>;
  counted<TypeParam> c;
  c.word = R::counter_one * 3 | R::mustinc | 9u;
  const TypeParam before = c.word;
  c.reset();
  for (int bad : {0, -1, -5, -4095, 4096, 65535, INT_MAX, INT_MIN}) {
    EXPECT_FALSE(c.e.valid_errno(bad)) << bad;
    EXPECT_EQ(c.e.set(bad), 0u) << "set(" << bad << ") must say rejected";
    EXPECT_EQ(c.word, before) << bad;
  }
  const access_counts n = c.reset();
  EXPECT_EQ(n.loads, 0) << "a rejected set() must not even read the word";
  EXPECT_EQ(n.cases, 0);
  EXPECT_EQ(c.e.set(4095), R::counter_one * 4 | 4095u) << "the largest errno";
  EXPECT_EQ(c.e.set(1), R::counter_one * 4 | 1u) << "no looker: no bump";
}

TYPED_TEST(errseq_unit, same_errno_without_a_looker_changes_nothing) {
  counted<TypeParam> c;
  c.e.set(5);
  c.reset();
  EXPECT_EQ(c.e.set(5), TypeParam{5});
  const access_counts n = c.reset();
  EXPECT_EQ(n.loads, 1);
  EXPECT_EQ(n.cases, 0) << "nothing would change, so nothing is written";
  EXPECT_EQ(c.e.set(6), TypeParam{6}) << "new errno, no looker: no bump";
}

TYPED_TEST(errseq_unit, peek_sets_mustinc_but_not_seen) {
  using R = errseq_rules<TypeParam>;
  counted<TypeParam> c;
  c.e.set(5);
  const TypeParam p = c.e.peek();
  EXPECT_EQ(p, R::mustinc | 5u);
  EXPECT_EQ(c.word, p);
  EXPECT_EQ(c.e.sample(), 0u) << "a peek must not hide the unseen error";
  EXPECT_EQ(c.e.check(p), 0);
}

TYPED_TEST(errseq_unit, peek_cursor_sees_a_later_error_with_the_same_errno) {
  counted<TypeParam> c;
  c.e.set(5);
  const TypeParam p = c.e.peek();
  c.e.set(5);
  EXPECT_EQ(c.e.check(p), 5);
  EXPECT_EQ(c.e.check(p), 5) << "check() does not advance";
  EXPECT_EQ(errseq_rules<TypeParam>::counter_of(c.word), 1u);
}

TYPED_TEST(errseq_unit, sample_reports_unseen_errors_and_skips_seen_ones) {
  counted<TypeParam> c;
  c.e.set(5);
  TypeParam first = c.e.sample();
  EXPECT_EQ(first, 0u) << "unseen error: a new watcher starts before it";
  EXPECT_EQ(c.e.check_and_advance(first), 5);
  TypeParam second = c.e.sample();
  EXPECT_NE(second, 0u);
  EXPECT_EQ(c.e.check_and_advance(second), 0) << "seen error: not reported";
  c.e.set(5);
  EXPECT_EQ(c.e.check_and_advance(second), 5);
  EXPECT_EQ(c.e.check_and_advance(first), 5);
}

TYPED_TEST(errseq_unit, check_and_advance_reports_once_per_cursor) {
  counted<TypeParam> c;
  TypeParam a = c.e.sample();
  TypeParam b = c.e.sample();
  c.e.set(5);
  c.e.set(7);  // nobody looked in between: coalesces with set(5)
  EXPECT_EQ(c.e.check_and_advance(a), 7);
  EXPECT_EQ(c.e.check_and_advance(a), 0);
  EXPECT_EQ(c.e.check_and_advance(b), 7) << "each cursor reports once";
  EXPECT_EQ(c.e.check_and_advance(b), 0);
  c.e.set(7);
  EXPECT_EQ(c.e.check_and_advance(a), 7);
  EXPECT_EQ(c.e.check_and_advance(b), 7);
}

TYPED_TEST(errseq_unit, cursors_ignore_flag_bits) {
  counted<TypeParam> c;
  c.e.set(5);
  TypeParam p = c.e.peek();
  TypeParam w = 0;
  c.e.check_and_advance(w);  // sets SEEN: the word now differs from p in a flag
  EXPECT_EQ(c.e.check(p), 0);
  EXPECT_EQ(c.e.check_and_advance(p), 0);
}

TYPED_TEST(errseq_unit, fast_paths_are_one_load) {
  counted<TypeParam> c;
  c.e.set(5);
  TypeParam since = 0;
  c.e.check_and_advance(since);  // the word is now 5|SEEN|MUSTINC
  TypeParam late = 0;
  auto one_load = [&c](auto op, const char* what) { c.expect_accesses(op, 1, 0, what); };
  one_load([&] { EXPECT_EQ(c.e.check(since), 0); }, "check");
  one_load([&] { EXPECT_EQ(c.e.check_and_advance(since), 0); },
           "check_and_advance, nothing new");
  one_load([&] { EXPECT_EQ(c.e.check_and_advance(late), 5); },
           "check_and_advance, error already SEEN and MUSTINC");
  one_load([&] { EXPECT_EQ(c.e.peek(), c.word); }, "peek, MUSTINC already set");
  one_load([&] { EXPECT_EQ(c.e.sample(), c.word); }, "sample, MUSTINC already set");
}

// The write paths, once this thread's guess is right (it wrote the word
// last): one compare-exchange, no load.
TYPED_TEST(errseq_unit, writes_after_own_writes_are_one_compare_exchange) {
  using R = errseq_rules<TypeParam>;
  counted<TypeParam> c;
  auto one_cas = [&c](auto op, const char* what) { c.expect_accesses(op, 0, 1, what); };
  c.e.set(5);  // no guess yet: load, then compare-exchange
  EXPECT_EQ(c.reset().loads, 1);
  EXPECT_EQ(guess<TypeParam>().key, c.key());
  EXPECT_EQ(guess<TypeParam>().word, TypeParam{5});
  one_cas([&] { EXPECT_EQ(c.e.set(6), TypeParam{6}); }, "set, another errno");
  one_cas([&] { EXPECT_EQ(c.e.peek(), R::mustinc | 6u); },
          "peek marks MUSTINC");
  one_cas([&] { EXPECT_EQ(c.e.set(6), R::counter_one | 6u); },
          "set after a peek: bump");
  TypeParam since = 0;
  one_cas([&] { EXPECT_EQ(c.e.check_and_advance(since), 6); },
          "check_and_advance reports");
  EXPECT_EQ(since, R::counter_one | R::seen | R::mustinc | 6u);
  EXPECT_EQ(c.word, since);
  one_cas([&] { EXPECT_EQ(c.e.set(7), R::counter_one * 2 | 7u); },
          "set after a report: bump");
}

// Someone else changed the word since this thread's guess: a write that
// trusted the guess enough to try costs one failed compare-exchange (which
// read the word), then goes on from what it read; a call that the guess
// says has nothing to write loads, as without a guess.
TYPED_TEST(errseq_unit, stale_guesses_cost_a_failed_compare_exchange) {
  using R = errseq_rules<TypeParam>;
  counted<TypeParam> c;
  c.e.set(5);
  c.word = R::mustinc | 5u;  // another process peeked
  c.reset();
  EXPECT_EQ(c.e.peek(), R::mustinc | 5u);
  access_counts n = c.reset();
  EXPECT_EQ(n.loads, 0);
  EXPECT_EQ(n.cases, 1) << "the failed compare-exchange found MUSTINC set";
  EXPECT_EQ(c.word, R::mustinc | 5u);
  EXPECT_EQ(guess<TypeParam>().word, R::mustinc | 5u) << "the guess learnt it";
  EXPECT_EQ(c.e.peek(), R::mustinc | 5u);
  n = c.reset();
  EXPECT_EQ(n.loads, 1) << "now the guess is right: one load";
  EXPECT_EQ(n.cases, 0);

  c.word = R::counter_one | 7u;  // another process set 7 (a peek was there)
  EXPECT_EQ(c.e.set(5), R::counter_one | 5u) << "no bump: nobody looked at 7";
  n = c.reset();
  EXPECT_EQ(n.loads, 0);
  EXPECT_EQ(n.cases, 2) << "one failed (the read), one wrote";

  guess<TypeParam>().word = R::counter_one | 5u;  // guess: nothing to write
  c.word = R::counter_one | R::mustinc | 5u;      // but someone peeked
  EXPECT_EQ(c.e.set(5), R::counter_one * 2 | 5u) << "the load saw MUSTINC";
  n = c.reset();
  EXPECT_EQ(n.loads, 1);
  EXPECT_EQ(n.cases, 1);

  TypeParam since = c.word;  // a cursor on the current error
  guess<TypeParam>().word = R::counter_one * 9 | 4u;  // guess: something new
  EXPECT_EQ(c.e.check_and_advance(since), 0)
      << "only the word says nothing new";
  n = c.reset();
  EXPECT_EQ(n.loads, 0);
  EXPECT_EQ(n.cases, 1);
  EXPECT_EQ(c.word, R::counter_one * 2 | 5u)
      << "a failed compare-exchange writes nothing";
}

// Whatever the guess slot holds, every result and every word is the one the
// same calls give without a guess: the same random calls on two words, one
// with garbage put in the guess before each call, one with the slot empty.
TYPED_TEST(errseq_unit, garbage_guesses_change_no_result) {
  using Word = TypeParam;
  using R = errseq_rules<Word>;
  counted<Word> plain;
  counted<Word> guessed;
  std::mt19937_64 rng(42);
  const Word interesting[] = {0,
                              5,
                              7,
                              R::mustinc | 5u,
                              R::seen | R::mustinc | 5u,
                              R::seen | 7u,
                              R::counter_one | 5u,
                              R::counter_one | R::mustinc | 7u,
                              static_cast<Word>(~Word{0})};
  Word since_plain = 0, since_guessed = 0;
  int failed_guesses = 0;  // the guess was tried and was wrong
  for (int i = 0; i < 20000; ++i) {
    const unsigned op = static_cast<unsigned>(rng() % 5);
    const int err = (rng() % 2) ? 5 : 7;
    // Half the time a plausible value, else any bits; usually about this
    // word, sometimes about another.
    Word garbage = (rng() % 2) ? interesting[rng() % std::size(interesting)]
                               : static_cast<Word>(rng());
    if (rng() % 4 == 0) garbage = guessed.word;  // the right guess, too
    const bool other_word = rng() % 8 == 0;
    const bool new_watcher = rng() % 4 == 0;
    auto run = [&](counted<Word>& c, Word& since, bool with_guess) -> Word {
      guess<Word>() = {};
      if (with_guess)
        guess<Word>() = {other_word ? c.key() + 8 : c.key(), garbage};
      switch (op) {
        case 0: return c.e.set(err);
        case 1: return c.e.peek();
        case 2: return c.e.sample();
        case 3: return static_cast<Word>(c.e.check(since));
        default: {
          const Word r = static_cast<Word>(c.e.check_and_advance(since));
          if (new_watcher) since = c.e.sample();
          return r;
        }
      }
    };
    const Word r_plain = run(plain, since_plain, false);
    counts = {};
    const Word r_guessed = run(guessed, since_guessed, true);
    failed_guesses += counts.failed_cases;
    ASSERT_EQ(r_guessed, r_plain) << "call " << i << ", op " << op;
    ASSERT_EQ(guessed.word, plain.word) << "call " << i << ", op " << op;
    ASSERT_EQ(since_guessed, since_plain) << "call " << i;
  }
  EXPECT_GT(failed_guesses, 1000);
}

TEST(errseq_unit_32, counter_wraps_after_2_pow_18_bumps) {
  using R = rules32;
  std::uint32_t word = R::counter_mask | R::seen | R::mustinc | 5u;
  ovlfs::errseq32_ref e(word);
  std::uint32_t since = word;
  EXPECT_EQ(e.set(5), 5u) << "counter 2^18-1 + 1 wraps to 0";
  EXPECT_EQ(e.check(since), 5);
  std::uint32_t ancient = 5u;  // a cursor from 2^18 bumps ago
  EXPECT_EQ(e.check(ancient), 0) << "documented limit: a wrapped cursor misses";
}

TEST(errseq_unit_ref, works_in_place_over_a_plain_word) {
  alignas(ovlfs::errseq64_ref::required_alignment) std::uint64_t word = 0;
  ovlfs::errseq64_ref a(word);
  ovlfs::errseq64_ref b(word);  // a second handle on the same word
  std::uint64_t since = b.sample();
  a.set(28);
  EXPECT_EQ(b.check_and_advance(since), 28);
  EXPECT_EQ(word & 0xfff, 28u);
}

// A ref names the word it refers to, not itself, in the guess slot: refs
// made for each call (as ovlfs makes them) start from the same guess.
TEST(errseq_unit_ref, the_guess_is_about_the_referenced_word) {
  alignas(ovlfs::errseq64_ref::required_alignment) std::uint64_t word = 0;
  ovlfs::errseq64_ref(word).set(5);
  EXPECT_EQ(guess<std::uint64_t>().key,
            reinterpret_cast<std::uintptr_t>(&word));
  EXPECT_EQ(guess<std::uint64_t>().word, 5u);
  ovlfs::errseq64_ref(word).set(6);
  EXPECT_EQ(guess<std::uint64_t>().word, 6u);
  ovlfs::errseq64 owned;
  owned.set(7);
  EXPECT_EQ(guess<std::uint64_t>().key,
            reinterpret_cast<std::uintptr_t>(&owned));
  alignas(ovlfs::errseq32_ref::required_alignment) std::uint32_t word32 = 0;
  ovlfs::errseq32_ref(word32).set(9);
  EXPECT_EQ(guess<std::uint32_t>().key,
            reinterpret_cast<std::uintptr_t>(&word32));
  EXPECT_EQ(guess<std::uint64_t>().word, 7u) << "one slot per word type";
}

// A zero-filled MAP_SHARED word, attached by a parent and a forked child.
TEST(errseq_unit_shared, fork_and_map_shared) {
  void* map = mmap(nullptr, 4096, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(map, MAP_FAILED);
  auto* word = static_cast<std::uint64_t*>(map);
  ovlfs::errseq64_ref parent(*word);
  std::uint64_t since = parent.sample();
  std::uint64_t peeked = parent.peek();

  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ovlfs::errseq64_ref child(*word);  // attaches without writing
    std::uint64_t cursor = child.sample();
    child.set(5);
    const int seen = child.check_and_advance(cursor);
    _exit(seen == 5 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(parent.check(peeked), 5);
  EXPECT_EQ(parent.check_and_advance(since), 5);
  EXPECT_EQ(parent.sample(), *word) << "the child reported it: seen";
  munmap(map, 4096);
}

}  // namespace
