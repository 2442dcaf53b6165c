/* wbprobe: a tiny static program that test_podman_wb.py runs inside a container
 * (whose image holds only busybox) to hold file descriptors across a writeback error
 * and to call what busybox cannot: fsync and fdatasync on a given open file
 * description, syncfs(2), and ovlfs's OVLFS_IOC_SYNCFS ioctl (include/ovlfs/ioctl.h).
 *
 * Every argument is one step, its fields separated by '|':
 *
 *   LABEL|create|NAME|PATH        open(PATH, O_RDWR|O_CREAT|O_EXCL), kept as NAME
 *   LABEL|open|NAME|PATH|rw|ro|dir
 *   LABEL|fallocate|NAME|BYTES    posix_fallocate from offset 0
 *   LABEL|pwrite|NAME|BYTES       BYTES of a pattern at offset 0 (prints the count)
 *   LABEL|flush|NAME              sync_file_range(WRITE|WAIT_BEFORE|WAIT_AFTER): hands
 *                                 dirty pages of the mount's own page cache (if the
 *                                 mount has one) to the filesystem; not an fsync
 *   LABEL|fsync|NAME   LABEL|fdatasync|NAME   LABEL|syncfs|NAME   LABEL|ioctl|NAME
 *   LABEL|close|NAME
 *   LABEL|touch|PATH              creates PATH (a control file for the host)
 *   LABEL|wait|PATH|SECONDS       waits until PATH exists; "TIMEOUT" if it does not
 *   LABEL|sleep|MS
 *   LABEL|sh|COMMAND              prints "LABEL: $ COMMAND", runs it with /bin/sh
 *                                 (its output follows), then "LABEL: exit N"
 *
 * Each step prints one line "LABEL: RESULT" (RESULT "0", a count, or an errno name
 * such as ENOSPC), flushed at once. Exit status 0 unless a step could not be parsed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ovlfs/ioctl.h"

#define MAX_FDS 64

static struct {
	char name[32];
	int fd;
} fds[MAX_FDS];

static const char *errname(int e)
{
	static char buf[32];
	switch (e) {
	case 0: return "0";
	case EIO: return "EIO";
	case ENOSPC: return "ENOSPC";
	case EDQUOT: return "EDQUOT";
	case EROFS: return "EROFS";
	case EBADF: return "EBADF";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ENOSYS: return "ENOSYS";
	case ENOENT: return "ENOENT";
	case EEXIST: return "EEXIST";
	case EACCES: return "EACCES";
	case EPERM: return "EPERM";
	case EOPNOTSUPP: return "EOPNOTSUPP";
	case EFBIG: return "EFBIG";
	case ENXIO: return "ENXIO";
	}
	snprintf(buf, sizeof buf, "errno %d", e);
	return buf;
}

static int *slot(const char *name, int create)
{
	for (int i = 0; i < MAX_FDS; i++)
		if (fds[i].name[0] && strcmp(fds[i].name, name) == 0)
			return &fds[i].fd;
	if (!create)
		return NULL;
	for (int i = 0; i < MAX_FDS; i++)
		if (!fds[i].name[0]) {
			snprintf(fds[i].name, sizeof fds[i].name, "%s", name);
			fds[i].fd = -1;
			return &fds[i].fd;
		}
	return NULL;
}

static int fd_of(const char *name)
{
	int *p = slot(name, 0);
	return p ? *p : -1;
}

static const char *result(int rc)
{
	return rc < 0 ? errname(errno) : "0";
}

int main(int argc, char **argv)
{
	int bad = 0;
	for (int a = 1; a < argc; a++) {
		/* LABEL|OP|X|Y|Z; for sh, X is the rest of the argument (may hold '|') */
		char *f[5] = {0};
		char *s = strdup(argv[a]);
		char *p = s;
		for (int n = 0; n < 5 && p; n++) {
			f[n] = p;
			if (n == 2 && strcmp(f[1], "sh") == 0)
				break;
			p = strchr(p, '|');
			if (p)
				*p++ = 0;
		}
		const char *label = f[0], *op = f[1] ? f[1] : "";
		const char *x = f[2] ? f[2] : "", *y = f[3] ? f[3] : "", *z = f[4] ? f[4] : "";
		const char *out = NULL;
		char buf[64];
		int fd = fd_of(x);
		if (strcmp(op, "create") == 0 || strcmp(op, "open") == 0) {
			int flags = O_CLOEXEC;
			if (strcmp(op, "create") == 0)
				flags |= O_RDWR | O_CREAT | O_EXCL;
			else if (strcmp(z, "rw") == 0)
				flags |= O_RDWR;
			else if (strcmp(z, "dir") == 0)
				flags |= O_RDONLY | O_DIRECTORY;
			else
				flags |= O_RDONLY;
			int nfd = open(y, flags, 0644);
			int *held = slot(x, 1);
			if (nfd >= 0 && held)
				*held = nfd;
			out = nfd < 0 ? errname(errno) : "0";
		} else if (strcmp(op, "fallocate") == 0) {
			int e = posix_fallocate(fd, 0, atoll(y));
			out = errname(e);
		} else if (strcmp(op, "pwrite") == 0) {
			size_t len = (size_t)atoll(y);
			char *data = malloc(len);
			for (size_t i = 0; i < len; i++)
				data[i] = "ovlfs writeback-error probe\n"[i % 28];
			ssize_t w = pwrite(fd, data, len, 0);
			free(data);
			if (w < 0)
				out = errname(errno);
			else
				snprintf(buf, sizeof buf, "%zd", w), out = buf;
		} else if (strcmp(op, "flush") == 0) {
			out = result(sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE |
							   SYNC_FILE_RANGE_WRITE |
							   SYNC_FILE_RANGE_WAIT_AFTER));
		} else if (strcmp(op, "fsync") == 0) {
			out = result(fsync(fd));
		} else if (strcmp(op, "fdatasync") == 0) {
			out = result(fdatasync(fd));
		} else if (strcmp(op, "syncfs") == 0) {
			out = result(syncfs(fd));
		} else if (strcmp(op, "ioctl") == 0) {
			out = result(ioctl(fd, OVLFS_IOC_SYNCFS));
		} else if (strcmp(op, "close") == 0) {
			int *held = slot(x, 0);
			out = result(close(fd));
			if (held)
				*held = -1;
		} else if (strcmp(op, "touch") == 0) {
			int t = open(x, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
			out = t < 0 ? errname(errno) : "0";
			if (t >= 0)
				close(t);
		} else if (strcmp(op, "wait") == 0) {
			double limit = atof(y) > 0 ? atof(y) : 60;
			struct timespec t0, t1;
			struct stat st;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			out = "0";
			while (stat(x, &st) != 0) {
				clock_gettime(CLOCK_MONOTONIC, &t1);
				if (t1.tv_sec - t0.tv_sec + (t1.tv_nsec - t0.tv_nsec) / 1e9 > limit) {
					out = "TIMEOUT";
					break;
				}
				usleep(10000);
			}
		} else if (strcmp(op, "sleep") == 0) {
			usleep(atoi(x) * 1000);
			out = "0";
		} else if (strcmp(op, "sh") == 0) {
			printf("%s: $ %s\n", label, x);
			fflush(stdout);
			int st = system(x);
			snprintf(buf, sizeof buf, "exit %d",
				 WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
			out = buf;
		} else {
			fprintf(stdout, "%s: bad step %s\n", label ? label : "?", argv[a]);
			bad = 1;
			free(s);
			continue;
		}
		printf("%s: %s\n", label, out);
		fflush(stdout);
		free(s);
	}
	return bad;
}
