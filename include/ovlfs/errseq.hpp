// ovlfs/errseq.hpp: a lock-free error-sequence counter (header-only).
//
// An errseq is one machine word that records "an error happened, and which",
// so that any number of watchers can each learn of every error once (or on
// every call), without locks and without consuming the error for anyone else.
// A watcher keeps a private cursor (`since`), a copy of the word taken at some
// point; it asks the word whether anything was recorded after that point.
//
// Layout (SPEC.md section 1.1). Bit 0 is the least significant:
//
//   bits 0-11   errno of the latest error, 1..4095 (0 only while never failed)
//   bit  12     SEEN: the latest error has been reported by check_and_advance()
//   bit  13     MUSTINC: someone took a cursor on the current value, so the
//               next set() must bump the counter to make itself visible
//   bits 14-    counter: 18 bits in errseq32, 50 bits in errseq64
//
// The errno field and the SEEN bit sit where Linux's lib/errseq.c keeps them.
// Mainline Linux counts from bit 13 and has one flag; here bit 13 is a second
// flag and the counter starts at bit 14, so a word is kernel-compatible in its
// errno and SEEN bits, not in its counter.
//
// All-zero means "never failed". A fresh word must be zero; no operation ever
// makes a word zero again (every set() stores a non-zero errno), so 0 also
// serves as the cursor of a watcher that wants every error since the start.
//
// Why two flags. Each set() has to decide whether to bump the counter. Bumping
// on every set() would wrap a 32-bit counter fast, so set() bumps only when a
// cursor may equal the current value (errors then coalesce: two set()s with
// nobody looking in between are one change). Every operation that hands out a
// cursor therefore first sets MUSTINC in the word. The kernel uses SEEN for
// both jobs; the split lets peek() take a cursor (MUSTINC) without claiming
// that the error was reported (SEEN), so a peek never hides an unseen error
// from a new watcher (sample() still returns 0 for it).
//
// A cursor compares with the word ignoring both flags: flags change when
// someone looks, the error changes only by set(). So a difference in the
// errno or counter bits means "a set() happened after the cursor was taken"
// (for a 0 cursor: "some set() ever happened").
//
// Memory order. Every load is acquire; every successful compare-exchange is
// acq_rel and every failed one acquire. The acquire loads pair with the
// release half of set()'s compare-exchange: a watcher that sees an error also
// sees whatever the setter wrote before calling set(). The flag-only
// compare-exchanges of peek() and check_and_advance() are read-modify-writes,
// so they continue set()'s release sequence rather than break it. Everything
// else (which interleavings are possible at all) rests on the single word's
// modification order, the same under any memory order.
//
// Shared memory. The word is a plain integer of standard layout with a
// lock-free atomic (static_asserted), so it works in memory shared between
// processes. Over a mapped word, use basic_errseq_ref (std::atomic_ref): it
// needs no construction, so any process may attach at any time to a
// zero-filled, suitably aligned word (alignas(errseq64_ref::required_alignment)).
//
// Writes start with the compare-exchange. set(), peek() and
// check_and_advance() change the word by compare-exchange, which needs the
// old word as its expected value. Loading it first is slow when this thread
// has just written the word: on x86 a load of the cache line that a locked
// instruction of the same thread is writing waits for that instruction, and
// the compare-exchange waits for the load. So two writing calls in a row on
// one word (set() and then check_and_advance(), or set() twice) run one
// after the other with a load in between. On the 2-CPU Sapphire Rapids VM
// of BENCHMARKS.md a load + compare-exchange of one word is 1.7 times a bare
// compare-exchange, and set() that loaded first was 1.9 times.
//
// So each thread keeps a guess: one slot per word type (errseq_guess), with
// the address of the word it last wrote or tried to write and the value it
// last wrote or saw there. A writing call on that same word computes its new
// value from the guess and tries the compare-exchange at once, without a
// load. If the guess was right, that compare-exchange is the whole call. If
// it was wrong, the compare-exchange fails and returns the word as it is:
// that is the load, and the call goes on exactly as if it had loaded that
// value. The slot gets the value a call writes (before a compare-exchange
// from a guess, after one from a load: on the machine measured, the faster
// and the steadier choice for each), and the value seen when a call ends
// without writing after a failed one.
//
// Why any guess is safe. A compare-exchange writes only if the word equals
// the expected value, and every new word is a function of the old word alone
// (errseq_rules). So a compare-exchange from a guess that succeeds writes
// what one from a load of the same value would have, at the same step; one
// that fails is an acquire read of the word. A call never decides from a
// guess that it has nothing to write: "nothing to write" (set() of the
// errno already there with no flag set, peek() with MUSTINC set,
// check_and_advance() with nothing new or with SEEN and MUSTINC set) is
// decided only on a value read from the word, by a load or by a failed
// compare-exchange. A stale guess, one left by another word that lived at
// the same address, one that a signal handler wrote between a call's read of
// the slot and its compare-exchange: each costs at most one failed
// compare-exchange, never a different result. The model check runs this code
// with one slot per logical thread, also with slots that start out holding
// unrelated values, and with a mutant that trusts its guess (it is caught).
//
// Which calls start with the compare-exchange: those whose guess, on the
// same word, says they will write. set() when the guess has another errno
// or a flag set; peek() when the guess has no MUSTINC; check_and_advance()
// when the guess holds an error new to the cursor, without both flags. Every
// other call loads first, as before, so the read-only paths (check();
// check_and_advance() with nothing new; peek() and sample() with MUSTINC
// set; set() with nothing to change) still touch the word with exactly one
// load. All but check() read this thread's slot as well.
//
// What this does NOT guarantee:
//  - No locking for concurrent updates of one cursor. check_and_advance()
//    reads and writes `since`; callers that share a cursor (say, threads using
//    one open file description) must serialise those calls themselves. A
//    check() first, without the lock, is the cheap way to skip the lock in the
//    common no-error case.
//  - Only the latest errno is kept. Errors recorded while nobody looked
//    coalesce into the last one; a watcher learns that something failed since
//    its cursor, and the latest errno, not the list of errors.
//  - The counter wraps: after 2^18 bumps in errseq32 (2^50 in errseq64) a
//    cursor that old may compare equal again and miss an error. Prefer
//    errseq64 wherever the word is ours to choose.
//  - Lock-free, not wait-free: a set(), peek() or check_and_advance() retries
//    while other threads keep changing the word; some caller always succeeds.
//  - A cursor taken while a set() is in progress may or may not include
//    that error: every call takes effect at one step of the word (its load
//    or its compare-exchange), and a peek() that lands after the set()'s
//    step already holds the new error. A cursor whose call returned before
//    set() was called always sees it.
//  - set()'s return value is not a cursor (it carries no MUSTINC, so a later
//    set() with the same errno may leave the word unchanged). Take cursors
//    with sample() or peek().
//  - A write is one compare-exchange only while this thread's guess is
//    right: it was the last to write the word, or saw it last, and nobody
//    changed it since. A thread that alternates between words loads first
//    on each (one slot per thread and word type), as every write did before,
//    and keeps the slot up to date besides (7.5 ns against 7.1 ns in
//    BENCHMARKS.md). A stale guess costs a failed compare-exchange where a
//    load would have done, at most one per call.
//    On x86 a failed compare-exchange is a locked write of the same value:
//    it takes the cache line exclusive, and on a file-backed MAP_SHARED
//    mapping it marks the page dirty, as the retries under contention
//    always did.
//  - The read-only paths but check() pay for reading the slot: a few
//    instructions, at most 0.65 ns on the machine measured (check_and_advance()
//    with nothing new: 1.0 ns against 0.35 ns; BENCHMARKS.md).
//  - The slot is thread_local: per thread, not per process; with GNU
//    compilers it uses the initial-exec TLS model, so that a shared library
//    built with this header reads it at a fixed offset from the thread
//    pointer instead of calling __tls_get_addr (such a library needs 32
//    bytes of static TLS, which dlopen() can run out of). The operations
//    therefore still work in a signal handler on Linux, but ISO C++ does not
//    count access to a thread_local object as signal-safe.
//
// Why check_and_advance() retries when only MUSTINC changed. Suppose the
// latest error E is unseen and watcher A (cursor 0) reports it while a peeker
// P looks:   A loads E;  P loads E;  P swaps E -> E|MUSTINC;  A's swap
// E -> E|SEEN|MUSTINC fails. If A returned anyway (as lib/errseq.c does with
// its one-shot cmpxchg), E would be reported to A and yet stay unseen: a new
// watcher's sample() would return 0 and report E a second time. So A
// reloads and swaps again until SEEN is in the word. The model check in
// src/errseq/model/ explores every interleaving of this race, keeps the
// one-shot version as a mutant, and finds exactly this history. It finds no
// interleaving in which the design below breaks a property of SPEC 1.3.

