// errseq_stress: many threads, or many processes (fork) on one MAP_SHARED
// word, exercising every operation at once.
//
// Roles, all on one errseq word in a shared mapping:
//   writers   take turns recording rounds 1..R (errno 5, 5, 7, 5, 5, 7, ...:
//             the same errno twice in a row too); before round n each waits
//             until every watcher has acknowledged round n-1.
//   watchers  take a cursor with sample() before round 1, then poll
//             check_and_advance(): each must report every round exactly
//             once, with its errno, and never before that round's set().
//   peekers   peek(), then check() that cursor: no report before a new set()
//             started, and a report once a set() that started after the peek
//             has returned.
//   samplers  new watchers: while the latest round is acknowledged by every
//             watcher (so it is SEEN), a sample() cursor must not report it.
//
// Usage: errseq_stress threads|processes 32|64 ROUNDS [WATCHERS PEEKERS SAMPLERS]
// Exit status 0 when every check held; messages go to stderr.

#include "ovlfs/errseq.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr int max_watchers = 16;
constexpr int writers = 2;
int watchers = 8;  // these three may be changed on the command line
int peekers = 3;
int samplers = 3;
constexpr auto time_limit = std::chrono::seconds(60);

using clock_type = std::chrono::steady_clock;  // CLOCK_MONOTONIC: one for all processes

