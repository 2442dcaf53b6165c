// Results that carry the exact errno: every fallible call in ovlfs returns one.
#pragma once

#include <cerrno>
#include <expected>

namespace ovlfs {

// A value, or the positive errno that explains why there is none.
template <class T>
using Result = std::expected<T, int>;

// Success, or a positive errno.
using Status = std::expected<void, int>;

// The failure of a Result or Status: `return fail(ENOENT);`.
inline std::unexpected<int> fail(int err) noexcept { return std::unexpected<int>(err); }

// The errno left by the last failed libc call, as a failure.
inline std::unexpected<int> fail_errno() noexcept { return std::unexpected<int>(errno); }

// Propagates a failure to the caller: TRY(x) evaluates x and returns its error.
#define OVL_TRY(expr)                                    \
  do {                                                   \
    if (auto ovl_try_r_ = (expr); !ovl_try_r_)           \
      return ::ovlfs::fail(ovl_try_r_.error());          \
  } while (0)

}  // namespace ovlfs