#pragma once

#include <atomic>
#include <bit>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace ovlfs {

// The bit layout and the pure word arithmetic of each operation. The CAS loops
// in basic_errseq apply these to the word; tests substitute one rule at a time
// to check that the model check notices the change.
template <std::unsigned_integral Word>
struct errseq_rules {
  static_assert(sizeof(Word) >= 4, "an errseq word needs at least 32 bits");

  static constexpr int max_errno = 4095;
  static constexpr Word errno_mask = 0xfff;
  static constexpr Word seen = Word{1} << 12;
  static constexpr Word mustinc = Word{1} << 13;
  static constexpr Word flags = seen | mustinc;
  static constexpr unsigned counter_shift = 14;
  static constexpr Word counter_one = Word{1} << counter_shift;
  static constexpr Word counter_mask = static_cast<Word>(~(errno_mask | flags));

  static constexpr bool valid_errno(int err) noexcept {
    return err >= 1 && err <= max_errno;
  }
  static constexpr int errno_of(Word w) noexcept {
    return static_cast<int>(w & errno_mask);
  }
  static constexpr Word counter_of(Word w) noexcept { return w >> counter_shift; }

  // The word after set(err): err stored, both flags cleared, counter bumped
  // only if MUSTINC says someone holds a cursor on `old`. MUSTINC is the bit
  // just below the counter, so adding it to itself clears it and carries one
  // into the counter (the two ANDs run in parallel: a short path from the
  // load to the compare-exchange). The bump wraps modulo the counter's
  // width; the result is never 0 (err >= 1).
  static constexpr Word after_set(Word old, int err) noexcept {
    static_assert(mustinc << 1 == counter_one);
    const Word kept = old & (counter_mask | mustinc);
    return static_cast<Word>(kept + (old & mustinc)) | static_cast<Word>(err);
  }

