// `ovlfs sync MNT` and `ovlfs status MNT [--json]`: asking a mounted ovlfs, through
// its ioctls (include/ovlfs/ioctl.h), to sync or to report its state.
#pragma once

namespace ovlfs::cli {

// argv[0] is the subcommand's name ("sync", "status"). Return the exit status.
int sync_main(int argc, char** argv);
int status_main(int argc, char** argv);

}  // namespace ovlfs::cli
