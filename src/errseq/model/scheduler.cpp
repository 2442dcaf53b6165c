// Fibers on ucontext, with the annotations ThreadSanitizer and
// AddressSanitizer need to follow stack switches (for OVLFS_SANITIZE builds).

#include "scheduler.hpp"

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define OVLFS_MODEL_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define OVLFS_MODEL_ASAN 1
#endif

namespace ovlfs::model {

namespace {
constexpr std::size_t stack_size = 256 * 1024;
scheduler* active = nullptr;  // the scheduler inside run(), if any

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "model scheduler: %s\n", what);
  std::abort();
}
}  // namespace

struct scheduler::fiber {
  ucontext_t context{};
  std::unique_ptr<char[]> stack{new char[stack_size]};
  std::function<void()> body;
  bool done = false;
#ifdef OVLFS_MODEL_TSAN
  void* tsan = __tsan_create_fiber(0);
  ~fiber() { __tsan_destroy_fiber(tsan); }
#endif
#ifdef OVLFS_MODEL_ASAN
  void* fake_stack = nullptr;
#endif
};

struct scheduler::native {
  ucontext_t context{};
#ifdef OVLFS_MODEL_TSAN
  void* tsan = nullptr;
#endif
#ifdef OVLFS_MODEL_ASAN
  const void* stack_bottom = nullptr;
  std::size_t stack_size = 0;
#endif
};

scheduler::scheduler() : native_(new native) {}
scheduler::~scheduler() = default;

void scheduler::step() {
  if (active == nullptr || active->running_ < 0) return;
  active->yield_to_scheduler();
}

int scheduler::running_thread() {
  return active == nullptr ? -1 : active->running_;
}

// Switches from the scheduler's stack to fiber i until it yields or ends.
void scheduler::resume(std::size_t i) {
  fiber& f = *fibers_[i];
  running_ = static_cast<int>(i);
#ifdef OVLFS_MODEL_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack.get(), stack_size);
#endif
#ifdef OVLFS_MODEL_TSAN
  __tsan_switch_to_fiber(f.tsan, 0);
#endif
  if (swapcontext(&native_->context, &f.context) != 0) fail("swapcontext");
#ifdef OVLFS_MODEL_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  running_ = -1;
}

// Switches from the running fiber back to the scheduler; returns when the
// scheduler resumes this fiber.
void scheduler::yield_to_scheduler() {
  fiber& f = *fibers_[static_cast<std::size_t>(running_)];
#ifdef OVLFS_MODEL_ASAN
  __sanitizer_start_switch_fiber(&f.fake_stack, native_->stack_bottom,
                                 native_->stack_size);
#endif
#ifdef OVLFS_MODEL_TSAN
  __tsan_switch_to_fiber(native_->tsan, 0);
#endif
  if (swapcontext(&f.context, &native_->context) != 0) fail("swapcontext");
#ifdef OVLFS_MODEL_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &native_->stack_bottom,
                                  &native_->stack_size);
#endif
}

void scheduler::trampoline() {
  scheduler& s = *active;
  fiber& f = *s.fibers_[static_cast<std::size_t>(s.running_)];
#ifdef OVLFS_MODEL_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &s.native_->stack_bottom,
                                  &s.native_->stack_size);
#endif
  f.body();
  f.done = true;
#ifdef OVLFS_MODEL_ASAN
  __sanitizer_start_switch_fiber(nullptr, s.native_->stack_bottom,
                                 s.native_->stack_size);
#endif
#ifdef OVLFS_MODEL_TSAN
  __tsan_switch_to_fiber(s.native_->tsan, 0);
#endif
  // Switch away for good rather than return through uc_link: a return would
  // run this function's exit hooks (ThreadSanitizer's) on the scheduler's
  // stack after the switch above.
  setcontext(&s.native_->context);
  fail("setcontext");
}

void scheduler::run(std::vector<std::function<void()>> bodies) {
  if (active != nullptr) fail("nested run()");
  active = this;
#ifdef OVLFS_MODEL_TSAN
  native_->tsan = __tsan_get_current_fiber();
#endif
  while (fibers_.size() < bodies.size())
    fibers_.push_back(std::make_unique<fiber>());
  for (std::size_t i = 0; i < bodies.size(); ++i) {
    fiber& f = *fibers_[i];
    f.body = std::move(bodies[i]);
    f.done = false;
#ifdef OVLFS_MODEL_TSAN
    // A fresh TSan fiber per execution: an old one keeps its whole history.
    __tsan_destroy_fiber(f.tsan);
    f.tsan = __tsan_create_fiber(0);
#endif
    if (getcontext(&f.context) != 0) fail("getcontext");
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = stack_size;
    f.context.uc_link = nullptr;  // trampoline() never returns
    makecontext(&f.context, &scheduler::trampoline, 0);
  }
  // Bring every thread to its first atomic step; that is not a choice.
  for (std::size_t i = 0; i < bodies.size(); ++i) resume(i);

  depth_ = 0;
  std::vector<std::size_t> runnable;
  for (;;) {
    runnable.clear();
    for (std::size_t i = 0; i < bodies.size(); ++i)
      if (!fibers_[i]->done) runnable.push_back(i);
    if (runnable.empty()) break;
    if (depth_ == trail_.size()) trail_.push_back({0, runnable.size()});
    const choice c = trail_[depth_++];
    if (c.options != runnable.size()) fail("thread bodies are not deterministic");
    resume(runnable[c.taken]);
  }
  if (depth_ != trail_.size()) fail("schedule ended early");
  active = nullptr;
}

bool scheduler::advance() {
  while (!trail_.empty() && trail_.back().taken + 1 >= trail_.back().options)
    trail_.pop_back();
  if (trail_.empty()) return false;
  ++trail_.back().taken;
  return true;
}

}  // namespace ovlfs::model
