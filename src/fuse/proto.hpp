// The raw FUSE protocol (<linux/fuse.h>) where libfuse 3.14 has no API: the
// headers every message starts with. Layouts of protocol 7.42 (x86-64, as the
// kernel's uapi header defines them).
#pragma once

#include <cstdint>

namespace ovlfs::fuse_proto {

struct InHeader {  // struct fuse_in_header
  std::uint32_t len, opcode;
  std::uint64_t unique, nodeid;
  std::uint32_t uid, gid, pid;
  std::uint16_t total_extlen, padding;
};
struct OutHeader {  // struct fuse_out_header
  std::uint32_t len;
  std::int32_t error;
  std::uint64_t unique;
};
static_assert(sizeof(InHeader) == 40 && sizeof(OutHeader) == 16);

}  // namespace ovlfs::fuse_proto
