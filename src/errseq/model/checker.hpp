// The model check of errseq: runs a scenario (a few logical threads, each a
// list of errseq operations) under the scheduler in every interleaving, with
// the production basic_errseq on a model_atomic word (each logical thread
// with its own guess slot, so that the writes that start with a
// compare-exchange from a guess are explored too), records each complete
// history, and checks it against SPEC.md 1.3:
//
//   P1 no lost error        a cursor taken before a set() started reports an
//                           error on every check / check_and_advance that
//                           starts after that set() returned (that error or
//                           one set no earlier). SPEC says "taken before a
//                           set() completes"; a cursor taken while the set()
//                           runs may already hold its error (it took effect
//                           after the set()'s compare-exchange), and then
//                           rightly reports nothing: P6 covers that case.
//   P2 once per cursor      a report needs a set() that did not return before
//                           the cursor was taken (any set() for a cursor that
//                           starts at 0), and reports that set()'s errno; so
//                           check_and_advance reports again only after a new
//                           set().
//   P3 unseen, not swallowed  a sample() taken after a set() returned, while
//                           every report had been followed by a newer set(),
//                           returns 0 and its cursor reports. Conversely
//                           (SPEC 1.2), once a check_and_advance() reported
//                           the latest error, a later sample() does not.
//   P4 peek is invisible    the other threads' reports are among those
//                           possible without the peeking threads; a peek
//                           changes only MUSTINC. (A peek cursor seeing every
//                           later set() is P1 for peek cursors.)
//   P5 zero means never     no set() leaves 0 and nothing returns to 0; a
//                           peek() returns 0 only if no set() returned before
//                           it; the counter moves only in a set() that found
//                           MUSTINC, which only a look sets, and by one.
//   P6 linearizable         some order of the operations that respects real
//                           time gives every result, and the final word, in
//                           the sequential reference model (reference.hpp).
//
// Times: an operation's interval runs from its first atomic step to its
// last. Any real execution of the same interleaving has intervals at least
// that wide, so "A returned before B started" (A.last < B.first) here is the
// strictest real-time order, which makes P1-P6 the strongest claims.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "model_atomic.hpp"
#include "ovlfs/errseq.hpp"
#include "reference.hpp"
#include "scheduler.hpp"

namespace ovlfs::model {

enum class op_kind { set, peek, sample, check, check_and_advance };

template <class Word>
std::string hex(Word w) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%#llx", static_cast<unsigned long long>(w));
  return buf;
}

struct op {
  op_kind kind;
  int err = 0;  // set() only
};
inline op set(int err) { return {op_kind::set, err}; }
inline op peek() { return {op_kind::peek}; }
inline op sample() { return {op_kind::sample}; }
inline op check() { return {op_kind::check}; }  // on the thread's cursor
inline op check_and_advance() { return {op_kind::check_and_advance}; }

// Logical threads start with cursor 0. peek() and sample() replace the
// thread's cursor; check_and_advance() advances it.
struct scenario {
  std::string name;
  std::vector<std::pair<int, op>> setup;  // run in order before the threads
  std::vector<std::vector<op>> threads;   // run concurrently
  std::vector<std::pair<int, op>> epilogue;  // run in order after them
  std::vector<int> peekers;  // threads left out to check P4
};

inline const char* op_name(op_kind k) {
  switch (k) {
    case op_kind::set: return "set";
    case op_kind::peek: return "peek";
    case op_kind::sample: return "sample";
    case op_kind::check: return "check";
    case op_kind::check_and_advance: return "check_and_advance";
  }
  return "?";
}

enum class property { p1, p2, p3, p4, p5, p6 };
constexpr int property_count = 6;
inline const char* property_name(property p) {
  static const char* const names[property_count] = {
      "P1 no lost error", "P2 once per cursor", "P3 unseen errors not swallowed",
      "P4 peek is invisible", "P5 zero means never", "P6 linearizable"};
  return names[static_cast<int>(p)];
}

