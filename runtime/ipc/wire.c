/* wire.c - whole messages over the Unix socket, futex doorbells. */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "proto.h"

int ipc_send(int sock, uint16_t type, uint32_t seq, const void *payload,
	     uint32_t len, int pass_fd)
{
	struct ipc_hdr h;
	struct iovec iov[2];
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(sizeof(int))];
	} cbuf;
	struct msghdr msg = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	size_t want = sizeof(h) + len;
	ssize_t n;

	ipc_hdr_init(&h, type, len, seq);
	iov[0] = (struct iovec){ &h, sizeof(h) };
	iov[1] = (struct iovec){ (void *)payload, len };
	if (pass_fd >= 0) {
		struct cmsghdr *cm;

		memset(&cbuf, 0, sizeof(cbuf));
		msg.msg_control = cbuf.buf;
		msg.msg_controllen = sizeof(cbuf.buf);
		cm = CMSG_FIRSTHDR(&msg);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &msg, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return errno == EPIPE || errno == ECONNRESET ? DKV_E_DISCONNECTED : DKV_E_IO;
	return (size_t)n == want ? DKV_OK : DKV_E_IO;
}

static int wait_readable(int sock, int timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	int n;

	do
		n = poll(&p, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return DKV_E_IO;
	return n ? DKV_OK : DKV_E_TIMEOUT;
}

static void take_fd(struct msghdr *msg, int *fd_out)
{
	struct cmsghdr *cm;

	for (cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		size_t nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < nfd; i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
			if (*fd_out < 0)
				*fd_out = fd;
			else
				close(fd);
		}
	}
}

/*
 * Read exactly len bytes (the first read may carry an fd).  EOF before the
 * first byte of a message is DKV_E_DISCONNECTED; EOF inside one (mid: the
 * header was read already) is a truncated message, DKV_E_PROTO.
 */
static int read_full(int sock, void *buf, size_t len, int timeout_ms,
		     int *fd_out, int mid)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} cbuf;
	size_t got = 0;

	while (got < len) {
		struct iovec iov = { (char *)buf + got, len - got };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = cbuf.buf, .msg_controllen = sizeof(cbuf.buf) };
		int rc = wait_readable(sock, timeout_ms);
		ssize_t n;

		if (rc)
			return rc;
		n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == ECONNRESET ? DKV_E_DISCONNECTED : DKV_E_IO;
		if (n == 0)
			return mid || got ? DKV_E_PROTO : DKV_E_DISCONNECTED;
		if (fd_out)
			take_fd(&msg, fd_out);
		got += (size_t)n;
	}
	return DKV_OK;
}

int ipc_recv(int sock, struct ipc_hdr *hdr, void *buf, int timeout_ms,
	     int *fd_out, char *err)
{
	int rc;

	if (fd_out)
		*fd_out = -1;
	rc = read_full(sock, hdr, sizeof(*hdr), timeout_ms, fd_out, 0);
	if (rc == DKV_E_PROTO)
		krn_msgf(err, rc, "message header cut short");
	else if (rc == DKV_OK)
		rc = ipc_check_hdr(hdr, err);
	if (rc == DKV_OK && hdr->length) {
		rc = read_full(sock, buf, hdr->length, timeout_ms, fd_out, 1);
		if (rc == DKV_E_PROTO)
			krn_msgf(err, rc, "message of type %u cut short", hdr->type);
	}
	if (rc && fd_out && *fd_out >= 0) {
		close(*fd_out);
		*fd_out = -1;
	}
	return rc;
}

int ipc_futex_wait(_Atomic uint32_t *word, uint32_t val, int timeout_ms)
{
	struct timespec ts = { timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000 };

	return (int)syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT, val,
			    timeout_ms < 0 ? NULL : &ts, NULL, 0);
}

void ipc_futex_wake(_Atomic uint32_t *word)
{
	syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
}

uint32_t ipc_cpu_hint(void)
{
	int cpu = sched_getcpu();

	return cpu < 0 ? 0 : (uint32_t)cpu + 1;
}
