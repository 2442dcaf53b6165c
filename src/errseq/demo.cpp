// errseq_demo: errseq's semantics on one scenario, step by step.
//
// One error word stands for an upper filesystem. alice, bob and carol are
// open files (watchers that report each error once), peeker is a volatile
// mount (it wants only errors after it started, and must not hide older ones
// from anybody), dave is a file opened late.

#include "ovlfs/errseq.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

namespace {

using errseq = ovlfs::errseq64;
using rules = errseq::rules;

std::string errno_name(int err) {
  if (err == 0) return "0";
  const char* name = strerrorname_np(err);
  return name ? name : std::to_string(err);
}

std::string describe(std::uint64_t w) {
  if (w == 0) return "0 (never failed)";
  std::string s = "#" + std::to_string(rules::counter_of(w)) + " " +
                  errno_name(rules::errno_of(w));
  if (w & rules::seen) s += " SEEN";
  if (w & rules::mustinc) s += " MUSTINC";
  return s;
}

void line(std::string_view who, std::string_view what, std::string_view result,
          std::string_view why) {
  std::printf("  %-7.*s %-20.*s %-6.*s %.*s\n", int(who.size()), who.data(),
              int(what.size()), what.data(), int(result.size()),
              result.data(), int(why.size()), why.data());
}

struct watcher {
  const char* name;
  std::uint64_t since = 0;
};

void report(errseq& e, watcher& w, std::string_view why) {
  line(w.name, "check_and_advance", errno_name(e.check_and_advance(w.since)),
       why);
}

void set(errseq& e, int err, std::string_view why) {
  const std::uint64_t word = e.set(err);
  std::string text = std::string(why);
  if (!text.empty()) text += "; ";
  text += "word: " + describe(word);
  line("writer", "set(" + errno_name(err) + ")", "", text);
}

}  // namespace

int main() {
  errseq e;
  watcher alice{"alice"}, bob{"bob"}, carol{"carol"}, dave{"dave"};
  std::uint64_t peeker = 0;

  std::printf("errseq demo: one error word; alice, bob, carol, dave watch it"
              " (each reports an error once),\npeeker only looks (it never"
              " hides an error from the others).\n\n");
  std::printf("  %-7s %-20s %-6s %s\n", "who", "call", "result", "why");

  alice.since = e.sample();
  bob.since = e.sample();
  line("alice", "sample()", "0", "nothing failed yet: start at the beginning");
  line("bob", "sample()", "0", "same");
  set(e, EIO, "writeback fails");
  carol.since = e.sample();
  line("carol", "sample()", std::to_string(carol.since),
       "nobody reported EIO yet, so carol starts before it");
  peeker = e.peek();
  line("peeker", "peek()", "", "cursor after EIO: sets MUSTINC, not SEEN");
  report(e, alice, "new to alice; the word is now SEEN");
  report(e, alice, "once per cursor");
  dave.since = e.sample();
  line("dave", "sample()", "", "EIO was reported: dave starts after it");
  report(e, bob, "new to bob: reporting never consumes it for others");
  report(e, carol, "");
  report(e, dave, "dave opened after EIO was seen");
  line("peeker", "check(cursor)", errno_name(e.check(peeker)),
       "nothing new since its peek");

  set(e, EIO, "the same errno again, but cursors exist: the counter bumps");
  line("peeker", "check(cursor)", errno_name(e.check(peeker)),
       "a new error, though the errno is the same");
  report(e, dave, "dave sees errors after he opened");
  set(e, ENOSPC, "");
  set(e, EIO, "nobody looked in between: the two coalesce");
  report(e, alice, "one report, the latest errno");
  report(e, alice, "");
  report(e, bob, "");
  return 0;
}