// What one scenario gave over all its interleavings.
struct outcome {
  std::uint64_t interleavings = 0;
  std::uint64_t violating = 0;  // interleavings that broke some property
  std::uint64_t by_property[property_count] = {};
  std::string first_counterexample;
  // P4: per thread, the errnos its check / check_and_advance returned.
  std::set<std::vector<std::vector<int>>> reports;
  // Operations whose first step was a compare-exchange from the thread's
  // guess, over all interleavings: it succeeded (the guess was the word) or
  // failed (the failure was the load).
  std::uint64_t guessed_ok = 0;
  std::uint64_t guessed_failed = 0;
};

template <class Word>
struct op_record {
  int thread;
  op_kind kind;
  int err;           // set()
  Word since_in;     // the cursor given to check / check_and_advance
  Word since_out;    // the cursor after check_and_advance
  Word word;         // returned by set / peek / sample
  int reported;      // returned by check / check_and_advance
  int cursor_from;   // the record that took since_in; -1: the initial 0
  long first = -1;   // step times
  long last = -1;
};

template <class Word>
struct modification {
  int by;  // record index
  Word before;
  Word after;
};

template <class Word>
struct history {
  std::vector<op_record<Word>> ops;
  std::vector<modification<Word>> mods;
  Word final_word = 0;
  std::uint64_t guessed_ok = 0;  // see outcome
  std::uint64_t guessed_failed = 0;
};

// How the logical threads' guess slots start out.
template <class Word>
struct guess_start {
  enum kind {
    empty,   // no guess: a thread's first write loads first
    primed,  // `value` as the guess at the model word, a value left from
             // anywhere: the guess must never matter to the results
    never,   // every operation finds its slot empty: the load-first code
             // alone, as without guesses
  } how = empty;
  Word value = 0;
  bool trusted = false;  // mutant: loads return the guess (model_atomic)
};

// Runs one execution of a scenario: the production basic_errseq with the
// model atomic and the given Rules; `kernel_cas` makes check_and_advance's
// failed compare-exchange look successful (the one-shot cmpxchg mutant).
// Each logical thread has its own guess slot, set up as `start` says.
template <class Word, class Rules>
class execution final : public step_observer {
 public:
  using errseq = basic_errseq<Word, model_atomic<Word>, Rules>;

  execution(const scenario& sc, bool kernel_cas, guess_start<Word> start = {})
      : sc_(sc), kernel_cas_(kernel_cas), threads_(sc.threads.size()),
        guesses_(sc.threads.size()),
        never_guess_(start.how == guess_start<Word>::never),
        trusted_(start.trusted) {
    if (start.how == guess_start<Word>::primed)
      for (auto& g : guesses_)
        g = {reinterpret_cast<std::uintptr_t>(&model_word_key), start.value};
  }

  history<Word> run(scheduler& s) {
    observer = this;
    for (const auto& [t, o] : sc_.setup) perform(t, o);
    std::vector<std::function<void()>> bodies;
    for (std::size_t t = 0; t < sc_.threads.size(); ++t)
      bodies.emplace_back([this, t] {
        for (const op& o : sc_.threads[t]) perform(static_cast<int>(t), o);
      });
    s.run(std::move(bodies));
    for (const auto& [t, o] : sc_.epilogue) perform(t, o);
    observer = nullptr;
    h_.final_word = word_;
    return std::move(h_);
  }

  void on_step(const step_event& e) override {
    op_record<Word>& r = h_.ops[static_cast<std::size_t>(current())];
    if (r.first < 0 && e.is_cas) ++(e.ok ? h_.guessed_ok : h_.guessed_failed);
    if (r.first < 0) r.first = clock_;
    r.last = clock_++;
    if (e.is_cas && e.ok)
      h_.mods.push_back({current(), static_cast<Word>(e.before),
                         static_cast<Word>(e.after)});
    word_ = static_cast<Word>(e.after);
  }