// Everything the roles share, in one MAP_SHARED mapping. Lock-free atomics
// are address-free, so they work across processes.
struct shared_state {
  alignas(64) std::uint64_t word64 = 0;
  alignas(64) std::uint32_t word32 = 0;
  alignas(64) std::atomic<std::uint64_t> started{0};    // rounds whose set() began
  alignas(64) std::atomic<std::uint64_t> published{0};  // rounds whose set() returned
  alignas(64) std::atomic<std::uint64_t> acked[max_watchers] = {};
  alignas(64) std::atomic<int> ready{0};  // watchers holding their first cursor
  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::atomic<std::uint64_t> peek_checks{0};
  std::atomic<std::uint64_t> peek_reports{0};
  std::atomic<std::uint64_t> sample_checks{0};
  clock_type::rep deadline = 0;
  std::uint64_t rounds = 0;
  char message[512] = {};
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

shared_state* g = nullptr;

void fail(const char* fmt, ...) {
  if (g->failures.fetch_add(1) == 0) {
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(g->message, sizeof g->message, fmt, ap);
    va_end(ap);
  }
  g->stop.store(true);
}

bool should_stop() {
  if (g->stop.load(std::memory_order_relaxed)) return true;
  if (clock_type::now().time_since_epoch().count() > g->deadline) {
    fail("time limit: no progress (started %llu, published %llu)",
         static_cast<unsigned long long>(g->started.load()),
         static_cast<unsigned long long>(g->published.load()));
    return true;
  }
  return false;
}

int errno_of_round(std::uint64_t n) { return n % 3 == 0 ? 7 : 5; }

std::uint64_t min_acked() {
  std::uint64_t m = UINT64_MAX;
  for (int w = 0; w < watchers; ++w) m = std::min(m, g->acked[w].load());
  return m;
}

template <class Word>
Word& shared_word();
template <>
std::uint64_t& shared_word<std::uint64_t>() { return g->word64; }
template <>
std::uint32_t& shared_word<std::uint32_t>() { return g->word32; }

template <class Word>
void writer(int k) {
  ovlfs::basic_errseq_ref<Word> e(shared_word<Word>());
  while (g->ready.load() < watchers)
    if (should_stop()) return; else sched_yield();
  for (std::uint64_t n = 1 + static_cast<std::uint64_t>(k); n <= g->rounds; n += writers) {
    while (min_acked() < n - 1)
      if (should_stop()) return; else sched_yield();
    g->started.store(n);
    if (e.set(errno_of_round(n)) == 0) fail("writer %d: set rejected", k);
    g->published.store(n);
  }
}

template <class Word>
void watcher(int w) {
  ovlfs::basic_errseq_ref<Word> e(shared_word<Word>());
  Word since = e.sample();
  if (since != 0) fail("watcher %d: first cursor %#llx, want 0", w, static_cast<unsigned long long>(since));
  g->ready.fetch_add(1);
  std::uint64_t reported = 0;
  while (reported < g->rounds && !should_stop()) {
    const int err = e.check_and_advance(since);
    if (err == 0) {
      sched_yield();
      continue;
    }
    const std::uint64_t n = ++reported;
    const std::uint64_t started = g->started.load();
    if (started < n)
      fail("watcher %d: report %llu but only %llu set() began (reported twice?)", w,
           static_cast<unsigned long long>(n), static_cast<unsigned long long>(started));
    else if (err != errno_of_round(n))
      fail("watcher %d: round %llu reported errno %d, want %d", w,
           static_cast<unsigned long long>(n), err, errno_of_round(n));
    g->acked[w].store(n);
  }
  // Every round reported once; nothing left over.
  if (!should_stop() && e.check_and_advance(since) != 0)
    fail("watcher %d: a report after the last round", w);
}

template <class Word>
void peeker(int p) {
  ovlfs::basic_errseq_ref<Word> e(shared_word<Word>());
  while (g->published.load() < g->rounds && !should_stop()) {
    const std::uint64_t done_before = g->published.load();  // returned before peek
    const Word cursor = e.peek();
    const std::uint64_t began = g->started.load();  // rounds after this begin later
    for (;;) {
      const std::uint64_t published = g->published.load();
      const int err = e.check(cursor);
      const std::uint64_t started = g->started.load();
      g->peek_checks.fetch_add(1, std::memory_order_relaxed);
      if (err != 0 && started <= done_before)
        fail("peeker %d: report %d with no set() after its peek", p, err);
      if (err == 0 && published > began)
        fail("peeker %d: missed round %llu, which began after its peek", p,
             static_cast<unsigned long long>(began + 1));
      if (err != 0) g->peek_reports.fetch_add(1, std::memory_order_relaxed);
      if (err != 0 || published >= g->rounds || should_stop()) break;
      sched_yield();
    }
  }
}

template <class Word>
void sampler(int s) {
  ovlfs::basic_errseq_ref<Word> e(shared_word<Word>());
  while (g->published.load() < g->rounds && !should_stop()) {
    const std::uint64_t n = g->started.load();
    const bool all_acked = n > 0 && min_acked() >= n;  // round n is SEEN
    Word cursor = e.sample();
    const int err = e.check(cursor);
    if (all_acked && g->started.load() == n) {
      g->sample_checks.fetch_add(1, std::memory_order_relaxed);
      if (cursor == 0 || err != 0)
        fail("sampler %d: round %llu was reported, yet a new cursor %#llx sees %d", s,
             static_cast<unsigned long long>(n), static_cast<unsigned long long>(cursor), err);
    }
    sched_yield();
  }
}

template <class Word>
std::vector<void (*)(int)> roles_and_args(std::vector<int>& args) {
  std::vector<void (*)(int)> roles;
  auto add = [&](void (*f)(int), int count) {
    for (int i = 0; i < count; ++i) {
      roles.push_back(f);
      args.push_back(i);
    }
  };
  add(&watcher<Word>, watchers);
  add(&writer<Word>, writers);
  add(&peeker<Word>, peekers);
  add(&sampler<Word>, samplers);
  return roles;
}

template <class Word>
void run(bool processes) {
  std::vector<int> args;
  const auto roles = roles_and_args<Word>(args);
  if (!processes) {
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < roles.size(); ++i) threads.emplace_back(roles[i], args[i]);
    for (auto& t : threads) t.join();
    return;
  }
  std::vector<pid_t> children;
  for (std::size_t i = 0; i < roles.size(); ++i) {
    const pid_t pid = fork();
    if (pid < 0) {
      fail("fork: %s", std::strerror(errno));
      break;
    }
    if (pid == 0) {
      roles[i](args[i]);
      _exit(0);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
      fail("child %d died (status %#x)", static_cast<int>(pid), status);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4 && argc != 7) {
    std::fprintf(stderr,
                 "usage: %s threads|processes 32|64 ROUNDS [WATCHERS PEEKERS SAMPLERS]\n",
                 argv[0]);
    return 2;
  }
  if (argc == 7) {
    watchers = std::atoi(argv[4]);
    peekers = std::atoi(argv[5]);
    samplers = std::atoi(argv[6]);
    if (watchers < 1 || watchers > max_watchers || peekers < 0 || samplers < 0) {
      std::fprintf(stderr, "bad role counts\n");
      return 2;
    }
  }
  const bool processes = std::string_view(argv[1]) == "processes";
  const bool wide = std::string_view(argv[2]) == "64";
  void* map = mmap(nullptr, sizeof(shared_state), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED) {
    std::perror("mmap");
    return 1;
  }
  g = new (map) shared_state;  // before any fork or thread; the word stays 0
  g->rounds = std::strtoull(argv[3], nullptr, 10);
  g->deadline = (clock_type::now() + time_limit).time_since_epoch().count();

  const auto t0 = clock_type::now();
  if (wide)
    run<std::uint64_t>(processes);
  else
    run<std::uint32_t>(processes);
  const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();

  for (int w = 0; w < watchers; ++w)
    if (g->failures.load() == 0 && g->acked[w].load() != g->rounds)
      fail("watcher %d acknowledged %llu of %llu rounds", w,
           static_cast<unsigned long long>(g->acked[w].load()),
           static_cast<unsigned long long>(g->rounds));
  std::printf("errseq%s stress, %s: %llu rounds x %d watchers (%d writers, %d peekers, "
              "%d samplers) in %.2f s; peek checks %llu (%llu reports), seen-sample "
              "checks %llu\n",
              wide ? "64" : "32", processes ? "processes" : "threads",
              static_cast<unsigned long long>(g->rounds), watchers, writers, peekers,
              samplers, seconds, static_cast<unsigned long long>(g->peek_checks.load()),
              static_cast<unsigned long long>(g->peek_reports.load()),
              static_cast<unsigned long long>(g->sample_checks.load()));
  if (g->failures.load() != 0) {
    std::fprintf(stderr, "FAILED (%d failures), first: %s\n", g->failures.load(), g->message);
    return 1;
  }
  return 0;
}
