// A deterministic scheduler that enumerates every interleaving of a few
// logical threads' atomic steps.
//
// Each logical thread runs as a fiber (ucontext) on the calling OS thread, so
// exactly one runs at a time and plain memory is enough. A thread calls
// scheduler::step() right before each atomic step (model_atomic does); the
// scheduler then decides which thread performs the next step. run() executes
// one complete interleaving; advance() moves, depth-first, to the next
// schedule not yet run. Repeat run() until advance() returns false and every
// order of the threads' steps has been executed exactly once.
//
// Thread bodies must be deterministic: given the same schedule they must make
// the same calls, or the recorded choices stop matching (checked).

#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <vector>

namespace ovlfs::model {

class scheduler {
 public:
  scheduler();
  ~scheduler();
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  // Runs `bodies` to completion, one atomic step at a time, following the
  // current schedule (and the first runnable thread at each new choice).
  void run(std::vector<std::function<void()>> bodies);

  // Moves to the next schedule in depth-first order. Returns false once every
  // schedule has been run.
  bool advance();

  // Called by a thread right before an atomic step: returns when the
  // scheduler lets this thread take the step. Outside run() (or on the
  // scheduler's own stack) it returns at once.
  static void step();

  // The logical thread that is running, or -1 outside run().
  static int running_thread();

 private:
  struct fiber;
  struct choice {
    std::size_t taken;
    std::size_t options;
  };
  static void trampoline();
  void resume(std::size_t i);
  void yield_to_scheduler();

  std::vector<std::unique_ptr<fiber>> fibers_;
  std::vector<choice> trail_;
  std::size_t depth_ = 0;
  int running_ = -1;
  struct native;
  std::unique_ptr<native> native_;
};

}  // namespace ovlfs::model