  void* guess_slot() override {
    const int t = h_.ops[static_cast<std::size_t>(current())].thread;
    errseq_guess<Word>& g = guesses_[static_cast<std::size_t>(t)];
    if (never_guess_) g = {};  // asked once per operation, at its start
    return &g;
  }

  bool load_returns_guess() override { return trusted_; }

  bool failed_cas_claims_success() override {
    return kernel_cas_ && h_.ops[static_cast<std::size_t>(current())].kind ==
                              op_kind::check_and_advance;
  }

 private:
  struct thread_state {
    Word since = 0;
    int cursor_from = -1;
    int current = -1;
  };

  int current() const {
    const int t = scheduler::running_thread();
    return t >= 0 ? threads_[static_cast<std::size_t>(t)].current : sequential_;
  }

  void perform(int t, const op& o) {
    thread_state& ts = threads_[static_cast<std::size_t>(t)];
    const int index = static_cast<int>(h_.ops.size());
    h_.ops.push_back({t, o.kind, o.err, ts.since, ts.since, 0, 0,
                      ts.cursor_from});
    ts.current = index;
    if (scheduler::running_thread() < 0) sequential_ = index;
    Word since = ts.since;
    Word word = 0;
    int reported = 0;
    switch (o.kind) {
      case op_kind::set: word = e_.set(o.err); break;
      case op_kind::peek: word = e_.peek(); break;
      case op_kind::sample: word = e_.sample(); break;
      case op_kind::check: reported = e_.check(since); break;
      case op_kind::check_and_advance: reported = e_.check_and_advance(since); break;
    }
    op_record<Word>& r = h_.ops[static_cast<std::size_t>(index)];
    r.word = word;
    r.reported = reported;
    r.since_out = since;
    if (o.kind == op_kind::peek || o.kind == op_kind::sample) {
      ts.since = word;
      ts.cursor_from = index;
    } else if (o.kind == op_kind::check_and_advance && reported != 0) {
      ts.since = since;
      ts.cursor_from = index;
    }
  }

  const scenario& sc_;
  bool kernel_cas_;
  std::vector<thread_state> threads_;
  std::vector<errseq_guess<Word>> guesses_;
  bool never_guess_;
  bool trusted_;
  int sequential_ = -1;
  long clock_ = 0;
  Word word_ = 0;
  errseq e_;
  history<Word> h_;
};

// ---- checks ----------------------------------------------------------------

template <class Word>
class history_checker {
 public:
  using rec = op_record<Word>;
  using rules = errseq_rules<Word>;

  explicit history_checker(const history<Word>& h) : h_(h) {
    for (std::size_t i = 0; i < h.ops.size(); ++i)
      if (h.ops[i].kind == op_kind::set) sets_.push_back(i);
  }

  // Appends one line per violated property; returns the properties broken.
  unsigned check(std::string& why) const {
    unsigned broken = 0;
    auto fail = [&](property p, const std::string& text) {
      if (!(broken & bit(p))) why += std::string(property_name(p)) + ": " + text + "\n";
      broken |= bit(p);
    };
    check_cursors(fail);
    check_samples(fail);
    check_modifications(fail);
    if (!linearizable()) fail(property::p6, "no sequential order explains the results");
    return broken;
  }

  static unsigned bit(property p) { return 1u << static_cast<unsigned>(p); }

  // Per thread, the errnos returned by its check / check_and_advance calls.
  std::vector<std::vector<int>> reports(std::size_t nthreads,
                                        const std::vector<int>& skip) const {
    std::vector<std::vector<int>> v(nthreads);
    for (const rec& r : h_.ops) {
      bool skipped = false;
      for (int s : skip) skipped |= (s == r.thread);
      if (!skipped && (r.kind == op_kind::check || r.kind == op_kind::check_and_advance))
        v[static_cast<std::size_t>(r.thread)].push_back(r.reported);
    }
    return v;
  }

