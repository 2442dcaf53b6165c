// errseq_bench: the cost of each errseq operation beside the physical limits
// on the same machine, in the same run: a bare atomic load and a bare
// compare-exchange on the same kind of word, and beside a mutex-guarded
// implementation of the same semantics.
//
// Every benchmark states which path of the operation it measures. An
// operation's slow path needs the word to change under it (peek marks
// MUSTINC once per error, check_and_advance reports once per error), so
// those are measured as a cycle with a set() in front, each step writing the
// word; run/table.py subtracts the set() alone. A write starts with the
// compare-exchange from the thread's guess (errseq.hpp); with one thread on
// one word the guess is right, and set_two_words measures the writes whose
// guess is about another word (load, then compare-exchange).
//
// Each runs with 1 thread (uncontended) and 2 threads on the same word.
// See bench/errseq/run for the command that makes BENCHMARKS.md's table.

#include <benchmark/benchmark.h>

#include <atomic>
#include <cstdint>
#include <mutex>

#include "ovlfs/errseq.hpp"

namespace {

template <class Word>
using rules = ovlfs::errseq_rules<Word>;

// The same semantics under a mutex: the baseline a lock-free word must beat.
// Lock order: `mutex_` is a leaf lock; nothing is called while it is held.
template <class Word>
class mutex_errseq {
 public:
  using word_type = Word;
  Word set(int err) {
    if (!rules<Word>::valid_errno(err)) return 0;
    std::lock_guard lock(mutex_);
    word_ = rules<Word>::after_set(word_, err);
    return word_;
  }
  Word peek() {
    std::lock_guard lock(mutex_);
    word_ = rules<Word>::after_peek(word_);
    return word_;
  }
  Word sample() {
    const Word w = peek();
    return (w & rules<Word>::seen) ? w : 0;
  }
  int check(Word since) {
    std::lock_guard lock(mutex_);
    return rules<Word>::same_error(word_, since) ? 0 : rules<Word>::errno_of(word_);
  }
  int check_and_advance(Word& since) {
    std::lock_guard lock(mutex_);
    if (rules<Word>::same_error(word_, since)) return 0;
    word_ = rules<Word>::after_report(word_);
    since = word_;
    return rules<Word>::errno_of(word_);
  }

