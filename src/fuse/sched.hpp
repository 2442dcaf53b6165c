// How the daemon's threads are scheduled (-o sched=).
//
// A FUSE request is a round trip: the caller sleeps, a worker on the caller's CPU
// (one io_uring queue per CPU) answers, and the answer wakes the caller. The
// scheduler places a woken task on an idle CPU rather than on a busy one, and at
// that moment the worker still runs on the caller's CPU: so with normal threads
// every answer moves the caller to another, halted, CPU (and its next request to
// that CPU's worker). Waking a halted CPU costs more than the rest of a small
// request.
//
// A CPU that runs only SCHED_IDLE tasks counts as idle for that choice, and a
// woken normal task preempts a SCHED_IDLE one at once: with SCHED_IDLE threads,
// the caller stays on its CPU and runs as soon as it is answered.
//
// SCHED_IDLE has two costs, and ovlfs uses it only where neither applies:
//  - Next to a busy normal task *of its own scheduling group*, a SCHED_IDLE thread
//    gets almost no CPU time (next to other groups' tasks, its group's fair share).
//    So `auto` allows it only when the group is the daemon's own: the autogroup
//    of the session it leads (the daemonized mount calls setsid), with no CPU
//    cgroup around it.
//  - When the CPUs are busy, SCHED_IDLE threads are served later (a woken one
//    never preempts), and there is no idle CPU to keep callers from anyway. So
//    the threads are SCHED_IDLE only while the machine has idle CPU time: every
//    250 ms of requests, the daemon looks at /proc/stat and moves all its threads
//    to SCHED_IDLE or back to the policy it started with.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "overlay/params.hpp"  // SchedMode

namespace ovlfs {

// What decides `auto`, as read from /proc and /sys (read_sched_facts).
struct SchedFacts {
  bool autogroup = false;          // kernel.sched_autogroup_enabled is 1
  bool session_leader = false;     // the process leads its session (its autogroup)
  bool initial_cgroup_ns = false;  // cgroup paths in proc_cgroup are absolute
  std::string proc_cgroup;         // /proc/self/cgroup
  // cgroup.subtree_control of the cgroup2 root; nullopt: no cgroup2 mount found.
  std::optional<std::string> v2_root_subtree;
};

struct SchedChoice {
  bool idle = false;  // SCHED_IDLE allowed (while CPUs idle); else the policy stays as started
  std::string why;    // one phrase, for `ovlfs -d`
};

// The policy for `mode`, given `facts` (pure: the tests feed it).
SchedChoice choose_sched(SchedMode mode, const SchedFacts& facts);

// The facts about the calling process.
SchedFacts read_sched_facts();

// The machine's CPU time (the "cpu" line of /proc/stat), in ticks.
struct CpuTimes {
  std::uint64_t idle = 0;   // idle + iowait
  std::uint64_t total = 0;  // every field but guest time (already in user time)
  unsigned cpus = 0;        // "cpuN" lines
};
std::optional<CpuTimes> parse_proc_stat(std::string_view text);

// Whether the threads should be SCHED_IDLE after the interval from `a` to `b`,
// being SCHED_IDLE now or not: yes with half a CPU idle on average, no below a
// quarter; in between, as they are.
bool idle_wanted(const CpuTimes& a, const CpuTimes& b, bool idle_now);

// Allows SCHED_IDLE for the process when `choice` says so, once a thread has shown
// that it can go back from SCHED_IDLE to the calling thread's policy (SCHED_OTHER
// or SCHED_BATCH; leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE), and makes
// the threads SCHED_IDLE now. Call it while the process has one thread. Returns
// why it could not ("" when allowed, or not asked for).
std::string allow_sched_idle(const SchedChoice& choice);

// Called with every request: every 250 ms, moves all threads to SCHED_IDLE or back
// as idle_wanted says. A few nanoseconds otherwise.
void sched_tick();

// Whether SCHED_IDLE is allowed, and whether the threads are SCHED_IDLE now.
bool sched_idle_allowed();
bool sched_idle_now();

}  // namespace ovlfs
