/* fsbench: the timed part of every filesystem benchmark workload.
 *
 * bench/fs/run compiles this with cc on every run (nothing of ovlfs is built) and
 * calls it once per trial. Each operation does its own untimed preparation, then
 * times only the filesystem calls with CLOCK_MONOTONIC and prints one line:
 *
 *     seconds=<elapsed> user=<driver user CPU> sys=<kernel CPU> cpu_wait=<share>
 *     [key=value ...]
 *
 * `user` is this process's own user-space CPU over the timed part: the driver's
 * overhead, which the harness reports next to the results. `cpu_wait` is the share of
 * the timed part in which some task on the machine waited for a CPU (PSI): how busy
 * the machine was meanwhile. The loops make one
 * syscall per step and allocate nothing per file, so what is timed is the filesystem.
 *
 * File naming shared with the harness: file i of a set is <root>/d%03d/f%06d with
 * d = i / per_dir, or <root>/f%06d when per_dir is 0 (a flat directory).
 *
 * Exit status: 0 on success, 1 on a failed filesystem call (message on stderr),
 * 2 on bad usage.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if __has_include(<ovlfs/ioctl.h>)	/* run compiles with -I <repo>/include */
#include <ovlfs/ioctl.h>
#endif

extern char **environ;

#define CHUNK (1 << 20) /* 1 MiB per read/write call for the bulk-data workloads */

static char chunk[CHUNK];

/* ---- errors and timing ------------------------------------------------------ */

static void die(const char *fmt, ...)
{
	va_list ap;
	int err = errno;

	fprintf(stderr, "fsbench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, ": %s\n", strerror(err));
	exit(1);
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(const struct timeval *tv)
{
	return (double)tv->tv_sec + (double)tv->tv_usec / 1e6;
}

struct timer {
	double start;
	long long cpu_some;	/* /proc/pressure/cpu "some" total (µs) at the start */
	struct rusage ru;
};

/* Time (µs) in which some runnable task on this machine waited for a CPU, since
 * boot; -1 without PSI. Its growth over a timed part tells how busy the machine was. */
static long long cpu_pressure_us(void)
{
	long long total = -1;
	FILE *f = fopen("/proc/pressure/cpu", "re");

	if (f) {
		if (fscanf(f, "some avg10=%*f avg60=%*f avg300=%*f total=%lld", &total) != 1)
			total = -1;
		fclose(f);
	}
	return total;
}

static void timer_start(struct timer *t)
{
	t->cpu_some = cpu_pressure_us();
	getrusage(RUSAGE_SELF, &t->ru);
	t->start = now();
}

/* Prints the result line's common part; callers may append " key=value" pairs. */
static void timer_report(const struct timer *t)
{
	double end = now();
	long long some = cpu_pressure_us();
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	printf("seconds=%.6f user=%.6f sys=%.6f", end - t->start,
	       cpu_seconds(&ru.ru_utime) - cpu_seconds(&t->ru.ru_utime),
	       cpu_seconds(&ru.ru_stime) - cpu_seconds(&t->ru.ru_stime));
	if (some >= 0 && t->cpu_some >= 0 && end > t->start)
		printf(" cpu_wait=%.3f", (double)(some - t->cpu_some) / 1e6 / (end - t->start));
}

/* ---- small helpers ---------------------------------------------------------- */

static long arg_long(const char *s)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 0);
	if (errno || *end || v < 0) {
		fprintf(stderr, "fsbench: bad number: %s\n", s);
		exit(2);
	}
	return v;
}

static void set_name(char *buf, size_t len, long i, long per_dir)
{
	if (per_dir)
		snprintf(buf, len, "d%03ld/f%06ld", i / per_dir, i);
	else
		snprintf(buf, len, "f%06ld", i);
}

static void write_all(int fd, const char *buf, size_t len, const char *what)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("write %s", what);
		}
		buf += n;
		len -= (size_t)n;
	}
}

/* Reads fd to its end; returns the byte count. */
static uint64_t read_all(int fd, const char *what)
{
	uint64_t total = 0;

	for (;;) {
		ssize_t n = read(fd, chunk, CHUNK);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("read %s", what);
		}
		if (n == 0)
			return total;
		total += (uint64_t)n;
	}
}