 private:
  std::mutex mutex_;
  Word word_ = 0;
};

// One word per benchmark, shared by its threads, alone on its cache line.
template <class T>
struct alignas(128) shared {
  T value{};
};

template <class Word>
std::atomic<Word>& bare_word() {
  static shared<std::atomic<Word>> w;
  return w.value;
}
template <class E>
E& word_of() {
  static shared<E> w;
  return w.value;
}

// Puts the word in the state a benchmark starts from: an error that has
// been reported (SEEN|MUSTINC), and a cursor on it.
template <class E>
typename E::word_type seen_error(E& e) {
  typename E::word_type since = 0;
  e.set(5);
  e.check_and_advance(since);
  return since;
}

// ---- the physical limits -----------------------------------------------------

template <class Word>
void bare_load(benchmark::State& state) {
  auto& w = bare_word<Word>();
  for (auto _ : state) benchmark::DoNotOptimize(w.load(std::memory_order_acquire));
}

// A compare-exchange that succeeds (with 2 threads, some fail and retry:
// the count is of successful ones).
template <class Word>
void bare_cas(benchmark::State& state) {
  auto& w = bare_word<Word>();
  Word v = w.load(std::memory_order_relaxed);
  for (auto _ : state) {
    while (!w.compare_exchange_strong(v, v + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
    }
    ++v;
  }
}

// A load, then a compare-exchange from the loaded value: the least any
// read-modify-write by compare-exchange does (not a target, for reference).
template <class Word>
void bare_load_cas(benchmark::State& state) {
  auto& w = bare_word<Word>();
  for (auto _ : state) {
    Word v = w.load(std::memory_order_acquire);
    while (!w.compare_exchange_strong(v, v + 1, std::memory_order_acq_rel,
                                      std::memory_order_acquire)) {
    }
  }
}

// ---- one load: the fast paths ---------------------------------------------

// check(): nothing new since the cursor. One load and a compare; the int
// result is kept (DoNotOptimize), the strictest way to count it.
template <class E>
void check(benchmark::State& state) {
  auto& e = word_of<E>();
  const auto since = seen_error(e);
  for (auto _ : state) benchmark::DoNotOptimize(e.check(since));
}

// check(), used as callers use it: branch on the result, act on an error.
// The same one load; the compiler need not turn the result into a value.
template <class E>
void check_branch(benchmark::State& state) {
  auto& e = word_of<E>();
  const auto since = seen_error(e);
  for (auto _ : state) {
    if (const int err = e.check(since)) [[unlikely]]
      benchmark::DoNotOptimize(err);
  }
}

// check_and_advance(): nothing new since the cursor. One load.
template <class E>
void check_and_advance_nothing_new(benchmark::State& state) {
  auto& e = word_of<E>();
  auto since = seen_error(e);
  for (auto _ : state) benchmark::DoNotOptimize(e.check_and_advance(since));
}

// peek(): MUSTINC already set, as it is after the first look at an error.
template <class E>
void peek_marked(benchmark::State& state) {
  auto& e = word_of<E>();
  seen_error(e);
  for (auto _ : state) benchmark::DoNotOptimize(e.peek());
}

// sample(): the error is SEEN and MUSTINC: one load, returns the word.
template <class E>
void sample_marked(benchmark::State& state) {
  auto& e = word_of<E>();
  seen_error(e);
  for (auto _ : state) benchmark::DoNotOptimize(e.sample());
}

// set(): the same errno again while nobody looked: nothing would change.
// One load, no write.
template <class E>
void set_unchanged(benchmark::State& state) {
  auto& e = word_of<E>();
  e.set(5);
  e.set(7);  // no flags: the word is just errno 7
  for (auto _ : state) benchmark::DoNotOptimize(e.set(7));
}

// ---- load + compare-exchange: the paths that write ---------------------------

// set(): errno alternates 5, 6, 5, ... so every call writes (load + CAS).
// Nobody looks, so the counter does not move.
template <class E>
void set_alternating(benchmark::State& state) {
  auto& e = word_of<E>();
  int err = 5;
  for (auto _ : state) {
    benchmark::DoNotOptimize(e.set(err));
    err ^= 5 ^ 6;
  }
}

// set() on two words in turn, errno alternating: this thread's guess is
// always about the other word, so every call loads first (load + CAS), as
// every write did before writes started from a guess. Two calls per
// iteration: table.py halves it.
template <class E>
void set_two_words(benchmark::State& state) {
  auto& a = word_of<E>();
  static shared<E> other;
  auto& b = other.value;
  int err = 5;
  for (auto _ : state) {
    benchmark::DoNotOptimize(a.set(err));
    benchmark::DoNotOptimize(b.set(err));
    err ^= 5 ^ 6;
  }
}

// set() then peek(): both write. peek() finds MUSTINC clear (set() cleared
// it) and sets it; set() finds it set and bumps the counter.
template <class E>
void cycle_set_peek(benchmark::State& state) {
  auto& e = word_of<E>();
  for (auto _ : state) {
    benchmark::DoNotOptimize(e.set(5));
    benchmark::DoNotOptimize(e.peek());
  }
}

// set() then check_and_advance(): both write; the report marks SEEN|MUSTINC.
template <class E>
void cycle_set_check_and_advance(benchmark::State& state) {
  auto& e = word_of<E>();
  typename E::word_type since = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(e.set(5));
    benchmark::DoNotOptimize(e.check_and_advance(since));
  }
}

// set() then sample(): both write; sample() marks MUSTINC and returns 0
// (the error is unseen).
template <class E>
void cycle_set_sample(benchmark::State& state) {
  auto& e = word_of<E>();
  for (auto _ : state) {
    benchmark::DoNotOptimize(e.set(5));
    benchmark::DoNotOptimize(e.sample());
  }
}

template <class Word>
using lockfree = ovlfs::basic_errseq<Word>;
template <class Word>
using locked = mutex_errseq<Word>;

// 1 thread and 2 threads on the same word.
#define OVLFS_BENCH(fn, ...)                                        \
  BENCHMARK_TEMPLATE(fn, __VA_ARGS__)->Threads(1)->Threads(2)

#define OVLFS_BENCH_WORD(W)                                         \
  OVLFS_BENCH(bare_load, W);                                        \
  OVLFS_BENCH(bare_cas, W);                                         \
  OVLFS_BENCH(bare_load_cas, W);                                    \
  OVLFS_BENCH(check, lockfree<W>);                                  \
  OVLFS_BENCH(check_branch, lockfree<W>);                           \
  OVLFS_BENCH(check_and_advance_nothing_new, lockfree<W>);          \
  OVLFS_BENCH(peek_marked, lockfree<W>);                            \
  OVLFS_BENCH(sample_marked, lockfree<W>);                          \
  OVLFS_BENCH(set_unchanged, lockfree<W>);                          \
  OVLFS_BENCH(set_alternating, lockfree<W>);                        \
  OVLFS_BENCH(set_two_words, lockfree<W>);                          \
  OVLFS_BENCH(cycle_set_peek, lockfree<W>);                         \
  OVLFS_BENCH(cycle_set_check_and_advance, lockfree<W>);            \
  OVLFS_BENCH(cycle_set_sample, lockfree<W>);                       \
  OVLFS_BENCH(check, locked<W>);                                    \
  OVLFS_BENCH(check_and_advance_nothing_new, locked<W>);            \
  OVLFS_BENCH(peek_marked, locked<W>);                              \
  OVLFS_BENCH(sample_marked, locked<W>);                            \
  OVLFS_BENCH(set_unchanged, locked<W>);                            \
  OVLFS_BENCH(set_alternating, locked<W>);                          \
  OVLFS_BENCH(set_two_words, locked<W>);                            \
  OVLFS_BENCH(cycle_set_peek, locked<W>);                           \
  OVLFS_BENCH(cycle_set_check_and_advance, locked<W>);              \
  OVLFS_BENCH(cycle_set_sample, locked<W>)

OVLFS_BENCH_WORD(std::uint64_t);
OVLFS_BENCH_WORD(std::uint32_t);

}  // namespace

BENCHMARK_MAIN();