  // The word after a cursor was taken by peek() or sample(): MUSTINC set.
  // Zero stays zero: "never failed" needs no mark, the first set() changes
  // the errno bits anyway.
  static constexpr Word after_peek(Word old) noexcept {
    return old == 0 ? old : old | mustinc;
  }

  // The word after check_and_advance() reported its error: SEEN (reported)
  // and MUSTINC (the reporter now holds a cursor on it).
  static constexpr Word after_report(Word old) noexcept { return old | flags; }

  // Whether a cursor still describes the word: equal but for the flags.
  static constexpr bool same_error(Word cur, Word since) noexcept {
    return ((cur ^ since) & ~flags) == 0;
  }
};

// A thread's guess at one word (see "Writes start with the compare-exchange"
// above): `key` names the word (its address; 0 names none), `word` is the
// value this thread last wrote, was about to write or saw there. Only ever a
// guess: any contents are safe, wrong ones cost a failed compare-exchange.
template <class Word>
struct errseq_guess {
  std::uintptr_t key = 0;
  Word word = 0;
};

namespace errseq_detail {
// This thread's slot for words of type Word. Constant-initialised, so it
// needs no guard; initial-exec (see above) where the attribute exists.
#if defined(__GNUC__)
#define OVLFS_ERRSEQ_TLS_MODEL [[gnu::tls_model("initial-exec")]]
#else
#define OVLFS_ERRSEQ_TLS_MODEL
#endif
template <class Word>
OVLFS_ERRSEQ_TLS_MODEL constinit thread_local errseq_guess<Word> thread_guess{};
#undef OVLFS_ERRSEQ_TLS_MODEL
}  // namespace errseq_detail

// An error-sequence counter on one word of type Word (std::uint32_t for the
// kernel-compatible layout, std::uint64_t otherwise).
//
// Atomic is the word's atomic type: std::atomic<Word> (the class owns the
// word), std::atomic_ref<Word> (the class refers to a word elsewhere, e.g. in
// shared memory), or a test type with the same load and compare_exchange_strong
// that hands control to a deterministic scheduler at every step. A test type
// may also provide `static errseq_guess<Word>& errseq_guess_slot()` (the
// calling thread's guess slot; default: a thread_local one) and `address()`
// (what names the word in the slot; default: the Atomic's address, or for
// std::atomic_ref the referenced word's).
// Rules is the word arithmetic above; only tests replace it.
template <class Word, class Atomic = std::atomic<Word>,
          class Rules = errseq_rules<Word>>