static void write_file(int dirfd, const char *name, size_t size, int flags)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0644);

	if (fd < 0)
		die("create %s", name);
	write_all(fd, chunk, size, name);
	if (close(fd))
		die("close %s", name);
}

/* Sizes that look like a source tree: 256 B .. max, fixed by the index. */
static size_t varied_size(long i, long max)
{
	uint64_t h = (uint64_t)i * 0x9E3779B97F4A7C15ULL;

	return 256 + (size_t)((h >> 33) % (uint64_t)(max > 256 ? max - 256 : 1));
}

static int open_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0)
		die("open %s", path);
	return fd;
}

/* ---- populate (untimed data preparation) ------------------------------------ */

/* populate ROOT COUNT SIZE PER_DIR MOD REM: files i < COUNT with i % MOD == REM.
 * SIZE < 0 means varied sizes up to -SIZE (given as "v<max>"). */
static int op_populate(int argc, char **argv)
{
	long count, per_dir, mod, rem, max = 0, size = 0, last_dir = -1;
	char name[64];
	int root;

	if (argc != 6)
		return 2;
	count = arg_long(argv[1]);
	if (argv[2][0] == 'v')
		max = arg_long(argv[2] + 1);
	else
		size = arg_long(argv[2]);
	per_dir = arg_long(argv[3]);
	mod = arg_long(argv[4]);
	rem = arg_long(argv[5]);
	if (size > CHUNK || max > CHUNK || mod < 1)
		return 2;
	if (mkdir(argv[0], 0755) && errno != EEXIST)
		die("mkdir %s", argv[0]);
	root = open_dir(argv[0]);
	for (long i = 0; i < count; i++) {
		if (i % mod != rem)
			continue;
		if (per_dir && i / per_dir != last_dir) {
			last_dir = i / per_dir;
			snprintf(name, sizeof name, "d%03ld", last_dir);
			if (mkdirat(root, name, 0755) && errno != EEXIST)
				die("mkdir %s", name);
		}
		set_name(name, sizeof name, i, per_dir);
		write_file(root, name, max ? varied_size(i, max) : (size_t)size, O_EXCL);
	}
	close(root);
	return 0;
}

/* ---- create: COUNT new files of SIZE bytes, PER_DIR to a new directory ------- */

static int op_create(int argc, char **argv)
{
	long count, size, per_dir;
	char name[64];
	struct timer t;
	int root;

	if (argc != 4)
		return 2;
	count = arg_long(argv[1]);
	size = arg_long(argv[2]);
	per_dir = arg_long(argv[3]);
	if (size > CHUNK || per_dir < 1)
		return 2;
	root = open_dir(argv[0]);
	timer_start(&t);
	for (long i = 0; i < count; i++) {
		if (i % per_dir == 0) {
			snprintf(name, sizeof name, "d%03ld", i / per_dir);
			if (mkdirat(root, name, 0755))
				die("mkdir %s", name);
		}
		set_name(name, sizeof name, i, per_dir);
		write_file(root, name, (size_t)size, O_EXCL);
	}
	timer_report(&t);
	printf(" files=%ld\n", count);
	close(root);
	return 0;
}

/* ---- stat: fstatat every file of a set, by a path relative to the root ------- */

static int op_stat(int argc, char **argv)
{
	long count, per_dir;
	char name[64];
	struct stat st;
	struct timer t;
	int root;

	if (argc != 3)
		return 2;
	count = arg_long(argv[1]);
	per_dir = arg_long(argv[2]);
	root = open_dir(argv[0]);
	timer_start(&t);
	for (long i = 0; i < count; i++) {
		set_name(name, sizeof name, i, per_dir);
		if (fstatat(root, name, &st, AT_SYMLINK_NOFOLLOW))
			die("stat %s", name);
	}
	timer_report(&t);
	printf(" files=%ld\n", count);
	close(root);
	return 0;
}

/* ---- write BYTES to a new file, then fsync ---------------------------------- */