 private:
  const rec& at(std::size_t i) const { return h_.ops[i]; }
  static bool precedes(const rec& a, const rec& b) { return a.last < b.first; }

  // Whether the cursor used by `x` counts from the very start (a 0 cursor).
  bool from_start(const rec& x) const {
    return x.cursor_from < 0 || x.since_in == 0;
  }

  template <class Fail>
  void check_cursors(Fail& fail) const {
    for (const rec& x : h_.ops) {
      if (x.kind != op_kind::check && x.kind != op_kind::check_and_advance) continue;
      const bool start = from_start(x);
      const rec* y = x.cursor_from < 0 ? nullptr : &at(static_cast<std::size_t>(x.cursor_from));
      // P1: every set() after the cursor and before x is reported.
      for (std::size_t s : sets_) {
        const rec& set = at(s);
        if (!(start || precedes(*y, set)) || !precedes(set, x)) continue;
        bool allowed = false;
        for (std::size_t s2 : sets_)
          allowed |= !precedes(at(s2), set) && at(s2).err == x.reported;
        if (x.reported == 0 || !allowed)
          fail(property::p1, describe(x) + " after " + describe(set) +
                                  " on an older cursor");
      }
      // P2: a report needs a set() no older than the cursor, with that errno.
      if (x.reported != 0) {
        bool explained = false;
        for (std::size_t s : sets_) {
          const rec& set = at(s);
          explained |= (start || !precedes(set, *y)) && !precedes(x, set) &&
                       set.err == x.reported;
        }
        if (!explained)
          fail(property::p2, describe(x) + " reports without a new set()");
      }
    }
  }

  // The next check / check_and_advance of the same thread after op i.
  const rec* next_use(std::size_t i) const {
    for (std::size_t j = i + 1; j < h_.ops.size(); ++j) {
      const rec& r = at(j);
      if (r.thread != at(i).thread) continue;
      if (r.kind == op_kind::check || r.kind == op_kind::check_and_advance) return &r;
      if (r.kind == op_kind::peek || r.kind == op_kind::sample) return nullptr;
    }
    return nullptr;
  }

  template <class Fail>
  void check_samples(Fail& fail) const {
    for (std::size_t i = 0; i < h_.ops.size(); ++i) {
      const rec& y = at(i);
      if (y.kind != op_kind::sample) continue;
      const rec* x = next_use(i);
      // P3: an error set before y that no report can have reached.
      bool error_before = false;
      for (std::size_t s : sets_) error_before |= precedes(at(s), y);
      bool unseen = error_before;
      for (const rec& r : h_.ops) {
        if (r.kind != op_kind::check_and_advance || r.reported == 0 || precedes(y, r))
          continue;
        bool superseded = false;
        for (std::size_t s : sets_)
          superseded |= precedes(r, at(s)) && precedes(at(s), y);
        unseen &= superseded;
      }
      if (unseen && (y.word != 0 || (x != nullptr && x->reported == 0)))
        fail(property::p3, describe(y) + " swallowed an unseen error");
      // P3, converse: a report r before y, and no set() between r and y
      // (nor between r and y's next use x) to make a newer error.
      for (const rec& r : h_.ops) {
        if (r.kind != op_kind::check_and_advance || r.reported == 0 || !precedes(r, y))
          continue;
        bool quiet_to_y = true;
        bool quiet_to_x = x != nullptr;
        for (std::size_t s : sets_) {
          quiet_to_y &= precedes(at(s), r) || precedes(y, at(s));
          quiet_to_x &= precedes(at(s), r) || precedes(*x, at(s));
        }
        if ((quiet_to_y && y.word == 0) || (quiet_to_x && x->reported != 0))
          fail(property::p3, describe(y) + " reports an error already reported by " +
                                 describe(r));
      }
    }
    // P5: a peek() returns 0 only if no set() returned before it.
    for (const rec& p : h_.ops) {
      if (p.kind != op_kind::peek || p.word != 0) continue;
      for (std::size_t s : sets_)
        if (precedes(at(s), p)) fail(property::p5, describe(p) + " after " + describe(at(s)));
    }
  }

