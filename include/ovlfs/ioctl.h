/* ovlfs/ioctl.h: the ioctls of an ovlfs mount, for container tools (C and C++).
 *
 * Both work on any file or directory of the mount, opened read-only or not, so a
 * process inside a container can call them on its own "/":
 *
 *   int fd = open("/", O_RDONLY | O_DIRECTORY);
 *   if (ioctl(fd, OVLFS_IOC_SYNCFS) < 0) perror("syncfs");   // EIO, ENOSPC, ...
 *
 * OVLFS_IOC_SYNCFS is syncfs(2) of the mount with ovlfs's contract (SPEC.md
 * section 2). The kernel does not pass a plain syncfs(2) on a FUSE mount to the
 * filesystem (it returns 0 there), so this ioctl, and `ovlfs sync MNT` which calls
 * it, is how a caller learns of writeback errors of the whole mount:
 *  - volatile mount: fails with EIO on every call once the upper filesystem has had
 *    a writeback error since the mount; never syncs the upper filesystem;
 *  - other mounts: syncs the upper filesystem, then fails with the error's errno
 *    once per open file description and once for the first caller in the mount.
 *
 * OVLFS_IOC_STATUS fills struct ovlfs_status (what `ovlfs status` prints).
 *
 * The numbers use _IO/_IOR with a fixed-size struct so that the kernel's
 * restricted FUSE ioctl (which takes the size and direction from the number)
 * passes them through. The struct only grows at its end, within its reserved
 * space; `version` says which fields are filled.
 */
#ifndef OVLFS_IOCTL_H
#define OVLFS_IOCTL_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define OVLFS_IOC_MAGIC 0xB9

#define OVLFS_STATUS_VERSION 1

/* ovlfs_status.flags */
#define OVLFS_STATUS_HAS_UPPER 0x1u   /* the mount has an upper layer */
#define OVLFS_STATUS_VOLATILE 0x2u    /* mounted with -o volatile */
#define OVLFS_STATUS_REMOUNT_RO 0x4u  /* mounted with -o errors=remount-ro */
#define OVLFS_STATUS_READ_ONLY 0x8u   /* writes fail with EROFS now (ro, or remount-ro after an error) */
#define OVLFS_STATUS_SHARED 0x10u     /* attached to the upper's shared error record */
#define OVLFS_STATUS_HAS_UUID 0x20u   /* upper_uuid is the upper filesystem's UUID */
#define OVLFS_STATUS_IO_URING 0x40u   /* requests come through FUSE over io_uring */
#define OVLFS_STATUS_PASSTHROUGH 0x80u /* the kernel accepted FUSE passthrough */
#define OVLFS_STATUS_SCHED_IDLE_ALLOWED 0x100u /* -o sched= allows SCHED_IDLE threads */
#define OVLFS_STATUS_SCHED_IDLE 0x200u /* and they are SCHED_IDLE now (the CPUs have idle time) */
#define OVLFS_STATUS_USERXATTR 0x400u /* overlay metadata in user.overlay.* (asked, or no trusted.*) */
#define OVLFS_STATUS_AUFS_WHITEOUTS 0x800u /* whiteouts are `.wh.` files (no mknod of 0:0) */

struct ovlfs_status {
	__u32 version;          /* OVLFS_STATUS_VERSION */
	__u32 flags;            /* OVLFS_STATUS_* */
	__u32 upper_major;      /* the upper filesystem's device */
	__u32 upper_minor;
	__u8 upper_uuid[16];    /* and its UUID (FS_IOC_GETFSUUID), when it has one */
	__s32 pid;              /* the ovlfs daemon serving this mount */
	__u32 writeback_ms;     /* -o writeback_interval */

	/* The upper filesystem, as every ovlfs process on this host that uses it sees
	 * it (shared memory, this boot). */
	__u64 upper_errseq;     /* its errseq word (64-bit layout, SPEC 1.1) */
	__u64 upper_errors;     /* writeback errors recorded, by any ovlfs process */
	__s32 upper_errno;      /* errno of the latest one (0: none) */
	__u32 upper_time_nsec;  /* when it was recorded (CLOCK_REALTIME) */
	__s64 upper_time_sec;

	/* This mount: errors since it was mounted. */
	__u64 mount_cursor;     /* the upper's errseq as peeked at mount */
	__u64 mount_errors;     /* errors recorded on the upper since the mount */
	__s32 mount_errno;      /* errno of the latest upper error since the mount (0: none) */
	__u32 reserved0;
	__u64 dirty_files;      /* upper files written and not yet written back */
	__u64 writeback_passes; /* passes of the writeback thread */
	__u64 file_errors;      /* errors this mount found in its upper files */

	/* Calls this daemon made at its host-I/O boundary (on the upper). A volatile
	 * mount never makes the first three. */
	__u64 host_fsync;
	__u64 host_fdatasync;
	__u64 host_syncfs;
	__u64 host_sync_file_range;

	char shm_name[64];      /* the shared record: /dev/shm/<shm_name> */
	__u64 local_errors;     /* of file_errors, those kept as their file's own: EIO from a
	                         * direct write that could not drop cached pages, which the
	                         * kernel puts in that file's errseq only, not the upper's */
	__u64 reserved[15];
};

#define OVLFS_IOC_SYNCFS _IO(OVLFS_IOC_MAGIC, 1)
#define OVLFS_IOC_STATUS _IOR(OVLFS_IOC_MAGIC, 2, struct ovlfs_status)

#endif /* OVLFS_IOCTL_H */