static int op_write(int argc, char **argv)
{
	uint64_t bytes;
	struct timer t;
	int fd;

	if (argc != 2)
		return 2;
	bytes = (uint64_t)arg_long(argv[1]);
	timer_start(&t);
	fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("create %s", argv[0]);
	for (uint64_t done = 0; done < bytes; done += CHUNK)
		write_all(fd, chunk, bytes - done < CHUNK ? bytes - done : CHUNK, argv[0]);
	if (fsync(fd))
		die("fsync %s", argv[0]);
	if (close(fd))
		die("close %s", argv[0]);
	timer_report(&t);
	printf(" bytes=%" PRIu64 "\n", bytes);
	return 0;
}

/* ---- read a file WARMUPS times untimed, then once timed ---------------------- */

static uint64_t read_path(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	uint64_t n;

	if (fd < 0)
		die("open %s", path);
	n = read_all(fd, path);
	close(fd);
	return n;
}

static int op_read(int argc, char **argv)
{
	long warmups;
	uint64_t bytes;
	struct timer t;

	if (argc != 2)
		return 2;
	warmups = arg_long(argv[1]);
	for (long i = 0; i < warmups; i++)
		read_path(argv[0]);
	timer_start(&t);
	bytes = read_path(argv[0]);
	timer_report(&t);
	printf(" bytes=%" PRIu64 "\n", bytes);
	return 0;
}

/* ---- warm ROOT: read every file under ROOT (untimed; fills the page cache) --- */

