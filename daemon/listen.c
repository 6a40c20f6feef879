/* listen.c - dashkvd's socket path (see listen.h). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "listen.h"
#include "log.h"

static const char *kind_of(mode_t m)
{
	if (S_ISREG(m))
		return "a regular file";
	if (S_ISLNK(m))
		return "a symbolic link";
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISFIFO(m))
		return "a FIFO";
	if (S_ISCHR(m) || S_ISBLK(m))
		return "a device";
	return "something other than a socket";
}

/*
 * One daemon per path: an exclusive flock on PATH.lock, opened without
 * following a link.  The file is not removed at exit: a daemon that opened
 * it just before would then lock a name that no longer exists.
 */
static int lock_path(const char *path)
{
	char lock[sizeof(((struct sockaddr_un *)0)->sun_path) + 8];
	struct stat st;
	int fd;

	snprintf(lock, sizeof(lock), "%s.lock", path);
	fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
	if (fd < 0) {
		dmn_log(DMN_ERROR, "%s: %m", lock);
		return -1;
	}
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		dmn_log(DMN_ERROR, "%s: not a regular file", lock);
		close(fd);
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			dmn_log(DMN_ERROR, "%s: another daemon holds it", lock);
		else
			dmn_log(DMN_ERROR, "%s: %m", lock);
		close(fd);
		return -1;
	}
	return fd;
}

/* Whether a daemon accepts on the socket at a. */
static int live(const struct sockaddr_un *a)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), up;

	if (fd < 0)
		return 0;
	up = connect(fd, (const struct sockaddr *)a, sizeof(*a)) == 0;
	close(fd);
	return up;
}

/* Make the path free for our socket: 0, or -1 (logged, nothing touched). */
static int clear_path(const struct sockaddr_un *a)
{
	const char *path = a->sun_path;
	struct stat st;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		dmn_log(DMN_ERROR, "%s: %m", path);
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		dmn_log(DMN_ERROR, "%s: %s is there, not a socket; left as it is",
			path, kind_of(st.st_mode));
		return -1;
	}
	if (live(a)) {
		dmn_log(DMN_ERROR, "%s: another daemon listens there", path);
		return -1;
	}
	/* a stale socket of a daemon that died: with the lock held, ours to remove */
	if (unlink(path) < 0 && errno != ENOENT) {
		dmn_log(DMN_ERROR, "%s: %m", path);
		return -1;
	}
	return 0;
}

/* The socket file is made at mode by bind itself: nothing is set by path after. */
static int bind_at(const struct sockaddr_un *a, mode_t mode)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	mode_t old;
	int rc;

	if (fd < 0)
		return -1;
	old = umask(~mode & 0777);
	rc = bind(fd, (const struct sockaddr *)a, sizeof(*a));
	umask(old);
	if (rc < 0 || listen(fd, 64) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

int dmn_listen(const char *path, mode_t mode, int *lock_fd)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int lock, fd;

	if (strlen(path) >= sizeof(a.sun_path)) {
		dmn_log(DMN_ERROR, "socket path too long: %s", path);
		return -1;
	}
	strcpy(a.sun_path, path);
	lock = lock_path(path);
	if (lock < 0)
		return -1;
	if (clear_path(&a) < 0) {
		close(lock);
		return -1;
	}
	fd = bind_at(&a, mode);
	if (fd < 0) {
		dmn_log(DMN_ERROR, "%s: %m", path);
		close(lock);
		return -1;
	}
	*lock_fd = lock;
	return fd;
}
