// The FUSE adapter: serves an Overlay through the kernel's FUSE with libfuse's
// low-level API. The only code in ovlfs that includes libfuse; it holds no overlay
// logic, only the translation between FUSE requests and Overlay calls.
#pragma once

#include <string>
#include <vector>

#include "overlay/overlay.hpp"

namespace ovlfs {

struct ServeOptions {
  std::string mountpoint;
  std::string source = "ovlfs";
  bool foreground = false;
  bool debug = false;
};

// Mounts `ovl` at opts.mountpoint, detaches into the background unless
// opts.foreground (the mount is ready when this process's parent returns), and
// serves requests until the filesystem is unmounted. Returns the exit status.
int fuse_serve(Overlay& ovl, const ServeOptions& opts);

}  // namespace ovlfs