static void warm_tree(int dirfd, const char *rel)
{
	DIR *d = fdopendir(dirfd);
	struct dirent *e;

	if (!d)
		die("fdopendir %s", rel);
	while ((e = readdir(d))) {
		int fd;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		fd = openat(dirfd, e->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open %s/%s", rel, e->d_name);
		if (e->d_type == DT_DIR)
			warm_tree(fd, e->d_name);
		else {
			read_all(fd, e->d_name);
			close(fd);
		}
	}
	closedir(d);
}

static int op_warm(int argc, char **argv)
{
	if (argc != 1)
		return 2;
	warm_tree(open_dir(argv[0]), argv[0]);
	return 0;
}

/* ---- append: one byte to every file of a set (copy-up in an overlay) --------- */

static int op_append(int argc, char **argv)
{
	long count, per_dir;
	char name[64];
	struct timer t;
	int root;

	if (argc != 3)
		return 2;
	count = arg_long(argv[1]);
	per_dir = arg_long(argv[2]);
	root = open_dir(argv[0]);
	timer_start(&t);
	for (long i = 0; i < count; i++) {
		int fd;

		set_name(name, sizeof name, i, per_dir);
		fd = openat(root, name, O_WRONLY | O_APPEND | O_CLOEXEC);
		if (fd < 0)
			die("open %s", name);
		write_all(fd, "+", 1, name);
		if (close(fd))
			die("close %s", name);
	}
	timer_report(&t);
	printf(" files=%ld\n", count);
	close(root);
	return 0;
}

/* ---- readdir: every entry of one directory, with getdents64 ------------------ */

static int op_readdir(int argc, char **argv)
{
	static char buf[1 << 15]; /* what ls and glibc's readdir use */
	long expected, entries = 0;
	struct timer t;
	int fd;

	if (argc != 2)
		return 2;
	expected = arg_long(argv[1]);
	timer_start(&t);
	fd = open_dir(argv[0]);
	for (;;) {
		long n = syscall(SYS_getdents64, fd, buf, sizeof buf);

		if (n < 0)
			die("getdents64 %s", argv[0]);
		if (n == 0)
			break;
		for (long off = 0; off < n;) {
			struct dirent64 *d = (struct dirent64 *)(buf + off);

			if (strcmp(d->d_name, ".") && strcmp(d->d_name, ".."))
				entries++;
			off += d->d_reclen;
		}
	}
	close(fd);
	timer_report(&t);
	printf(" entries=%ld\n", entries);
	if (entries != expected) {
		fprintf(stderr, "fsbench: %s has %ld entries, expected %ld\n", argv[0],
			entries, expected);
		return 1;
	}
	return 0;
}

/* ---- mix: a build-like workload ---------------------------------------------
 *
 * mix SRC DST ROOT: unpack the tree SRC (outside the mount, warm) into DST (a new
 * directory under ROOT), then walk ROOT (the lower tree and the unpacked one), sort
 * the file list, and for file number i: read it whole; every 3rd writes an object
 * file beside it; i % 4 == 1 appends (copy-up for a lower file); i % 4 == 2 is
 * rewritten through a temporary and rename(2); i % 5 == 4 is deleted (a whiteout for
 * a lower file). */

struct paths {
	char **v;
	size_t n, cap;
};

static void paths_add(struct paths *p, const char *s)
{
	if (p->n == p->cap) {
		p->cap = p->cap ? 2 * p->cap : 1024;
		p->v = realloc(p->v, p->cap * sizeof *p->v);
		if (!p->v)
			die("realloc");
	}
	p->v[p->n] = strdup(s);
	if (!p->v[p->n])
		die("strdup");
	p->n++;
}

static void unpack(int src, int dst, const char *rel)
{
	DIR *d = fdopendir(src);
	struct dirent *e;

	if (!d)
		die("fdopendir %s", rel);
	while ((e = readdir(d))) {
		int in, out, sub_src, sub_dst;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (e->d_type == DT_DIR) {
			if (mkdirat(dst, e->d_name, 0755))
				die("mkdir %s/%s", rel, e->d_name);
			sub_src = openat(src, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			sub_dst = openat(dst, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			if (sub_src < 0 || sub_dst < 0)
				die("open %s/%s", rel, e->d_name);
			unpack(sub_src, sub_dst, e->d_name);
			close(sub_dst);
			continue;
		}
		in = openat(src, e->d_name, O_RDONLY | O_CLOEXEC);
		out = openat(dst, e->d_name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (in < 0 || out < 0)
			die("open %s/%s", rel, e->d_name);
		for (;;) {
			ssize_t n = read(in, chunk, CHUNK);

			if (n < 0)
				die("read %s/%s", rel, e->d_name);
			if (n == 0)
				break;
			write_all(out, chunk, (size_t)n, e->d_name);
		}
		close(in);
		if (close(out))
			die("close %s/%s", rel, e->d_name);
	}
	closedir(d); /* closes src */
}

static void walk(int dirfd, const char *rel, struct paths *out)
{
	DIR *d = fdopendir(dirfd);
	struct dirent *e;
	char path[4096];

	if (!d)
		die("fdopendir %s", rel);
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(path, sizeof path, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
		if (e->d_type == DT_DIR) {
			int sub = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

			if (sub < 0)
				die("open %s", path);
			walk(sub, path, out);
		} else if (e->d_type == DT_REG) {
			paths_add(out, path);
		}
	}
	closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int op_mix(int argc, char **argv)
{
	struct paths files = {0};
	char name[4200], tmp[4200];
	long reads = 0, objects = 0, appends = 0, renames = 0, deletes = 0;
	struct timer t;
	int root, src, dst;

	if (argc != 3)
		return 2;
	src = open_dir(argv[0]);
	root = open_dir(argv[2]);
	timer_start(&t);
	if (mkdir(argv[1], 0755))
		die("mkdir %s", argv[1]);
	dst = open_dir(argv[1]);
	unpack(src, dst, argv[0]);
	close(dst);
	walk(dup(root), "", &files);
	qsort(files.v, files.n, sizeof *files.v, cmp_str);
	for (size_t i = 0; i < files.n; i++) {
		const char *f = files.v[i];
		int fd = openat(root, f, O_RDONLY | O_CLOEXEC);

		if (fd < 0)
			die("open %s", f);
		read_all(fd, f);
		close(fd);
		reads++;
		if (i % 3 == 0) {
			snprintf(name, sizeof name, "%s.o", f);
			write_file(root, name, 4096, O_TRUNC);
			objects++;
		}
		if (i % 4 == 1) {
			fd = openat(root, f, O_WRONLY | O_APPEND | O_CLOEXEC);
			if (fd < 0)
				die("open %s", f);
			write_all(fd, "// edited\n", 10, f);
			if (close(fd))
				die("close %s", f);
			appends++;
		} else if (i % 4 == 2) {
			snprintf(tmp, sizeof tmp, "%s.tmp", f);
			write_file(root, tmp, 2048, O_TRUNC);
			if (renameat(root, tmp, root, f))
				die("rename %s", tmp);
			renames++;
		}
		if (i % 5 == 4) {
			if (unlinkat(root, f, 0))
				die("unlink %s", f);
			deletes++;
		}
	}
	timer_report(&t);
	printf(" files=%zu reads=%ld objects=%ld appends=%ld renames=%ld deletes=%ld\n",
	       files.n, reads, objects, appends, renames, deletes);
	close(root);
	return 0;
}

/* ---- the mount's syncfs, three ways ------------------------------------------
 *
 * A "sync method" is one of:
 *   syncfs              syncfs(2) on a new fd of the path
 *   ioctl:<request>     ioctl(fd, request, 0) on a new fd of the path (ovlfs's ioctl)
 *   cmd:<program>       posix_spawn "<program> sync <path>" and wait (`ovlfs sync`)
 * Each returns 0 or the errno the mount reported (for cmd: the errno named in its
 * output; a failure that names none ends fsbench with that output). */

/* Runs "program arg1 [arg2]" and waits for it. Its stdout and stderr go to a pipe,
 * of which the first bytes are kept in `out` (NUL-terminated) when out is not NULL.
 * Returns the exit status (128 + signal when killed). */
static int spawn_wait(const char *program, const char *arg1, const char *arg2, char *out,
		      size_t outlen)
{
	char *argv[] = {(char *)program, (char *)arg1, (char *)arg2, NULL};
	posix_spawn_file_actions_t fa;
	size_t have = 0;
	int pipefd[2], status, rc;
	pid_t pid;

	if (pipe2(pipefd, O_CLOEXEC))
		die("pipe");
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 2);
	rc = posix_spawn(&pid, program, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (rc) {
		errno = rc;
		die("spawn %s", program);
	}
	for (;;) {
		char buf[512];
		ssize_t n = read(pipefd[0], buf, sizeof buf);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (out && have + 1 < outlen) {
			size_t take = (size_t)n < outlen - 1 - have ? (size_t)n : outlen - 1 - have;

			memcpy(out + have, buf, take);
			have += take;
		}
	}
	close(pipefd[0]);
	if (out)
		out[have] = 0;
	if (waitpid(pid, &status, 0) < 0)
		die("waitpid");
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The errno that `ovlfs sync` names in its output (SPEC: "exit status non-zero and
 * the errno name on error"), or 0 when it names none of the writeback errors. */
static int named_errno(const char *out)
{
	static const struct {
		const char *name;
		int err;
	} names[] = {
		{"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT},
		{"Input/output error", EIO}, {"No space left on device", ENOSPC},
		{"Disk quota exceeded", EDQUOT},
	};

	for (size_t i = 0; i < sizeof names / sizeof *names; i++)
		if (strstr(out, names[i].name))
			return names[i].err;
	return 0;
}

/* Output of the last failed `ovlfs sync`, for the message when it named no errno. */
static char cmd_output[1024];

static int sync_once(const char *method, const char *path)
{
	int fd, rc;

	if (!strncmp(method, "cmd:", 4)) {
		if (!spawn_wait(method + 4, "sync", path, cmd_output, sizeof cmd_output))
			return 0;
		rc = named_errno(cmd_output);
		if (!rc) {
			cmd_output[strcspn(cmd_output, "\n")] = 0;
			fprintf(stderr, "fsbench: %s sync %s failed without naming an errno: %s\n",
				method + 4, path, cmd_output);
			exit(1);
		}
		return rc;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s", path);
	if (!strcmp(method, "syncfs"))
		rc = syncfs(fd);
	else if (!strncmp(method, "ioctl:", 6))
		rc = ioctl(fd, (unsigned long)strtoul(method + 6, NULL, 0), 0);
	else {
		fprintf(stderr, "fsbench: unknown sync method %s\n", method);
		exit(2);
	}
	rc = rc ? errno : 0;
	close(fd);
	return rc;
}

/* dirtysync FILE BYTES METHOD PATH: write BYTES to FILE without fsync (untimed),
 * then time the mount's syncfs on PATH. */
static int op_dirtysync(int argc, char **argv)
{
	uint64_t bytes;
	struct timer t;
	int fd, rc;

	if (argc != 4)
		return 2;
	bytes = (uint64_t)arg_long(argv[1]);
	fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("create %s", argv[0]);
	for (uint64_t done = 0; done < bytes; done += CHUNK)
		write_all(fd, chunk, bytes - done < CHUNK ? bytes - done : CHUNK, argv[0]);
	if (close(fd))
		die("close %s", argv[0]);
	timer_start(&t);
	rc = sync_once(argv[2], argv[3]);
	timer_report(&t);
	printf(" dirty=%" PRIu64 " errno=%d", bytes, rc);
	if (!strncmp(argv[2], "cmd:", 4)) {
		/* What starting the program alone costs: the best of three runs of
		 * "<program> --version", so a reader can tell it from the syncfs. */
		double best = 1e9;

		for (int i = 0; i < 3; i++) {
			double t0 = now();

			spawn_wait(argv[2] + 4, "--version", NULL, NULL, 0);
			if (now() - t0 < best)
				best = now() - t0;
		}
		printf(" spawn_seconds=%.6f", best);
	}
	printf("\n");
	if (rc) {
		fprintf(stderr, "fsbench: the mount's syncfs (%s) failed: %s\n", argv[2],
			strerror(rc));
		return 1;
	}
	return 0;
}

/* fanout UPPER BASE COUNT METHOD TIMEOUT: UPPER (the upper filesystem's root) holds
 * dirty data that cannot be written back. Untimed: syncfs(2) on UPPER, from outside
 * any overlay, so that the writeback error is recorded on the upper filesystem.
 * Timed from there: the mount's syncfs in BASE/m0 .. BASE/m<COUNT-1>, each through a
 * new fd, in rounds, until every mount has reported an error or TIMEOUT seconds have
 * passed. seconds = the time until the last mount reported (or the timeout). */
static int op_fanout(int argc, char **argv)
{
	long count, reported = 0, rounds = 0;
	double timeout;
	char path[4096];
	char *seen;
	struct timer t;
	int first_errno = 0, trigger;

	if (argc != 5)
		return 2;
	count = arg_long(argv[2]);
	timeout = (double)arg_long(argv[4]);
	seen = calloc((size_t)count, 1);
	if (!seen)
		die("calloc");
	trigger = sync_once("syncfs", argv[0]);
	if (!trigger) {
		fprintf(stderr, "fsbench: syncfs of %s reported no writeback error\n", argv[0]);
		return 1;
	}
	timer_start(&t);
	while (reported < count && now() - t.start < timeout) {
		rounds++;
		for (long i = 0; i < count; i++) {
			int rc;

			if (seen[i])
				continue;
			snprintf(path, sizeof path, "%s/m%ld", argv[1], i);
			rc = sync_once(argv[3], path);
			if (rc) {
				seen[i] = 1;
				reported++;
				if (!first_errno)
					first_errno = rc;
			}
		}
		if (reported < count)
			usleep(1000);
	}
	timer_report(&t);
	printf(" mounts=%ld reported=%ld rounds=%ld upper_errno=%d errno=%d\n", count,
	       reported, rounds, trigger, first_errno);
	free(seen);
	return 0;
}

/* fill FILE: write FILE until its filesystem is full (untimed; ENOSPC is success). */
static int op_fill(int argc, char **argv)
{
	int fd;

	if (argc != 1)
		return 2;
	fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("create %s", argv[0]);
	for (;;) {
		ssize_t n = write(fd, chunk, CHUNK);

		if (n < 0 && errno == ENOSPC)
			break;
		if (n < 0 && errno != EINTR)
			die("write %s", argv[0]);
	}
	close(fd);
	return 0;
}

/* prealloc FILE BYTES: preallocate FILE (blocks reserved while there is room). */
static int op_prealloc(int argc, char **argv)
{
	int fd;

	if (argc != 2)
		return 2;
	fd = open(argv[0], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("create %s", argv[0]);
	if (fallocate(fd, 0, 0, arg_long(argv[1])))
		die("fallocate %s", argv[0]);
	if (fsync(fd))
		die("fsync %s", argv[0]);
	close(fd);
	return 0;
}

/* overwrite FILE BYTES: write over the start of FILE through the page cache, close. */
static int op_overwrite(int argc, char **argv)
{
	uint64_t bytes;
	int fd;

	if (argc != 2)
		return 2;
	bytes = (uint64_t)arg_long(argv[1]);
	fd = open(argv[0], O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s", argv[0]);
	for (uint64_t done = 0; done < bytes; done += CHUNK)
		write_all(fd, chunk, bytes - done < CHUNK ? bytes - done : CHUNK, argv[0]);
	if (close(fd))
		die("close %s", argv[0]);
	return 0;
}

/* sync METHOD PATH: the mount's syncfs once, untimed; prints the errno it returned. */
static int op_sync(int argc, char **argv)
{
	int rc;

	if (argc != 2)
		return 2;
	rc = sync_once(argv[0], argv[1]);
	printf("errno=%d\n", rc);
	return 0;
}

/* ovlfs-ioctl: prints OVLFS_IOC_SYNCFS from include/ovlfs/ioctl.h, or fails when
 * fsbench was built without that header. */
static int op_ovlfs_ioctl(int argc, char **argv)
{
	(void)argv;
	if (argc != 0)
		return 2;
#ifdef OVLFS_IOC_SYNCFS
	printf("request=%#lx\n", (unsigned long)OVLFS_IOC_SYNCFS);
	return 0;
#else
	fprintf(stderr, "fsbench: built without <ovlfs/ioctl.h>\n");
	return 1;
#endif
}

/* ---- main ------------------------------------------------------------------- */

static const struct {
	const char *name;
	int (*fn)(int, char **);
	const char *usage;
} ops[] = {
	{"populate", op_populate, "ROOT COUNT SIZE|v<MAX> PER_DIR MOD REM"},
	{"create", op_create, "ROOT COUNT SIZE PER_DIR"},
	{"stat", op_stat, "ROOT COUNT PER_DIR"},
	{"write", op_write, "FILE BYTES"},
	{"read", op_read, "FILE WARMUPS"},
	{"warm", op_warm, "ROOT"},
	{"append", op_append, "ROOT COUNT PER_DIR"},
	{"readdir", op_readdir, "DIR EXPECTED"},
	{"mix", op_mix, "SRC DST ROOT"},
	{"dirtysync", op_dirtysync, "FILE BYTES METHOD PATH"},
	{"fanout", op_fanout, "UPPER BASE COUNT METHOD TIMEOUT"},
	{"fill", op_fill, "FILE"},
	{"prealloc", op_prealloc, "FILE BYTES"},
	{"overwrite", op_overwrite, "FILE BYTES"},
	{"sync", op_sync, "METHOD PATH"},
	{"ovlfs-ioctl", op_ovlfs_ioctl, ""},
};

int main(int argc, char **argv)
{
	memset(chunk, 0xa5, sizeof chunk);
	if (argc >= 2) {
		for (size_t i = 0; i < sizeof ops / sizeof *ops; i++) {
			if (strcmp(argv[1], ops[i].name))
				continue;
			int rc = ops[i].fn(argc - 2, argv + 2);

			if (rc == 2)
				fprintf(stderr, "usage: fsbench %s %s\n", ops[i].name,
					ops[i].usage);
			fflush(stdout);
			return rc;
		}
	}
	fprintf(stderr, "usage: fsbench OP ARGS...\n");
	for (size_t i = 0; i < sizeof ops / sizeof *ops; i++)
		fprintf(stderr, "  %s %s\n", ops[i].name, ops[i].usage);
	return 2;
}