  template <class Fail>
  void check_modifications(Fail& fail) const {
    for (const auto& m : h_.mods) {
      const rec& by = at(static_cast<std::size_t>(m.by));
      const bool counter_moved = rules::counter_of(m.before) != rules::counter_of(m.after);
      const bool mustinc_added = !(m.before & rules::mustinc) && (m.after & rules::mustinc);
      if (m.after == 0) fail(property::p5, describe(by) + " made the word 0");
      if (by.kind == op_kind::set && (m.after & rules::flags))
        fail(property::p5, describe(by) + " left a flag set");
      const Word bumped =
          static_cast<Word>((m.before & rules::counter_mask) + rules::counter_one) &
          rules::counter_mask;
      if (counter_moved && (by.kind != op_kind::set || !(m.before & rules::mustinc) ||
                            (m.after & rules::counter_mask) != bumped))
        fail(property::p5, describe(by) + " moved the counter without a look");
      if (mustinc_added && by.kind == op_kind::set)
        fail(property::p5, describe(by) + " set MUSTINC");
      if (by.kind == op_kind::peek || by.kind == op_kind::sample) {
        if (m.after != (m.before | rules::mustinc))
          fail(property::p4, describe(by) + " changed more than MUSTINC");
      }
    }
    for (std::size_t s : sets_)
      if (at(s).word == 0 && rules::valid_errno(at(s).err))
        fail(property::p5, describe(at(s)) + " returned 0");
  }

  // P6, by search over the orders that respect real time (Wing & Gong),
  // remembering (remaining operations, reference state) pairs that failed.
  bool linearizable() const {
    if (h_.ops.size() > 63) return false;
    failed_.clear();
    return linearize((std::uint64_t{1} << h_.ops.size()) - 1, reference_errseq<Word>{});
  }

  bool linearize(std::uint64_t remaining, const reference_errseq<Word>& ref) const {
    if (remaining == 0) return ref.word() == h_.final_word;
    if (failed_.contains({remaining, ref.word()})) return false;
    for (std::size_t i = 0; i < h_.ops.size(); ++i) {
      if (!(remaining >> i & 1)) continue;
      bool minimal = true;
      for (std::size_t j = 0; j < h_.ops.size() && minimal; ++j)
        minimal = !(remaining >> j & 1) || !precedes(at(j), at(i));
      if (!minimal) continue;
      reference_errseq<Word> next = ref;
      if (agrees(at(i), next) && linearize(remaining & ~(std::uint64_t{1} << i), next))
        return true;
    }
    failed_.insert({remaining, ref.word()});
    return false;
  }

  static bool agrees(const rec& r, reference_errseq<Word>& ref) {
    switch (r.kind) {
      case op_kind::set: return ref.set(r.err) == r.word;
      case op_kind::peek: return ref.peek() == r.word;
      case op_kind::sample: return ref.sample() == r.word;
      case op_kind::check: return ref.check(r.since_in) == r.reported;
      case op_kind::check_and_advance: {
        Word since = r.since_in;
        return ref.check_and_advance(since) == r.reported && since == r.since_out;
      }
    }
    return false;
  }

  std::string describe(const rec& r) const {
    std::string s = "t" + std::to_string(r.thread) + " " + op_name(r.kind);
    if (r.kind == op_kind::set) s += "(" + std::to_string(r.err) + ")";
    if (r.kind == op_kind::check || r.kind == op_kind::check_and_advance)
      s += "=" + std::to_string(r.reported);
    else
      s += "=" + std::to_string(static_cast<std::uint64_t>(r.word));
    s += " [" + std::to_string(r.first) + "," + std::to_string(r.last) + "]";
    return s;
  }

