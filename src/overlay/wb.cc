// Writeback errors (SPEC 2): work in progress.
#include "overlay/overlay.hpp"

namespace ovlfs {

void Overlay::wb_start() {}
void Overlay::wb_finish() {}
void Overlay::wb_opendir(DirHandle*) {}
Status Overlay::wb_fsyncdir(DirHandle* dh, bool datasync) { return fsyncdir(dh, datasync); }
void Overlay::wb_status(ovlfs_status&) const {}
bool Overlay::wb_read_only() const { return false; }

}  // namespace ovlfs
