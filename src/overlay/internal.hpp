// Helpers shared by the overlay's files; not part of the adapter's API.
#pragma once

#include <fcntl.h>

#include <string_view>

namespace ovlfs {

// Flags of every O_PATH open of a layer object: never follow, never leak.
inline constexpr int kPathFlags = O_PATH | O_NOFOLLOW;
// Flags of a stat of an O_PATH fd itself.
inline constexpr int kStatFd = AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW;
// sync_file_range(2) flags: write the range and wait for it, reporting its errors.
inline constexpr unsigned kWriteAndWait =
    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER;

// The overlay's private xattr names, after "trusted.overlay." or "user.overlay.".
inline constexpr const char* kXattrOpaque = "opaque";
inline constexpr const char* kXattrRedirect = "redirect";
inline constexpr const char* kXattrOrigin = "origin";
inline constexpr const char* kXattrImpure = "impure";
// The client's xattr the kernel asks for before every first write of a file.
inline constexpr std::string_view kXattrCaps = "security.capability";

// AUFS-style whiteouts, as container storage writes image layers for a mount
// program (and fuse-overlayfs writes them where it cannot mknod): a file
// ".wh.NAME" in a layer directory hides NAME of that layer and the layers below,
// and a file ".wh..wh..opq" makes its directory opaque. No ".wh." name is ever
// visible through the mount, nor can one be made through it.
inline constexpr std::string_view kAufsPrefix = ".wh.";
inline constexpr const char* kAufsOpaque = ".wh..wh..opq";
inline bool is_aufs_name(std::string_view name) { return name.starts_with(kAufsPrefix); }
// The opaque xattrs of other overlay formats, honoured besides the mount's own:
// the kernel's unprivileged one, and fuse-overlayfs's (its xattrs, all under
// "user.fuseoverlayfs.", are hidden from clients too).
inline constexpr const char* kXattrUserOpaque = "user.overlay.opaque";
inline constexpr const char* kXattrFuseOvlOpaque = "user.fuseoverlayfs.opaque";
inline constexpr std::string_view kFuseOvlPrefix = "user.fuseoverlayfs.";

// Longest redirect the overlay writes or follows (the kernel's default).
inline constexpr std::size_t kRedirectMax = 256;

// A redirect xattr's value is untrusted layer content: a single name, or an
// absolute path of names, without "." or ".." or empty components.
bool redirect_is_valid(std::string_view r);

}  // namespace ovlfs