class basic_errseq {
  static_assert(std::unsigned_integral<Word> && sizeof(Word) >= 4,
                "Word must be an unsigned integer of 32 bits or more");
  static_assert(Atomic::is_always_lock_free,
                "errseq must be lock-free to work between processes and in "
                "any context");

 public:
  using word_type = Word;
  using rules = Rules;

  // Context: any. Return: whether set() accepts `err` (1..4095).
  static constexpr bool valid_errno(int err) noexcept {
    return Rules::valid_errno(err);
  }
  // Context: any. Return: the errno stored in word `w` (0 for a zero word).
  static constexpr int errno_of(Word w) noexcept { return Rules::errno_of(w); }

  // A word that owns its storage starts at zero: never failed.
  constexpr basic_errseq() noexcept
    requires std::is_constructible_v<Atomic, Word>
      : word_(Word{0}) {}

  // Refers to `word`, which must outlive this object, be aligned for Atomic
  // (Atomic::required_alignment for std::atomic_ref) and hold zero or a value
  // that an errseq wrote. Nothing is written here, so any number of processes
  // may attach to the same word at any time.
  explicit basic_errseq(Word& word) noexcept
    requires(std::is_constructible_v<Atomic, Word&> &&
             !std::is_constructible_v<Atomic, Word>)
      : word_(word) {}

  // set(err): record error `err`.
  // Clears both flags and stores `err`; bumps the counter only if MUSTINC was
  // set; if nothing would change (same errno and no flag set, i.e. nobody has
  // taken a cursor since the last set(), so nobody could tell), writes nothing.
  // Context: any; lock-free. Release: what the caller wrote before set() is
  // visible to a watcher that observes this error. Starts with the
  // compare-exchange when this thread's guess says it will write; decides
  // that nothing would change only on a load (or a failed compare-exchange).
  // Return: the word after this call (for logging; not a cursor), or 0 if
  // `err` is outside 1..4095: the call is rejected without reading or writing
  // the word. A valid set() never returns 0.
  Word set(int err) noexcept {
    if (!Rules::valid_errno(err)) return Word{0};
    errseq_guess<Word>& g = guess_slot();
    const std::uintptr_t k = key();
    Word old = slot_word(g);
    const Word next = Rules::after_set(old, err);
    // The guess is about this word and says this call writes: try it
    // without a load. (`&`, not `&&`: one branch, and for set() with nothing
    // to change, the measured faster form.)
    if ((slot_key(g) == k) & (next != old)) {
      g.word = next;
      if (word_.compare_exchange_strong(old, next, std::memory_order_acq_rel,
                                        std::memory_order_acquire))
        return next;
      // A wrong guess: `old` is now the word, as a load would have read it.
      return set_from(old, err, true, g, k);
    }
    // No guess about this word, or one that says nothing would change: only
    // the word can say that.
    old = word_.load(std::memory_order_acquire);
    // Same errno, no flags: the word already says exactly this. One load.
    if (Rules::after_set(old, err) == old) return old;
    return set_from(old, err, false, g, k);
  }

  // peek(): take a cursor without reporting anything.
  // Sets MUSTINC in a non-zero word, so that any later set() is visible to
  // the cursor as a change even with the same errno. Leaves SEEN alone: a
  // peek never hides an unseen error from anyone.
  // Context: any; lock-free. Starts with the compare-exchange when this
  // thread's guess has no MUSTINC; finds MUSTINC set only by a load (or a
  // failed compare-exchange).
  // Return: the word as of this call, with MUSTINC set (0 if never failed).
  // Use it as a cursor for check(), or for check_and_advance() to report
  // only errors recorded after this call.
  Word peek() noexcept {
    errseq_guess<Word>& g = guess_slot();
    const std::uintptr_t k = key();
    if (slot_key(g) == k) {
      Word old = slot_word(g);
      const Word next = Rules::after_peek(old);
      // The guess has an error without MUSTINC: try to mark it, no load.
      // (Rarer than finding MUSTINC set: once per error.)
      if (next != old) [[unlikely]] {
        g.word = next;
        if (word_.compare_exchange_strong(old, next, std::memory_order_acq_rel,
                                          std::memory_order_acquire))
          return next;
        return peek_from(old, true, g, k);
      }
    }
    const Word old = word_.load(std::memory_order_acquire);
    // Never failed (stays 0), or MUSTINC already set: the next set() bumps
    // the counter anyway. One load.
    if (Rules::after_peek(old) == old) return old;
    return peek_from(old, false, g, k);
  }

