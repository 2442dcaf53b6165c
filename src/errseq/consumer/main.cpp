// Uses the installed header: one error, two watchers.
#include <ovlfs/errseq.hpp>

#include <cerrno>
#include <cstdint>
#include <cstdio>

int main() {
  ovlfs::errseq64 e;
  std::uint64_t a = e.sample();
  std::uint64_t b = e.sample();
  e.set(EIO);
  const bool ok = e.check_and_advance(a) == EIO && e.check_and_advance(a) == 0 &&
                  e.check_and_advance(b) == EIO && e.set(0) == 0;
  std::printf("consumer: %s\n", ok ? "ok" : "WRONG");
  return ok ? 0 : 1;
}
