// The sequential reference model of SPEC.md 1.2: plain fields, no atomics,
// no bit arithmetic beyond packing the fields into the documented layout so
// that its results compare with the real ones.

#pragma once

#include <cstdint>

namespace ovlfs::model {

template <class Word>
struct reference_errseq {
  static constexpr unsigned counter_bits = sizeof(Word) * 8 - 14;

  Word counter = 0;  // number of visible changes, modulo 2^counter_bits
  int err = 0;       // latest errno; 0 only while never failed
  bool seen = false;     // the latest error was reported by check_and_advance
  bool mustinc = false;  // someone took a cursor since the latest set

  Word word() const {
    return static_cast<Word>(counter << 14 | Word{mustinc} << 13 |
                             Word{seen} << 12 | static_cast<Word>(err));
  }
  static Word counter_of(Word w) { return w >> 14; }
  static int errno_of(Word w) { return static_cast<int>(w & 0xfff); }

  // A cursor describes the current error if counter and errno match.
  bool describes(Word since) const {
    return counter_of(since) == counter && errno_of(since) == err;
  }

  Word set(int e) {
    if (mustinc) counter = (counter + 1) & ((Word{1} << counter_bits) - 1);
    err = e;
    seen = mustinc = false;
    return word();
  }
  Word peek() {
    if (err != 0) mustinc = true;
    return word();
  }
  Word sample() {
    const Word w = peek();
    return seen ? w : 0;
  }
  int check(Word since) const { return describes(since) ? 0 : err; }
  int check_and_advance(Word& since) {
    if (describes(since)) return 0;
    seen = mustinc = true;
    since = word();
    return err;
  }

  static reference_errseq from_word(Word w) {
    reference_errseq r;
    r.counter = counter_of(w);
    r.err = errno_of(w);
    r.seen = (w >> 12 & 1) != 0;
    r.mustinc = (w >> 13 & 1) != 0;
    return r;
  }
};

}  // namespace ovlfs::model