  // sample(): take a cursor for a new watcher.
  // peek(), but returns 0 where the current error has not been reported by
  // any check_and_advance() yet, so that this watcher reports it too: an
  // unseen error is reported at least once. A seen error is not reported
  // again to new watchers.
  // Context: any; lock-free.
  // Return: a cursor for check() / check_and_advance().
  Word sample() noexcept {
    const Word cur = peek();
    // Reported already: start after it. Unseen (or never failed): start
    // before it.
    return (cur & Rules::seen) ? cur : Word{0};
  }

  // check(since): has an error been recorded since cursor `since`?
  // Compares ignoring the flag bits; changes nothing, so it reports the same
  // error on every call until the cursor moves.
  // Context: any; one load.
  // Return: the errno of the latest error if the word differs from `since`
  // in its errno or counter bits, else 0.
  int check(Word since) const noexcept {
    const Word cur = word_.load(std::memory_order_acquire);
    // Nothing new since the cursor (flags aside): by far the common case.
    if (Rules::same_error(cur, since)) [[likely]]
      return 0;
    return Rules::errno_of(cur);
  }

  // check_and_advance(since): report a new error once per cursor.
  // Like check(); on a difference marks the word SEEN and MUSTINC and
  // advances `since` to it, so the same cursor reports that error only once.
  // Retries until SEEN really is in the word (see the race above).
  // Context: any; lock-free; the caller serialises calls on one `since`.
  // Starts with the compare-exchange when this thread's guess holds an error
  // new to `since`; finds nothing new only by a load (or a failed
  // compare-exchange).
  // Return: the errno of the latest error if it is new to `since`, else 0.
  int check_and_advance(Word& since) noexcept {
    errseq_guess<Word>& g = guess_slot();
    const std::uintptr_t k = key();
    if (slot_key(g) == k) {
      Word old = slot_word(g);
      const Word next = Rules::after_report(old);
      // The guess holds an error new to `since` and not yet marked: try to
      // mark it without a load. (Rarer than nothing new: once per error.)
      if (!Rules::same_error(old, since) && next != old) [[unlikely]] {
        g.word = next;
        if (word_.compare_exchange_strong(old, next, std::memory_order_acq_rel,
                                          std::memory_order_acquire)) {
          since = next;
          return Rules::errno_of(next);
        }
        return advance_from(old, since, true, g, k);
      }
    }
    const Word old = word_.load(std::memory_order_acquire);
    // Nothing recorded since the cursor (flags aside): the common case.
    // One load.
    if (Rules::same_error(old, since)) [[likely]]
      return 0;
    return advance_from(old, since, false, g, k);
  }

 private:
  // The calling thread's guess slot.
  static errseq_guess<Word>& guess_slot() noexcept {
    if constexpr (requires { Atomic::errseq_guess_slot(); })
      return Atomic::errseq_guess_slot();
    else
      return errseq_detail::thread_guess<Word>;
  }

  // What names this word in a guess slot: its address. std::atomic_ref
  // cannot tell it before C++26 (address()), but holds nothing else: a
  // pointer to the word. Were that not so, the key would still name this
  // word consistently enough: a key only decides whether to trust a guess
  // enough to try a compare-exchange with it.
  std::uintptr_t key() const noexcept {
    if constexpr (requires(const Atomic& a) { a.address(); })
      return reinterpret_cast<std::uintptr_t>(word_.address());
    else if constexpr (std::is_same_v<Atomic, std::atomic_ref<Word>> &&
                       sizeof(Atomic) == sizeof(std::uintptr_t) &&
                       std::is_trivially_copyable_v<Atomic>)
      return std::bit_cast<std::uintptr_t>(word_);
    else
      return reinterpret_cast<std::uintptr_t>(&word_);
  }

  // The slot is read through volatile glvalues, so that each read is one
  // load into a register. Compilers otherwise fold the key into a compare
  // with a memory operand, and on the machine of BENCHMARKS.md that form,
  // just after a locked instruction, delayed the compare-exchange behind it
  // by about a quarter of a compare-exchange (peek() after set()).
  static std::uintptr_t slot_key(const errseq_guess<Word>& g) noexcept {
    return *static_cast<const volatile std::uintptr_t*>(&g.key);
  }
  static Word slot_word(const errseq_guess<Word>& g) noexcept {
    return *static_cast<const volatile Word*>(&g.word);
  }

