/*
 * fuzz_ipc.c - libFuzzer target for the bytes dashkvd reads from clients:
 * the socket framing (ipc_recv over a socketpair) and every validator of
 * runtime/ipc/proto.c that checks a socket message.  Build: make fuzz (see
 * tests/fuzz/Makefile.am.inc).
 */
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ipc/proto.h"

static void validators(const uint8_t *data, size_t size)
{
	union {
		struct ipc_hdr h;
		struct ipc_hello hello;
		struct ipc_accept a;
		struct ipc_ref r;
		struct ipc_sqe e;
		struct ipc_error er;
		struct ipc_cqe c;
		uint8_t raw[512];
	} u;
	struct ipc_geom g = { 4, 8, 2, 64, 2 };
	char err[256];

	memset(&u, 0, sizeof(u));
	memcpy(u.raw, data, size < sizeof(u.raw) ? size : sizeof(u.raw));
	ipc_check_hdr(&u.h, err);
	ipc_check_hello(&u.hello, err);
	ipc_check_accept(&u.a, size * 4096, err);
	ipc_check_ref(&u.r, err);
	ipc_check_sqe(&u.e, &g, 1 << 20, err);
	ipc_check_error(&u.er, err);
	ipc_check_cqe(&u.c, err);
}

static void framing(const uint8_t *data, size_t size)
{
	char buf[IPC_MAX_PAYLOAD], err[256];
	struct ipc_hdr h;
	int sv[2];

	if (size > 65536 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0)
		return;
	if (write(sv[0], data, size) < 0)
		size = 0;
	close(sv[0]);
	while (ipc_recv(sv[1], &h, buf, 0, NULL, err) == DKV_OK)
		;
	close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	validators(data, size);
	framing(data, size);
	return 0;
}