  struct key_hash {
    std::size_t operator()(const std::pair<std::uint64_t, Word>& k) const {
      return std::hash<std::uint64_t>{}(k.first * 1000003u ^ k.second);
    }
  };

  const history<Word>& h_;
  std::vector<std::size_t> sets_;
  mutable std::unordered_set<std::pair<std::uint64_t, Word>, key_hash> failed_;
};

// One line per operation, in the order they started, with their step times.
template <class Word>
std::string format_history(const history<Word>& h) {
  std::vector<const op_record<Word>*> order;
  for (const auto& r : h.ops) order.push_back(&r);
  std::stable_sort(order.begin(), order.end(),
                   [](auto* a, auto* b) { return a->first < b->first; });
  std::string s;
  for (const auto* rp : order) {
    const auto& r = *rp;
    s += "  t" + std::to_string(r.thread) + " [" + std::to_string(r.first) + "," +
         std::to_string(r.last) + "] " + op_name(r.kind);
    if (r.kind == op_kind::set) s += "(" + std::to_string(r.err) + ")";
    if (r.kind == op_kind::check || r.kind == op_kind::check_and_advance)
      s += "(since=" + hex(r.since_in) + ") = " + std::to_string(r.reported);
    else
      s += " = " + hex(r.word);
    if (r.kind == op_kind::check_and_advance) s += ", since -> " + hex(r.since_out);
    s += "\n";
  }
  s += "  word changes:";
  for (const auto& m : h.mods)
    s += " " + hex(m.before) + "->" + hex(m.after) + " (t" +
         std::to_string(h.ops[static_cast<std::size_t>(m.by)].thread) + ")";
  s += "\n  final word " + hex(h.final_word) + "\n";
  return s;
}

// Explores every interleaving of `sc` (or up to the first that breaks a
// property, with stop_at_violation). With `allowed` (P4), each interleaving's
// reports, leaving out sc.peekers, must be among them. `start`: how the
// guess slots start out.
template <class Word, class Rules = errseq_rules<Word>>
outcome explore(const scenario& sc, bool kernel_cas = false,
                const outcome* allowed = nullptr,
                bool stop_at_violation = false, guess_start<Word> start = {}) {
  outcome out;
  scheduler s;
  do {
    execution<Word, Rules> ex(sc, kernel_cas, start);
    const history<Word> h = ex.run(s);
    ++out.interleavings;
    out.guessed_ok += h.guessed_ok;
    out.guessed_failed += h.guessed_failed;
    history_checker<Word> c(h);
    std::string why;
    unsigned broken = c.check(why);
    auto mine = c.reports(sc.threads.size(), sc.peekers);
    if (allowed != nullptr && !allowed->reports.contains(mine)) {
      broken |= history_checker<Word>::bit(property::p4);
      why += std::string(property_name(property::p4)) +
             ": these reports are impossible without the peekers\n";
    }
    out.reports.insert(std::move(mine));
    if (broken != 0) {
      ++out.violating;
      for (int p = 0; p < property_count; ++p)
        if (broken >> p & 1) ++out.by_property[p];
      if (out.first_counterexample.empty())
        out.first_counterexample = why + format_history(h);
      if (stop_at_violation) break;
    }
  } while (s.advance());
  return out;
}

// The scenario with its peeker threads' operations (setup and epilogue too)
// removed; the threads stay, empty, so that indices keep their meaning.
inline scenario without_peekers(const scenario& sc) {
  scenario out = sc;
  out.name += " without peekers";
  auto is_peeker = [&sc](int t) {
    for (int p : sc.peekers)
      if (p == t) return true;
    return false;
  };
  for (int p : sc.peekers) out.threads[static_cast<std::size_t>(p)].clear();
  std::erase_if(out.setup, [&](const auto& s) { return is_peeker(s.first); });
  std::erase_if(out.epilogue, [&](const auto& s) { return is_peeker(s.first); });
  return out;
}

}  // namespace ovlfs::model