  // The loops below go on from `old`, a value read from the word: by a load
  // (`failed` false) or by a compare-exchange that failed (`failed` true).
  // After a compare-exchange that wrote, the slot gets the value written
  // (after, not before as on the guess path: here the compare-exchange
  // waits for a load anyway, and the store is done while the next call
  // starts); when a call ends without writing after a failed
  // compare-exchange, it gets the value seen, so that the next call starts
  // from that. A call that only loaded leaves the slot alone.
  static void remember(errseq_guess<Word>& g, std::uintptr_t k,
                       Word w) noexcept {
    g.key = k;
    g.word = w;
  }

  // set() and peek() from a value of the word (loaded, or returned by a failed
  // compare-exchange when `failed`): `next(old)` is the word the call makes,
  // Rules::after_set or Rules::after_peek. Returns the word after the call.
  template <class Next>
  Word update_from(Word old, bool failed, errseq_guess<Word>& g, std::uintptr_t k,
                   Next next_of) noexcept {
    for (;;) {
      const Word next = next_of(old);
      // Nothing would change (set(): same errno, no flags; peek(): never
      // failed, or MUSTINC already set).
      if (next == old) {
        if (failed) remember(g, k, old);
        return old;
      }
      // Our swap wins: the error is recorded, or MUSTINC set on the value read.
      if (word_.compare_exchange_strong(old, next, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
        remember(g, k, next);
        return next;
      }
      // Lost to a concurrent change, now in `old`: another set() (a set() goes
      // on top of it, so the latest caller's errno wins; a peek() marks that
      // one instead), or someone set a flag (a set() must now bump the counter;
      // a peek() returns at once next round). Recompute.
      failed = true;
    }
  }

  Word set_from(Word old, int err, bool failed, errseq_guess<Word>& g,
                std::uintptr_t k) noexcept {
    return update_from(old, failed, g, k, [err](Word w) { return Rules::after_set(w, err); });
  }

  Word peek_from(Word old, bool failed, errseq_guess<Word>& g, std::uintptr_t k) noexcept {
    return update_from(old, failed, g, k, [](Word w) { return Rules::after_peek(w); });
  }

  int advance_from(Word old, Word& since, bool failed, errseq_guess<Word>& g,
                   std::uintptr_t k) noexcept {
    for (;;) {
      // Nothing recorded since the cursor (flags aside).
      if (Rules::same_error(old, since)) {
        if (failed) remember(g, k, old);
        return 0;
      }
      const Word next = Rules::after_report(old);
      // Already SEEN and MUSTINC: nothing to write. Otherwise our swap marks
      // it. Either way this call reports the error in `next`.
      if (next == old) {
        if (failed) remember(g, k, old);
        since = next;
        return Rules::errno_of(next);
      }
      if (word_.compare_exchange_strong(old, next, std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
        remember(g, k, next);
        since = next;
        return Rules::errno_of(next);
      }
      // Lost to a concurrent change, now in `old`: a set() recorded a newer
      // error (report that one: errors coalesce), or a peek(), sample() or
      // another report changed only flags. Retry in both cases, so that the
      // word ends with SEEN set before we report.
      failed = true;
    }
  }

 private:
  Atomic word_;
};

// The kernel-compatible 32-bit layout, and the 64-bit one (the default where
// the word is ours to choose: its counter does not wrap in practice).
using errseq32 = basic_errseq<std::uint32_t>;
using errseq64 = basic_errseq<std::uint64_t>;

// The same operations on a word that lives elsewhere, e.g. in a MAP_SHARED
// mapping. Align the word to basic_errseq_ref<Word>::required_alignment.
template <class Word>
class basic_errseq_ref : public basic_errseq<Word, std::atomic_ref<Word>> {
 public:
  static constexpr std::size_t required_alignment =
      std::atomic_ref<Word>::required_alignment;
  explicit basic_errseq_ref(Word& word) noexcept
      : basic_errseq<Word, std::atomic_ref<Word>>(word) {}
};
using errseq32_ref = basic_errseq_ref<std::uint32_t>;
using errseq64_ref = basic_errseq_ref<std::uint64_t>;

static_assert(std::is_standard_layout_v<errseq32> &&
              sizeof(errseq32) == sizeof(std::uint32_t));
static_assert(std::is_standard_layout_v<errseq64> &&
              sizeof(errseq64) == sizeof(std::uint64_t));

}  // namespace ovlfs
