/*
 * check_ipc.c - the pure parts of the daemon protocol: message and ring
 * validators (runtime/ipc/proto.c), the region layout, and the table-driven
 * dashkv.conf parser (daemon/conf.c) with file:line errors.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "conf.h"
#include "ipc/proto.h"

static char err[256];

START_TEST(hdr_checks)
{
	struct ipc_hdr h;

	ipc_hdr_init(&h, IPC_HELLO, sizeof(struct ipc_hello), 1);
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_OK);
	h.magic ^= 1;
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_E_PROTO);
	ipc_hdr_init(&h, IPC_HELLO, sizeof(struct ipc_hello), 1);
	h.version = 2;
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_E_PROTO);
	ck_assert_ptr_nonnull(strstr(err, "version"));
	ipc_hdr_init(&h, IPC_TYPE_END, 0, 1);
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_E_PROTO);
	ipc_hdr_init(&h, 0, 0, 1);
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_E_PROTO);
	ipc_hdr_init(&h, IPC_OPEN, 0xffffffffu, 1);
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_E_PROTO);
	ipc_hdr_init(&h, IPC_OK, 0, 1);
	ck_assert_int_eq(ipc_check_hdr(&h, err), DKV_OK);
	for (uint16_t t = 1; t < IPC_TYPE_END; t++)
		ck_assert_uint_le(ipc_payload_size(t), IPC_MAX_PAYLOAD);
}
END_TEST

START_TEST(open_model_checks)
{
	static struct ipc_open_model m;

	ck_assert_uint_le(sizeof(m), IPC_MAX_PAYLOAD);
	ck_assert_uint_eq(ipc_payload_size(IPC_OPEN_MODEL), sizeof(m));
	strcpy(m.path, "/var/lib/dashkv/llama.model");
	ck_assert_int_eq(ipc_check_open_model(&m, err), DKV_OK);
	/* relative: an argument the daemon cannot resolve */
	strcpy(m.path, "llama.model");
	ck_assert_int_eq(ipc_check_open_model(&m, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "absolute"));
	m.path[0] = '\0';
	ck_assert_int_eq(ipc_check_open_model(&m, err), DKV_E_INVAL);
	/* no NUL anywhere: the peer is broken */
	memset(m.path, '/', sizeof(m.path));
	ck_assert_int_eq(ipc_check_open_model(&m, err), DKV_E_PROTO);
}
END_TEST

START_TEST(hello_accept)
{
	struct ipc_hello h = { .features = IPC_FEAT_ALL, .arena_size = 1 << 20 };
	struct ipc_accept a = { .features = IPC_FEAT_RING };
	uint64_t size;

	ck_assert_int_eq(ipc_check_hello(&h, err), DKV_OK);
	h.reserved = 1;
	ck_assert_int_eq(ipc_check_hello(&h, err), DKV_E_PROTO);
	h.reserved = 0;
	h.arena_size = 1;
	ck_assert_int_eq(ipc_check_hello(&h, err), DKV_E_PROTO);
	h.arena_size = 1 << 20;
	h.features = 0;
	ck_assert_int_eq(ipc_check_hello(&h, err), DKV_E_PROTO);

	ck_assert_int_eq(ipc_layout(64, 1 << 20, &a.off, &size), DKV_OK);
	a.region_size = size;
	ck_assert_int_eq(ipc_check_accept(&a, size, err), DKV_OK);
	ck_assert_int_eq(ipc_check_accept(&a, size - 1, err), DKV_E_PROTO);
	a.off.arena_size += 4096;
	ck_assert_int_eq(ipc_check_accept(&a, size, err), DKV_E_PROTO);
	a.off.arena_size -= 4096;
	a.off.entries = 48;
	ck_assert_int_eq(ipc_check_accept(&a, size, err), DKV_E_PROTO);
	ck_assert_int_eq(ipc_layout(48, 1 << 20, &a.off, &size), DKV_E_INVAL);
	ck_assert_int_eq(ipc_layout(64, 1 << 20, &a.off, &size), DKV_OK);
	a.off.sq_ctl = UINT64_MAX - 8;
	ck_assert_int_eq(ipc_check_accept(&a, size, err), DKV_E_PROTO);
}
END_TEST

START_TEST(ring_layout)
{
	struct ipc_offsets o;
	uint64_t size;

	ck_assert_uint_eq(offsetof(struct ipc_ring_ctl, tail) -
			  offsetof(struct ipc_ring_ctl, head), IPC_CACHELINE);
	ck_assert_int_eq(ipc_layout(128, 5000, &o, &size), DKV_OK);
	ck_assert_uint_eq(o.arena % 4096, 0);
	ck_assert_uint_ge(o.arena_size, 5000);
	ck_assert_uint_eq(o.arena + o.arena_size, size);
	ck_assert_uint_ge(o.cqes, o.sqes + 128 * sizeof(struct ipc_sqe));
	ck_assert_uint_ge(o.arena, o.cqes + 128 * sizeof(struct ipc_cqe));
}
END_TEST

START_TEST(sqe_checks)
{
	struct ipc_geom g = { .n_layers = 4, .n_q_heads = 8, .n_kv_heads = 2,
			      .head_dim = 64, .dsize = 2 };
	struct ipc_sqe e = { .seq_id = 1, .layer = 3, .n_q = 2, .n_new = 2 };
	uint64_t arena = 1 << 16;

	e.k_off = 4096, e.v_off = 8192, e.out_off = 12288;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_OK);
	e.layer = 4;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_E_INVAL);
	ck_assert_ptr_nonnull(strstr(err, "layer 4"));
	e.layer = 0;
	e.out_off = arena - 1;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_E_INVAL);
	e.out_off = UINT64_MAX - 100;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_E_INVAL);
	e.out_off = 12288;
	e.n_new = 0xffffffffu;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_E_INVAL);
	e.n_new = 0;
	e.k_off = 0;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_OK);
	e.q_off = 1;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_E_INVAL);
	e.q_off = 0;
	e.reserved[2] = 9;
	ck_assert_int_eq(ipc_check_sqe(&e, &g, arena, err), DKV_E_PROTO);
}
END_TEST

START_TEST(reply_checks)
{
	struct ipc_error e = { .status = DKV_E_PERM };
	struct ipc_cqe c = { .status = 0 };

	strcpy(e.msg, "no");
	ck_assert_int_eq(ipc_check_error(&e, err), DKV_OK);
	e.status = 0;
	ck_assert_int_eq(ipc_check_error(&e, err), DKV_E_PROTO);
	e.status = -100;
	ck_assert_int_eq(ipc_check_error(&e, err), DKV_E_PROTO);
	e.status = DKV_E_IO;
	memset(e.msg, 'x', sizeof(e.msg));
	ck_assert_int_eq(ipc_check_error(&e, err), DKV_E_PROTO);
	ck_assert_int_eq(ipc_check_cqe(&c, err), DKV_OK);
	c.status = 5;
	ck_assert_int_eq(ipc_check_cqe(&c, err), DKV_E_PROTO);
}
END_TEST

/* Deterministic random messages never crash the validators. */
START_TEST(validators_fuzz)
{
	uint64_t x = 88172645463325252ull;
	union {
		struct ipc_hdr h;
		struct ipc_hello hello;
		struct ipc_accept a;
		struct ipc_sqe e;
		struct ipc_error er;
		struct ipc_cqe c;
		unsigned char raw[512];
	} u;
	struct ipc_geom g = { 2, 4, 2, 64, 4 };

	for (int i = 0; i < 20000; i++) {
		for (size_t j = 0; j < sizeof(u.raw); j++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			u.raw[j] = (unsigned char)x;
		}
		ipc_check_hdr(&u.h, err);
		ipc_check_hello(&u.hello, err);
		ipc_check_accept(&u.a, x, err);
		ipc_check_sqe(&u.e, &g, 1 << 20, err);
		ipc_check_error(&u.er, err);
		ipc_check_cqe(&u.c, err);
	}
}
END_TEST

static char *write_conf(const char *text)
{
	static char path[] = "/tmp/check_ipc.XXXXXX";
	char *p = strdup(path);
	int fd = mkstemp(p);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	return p;
}

START_TEST(conf_good)
{
	char *p = write_conf("# comment\n\nsocket /tmp/x.sock\nsocket_mode 0600\n"
			     "memory_limit = 2G  # two\nallow_users 0, 1000\n"
			     "log_level debug\nmax_sessions 8\n");
	struct dmn_config c;
	char text[4096];
	FILE *f;

	ck_assert_int_eq(dmn_config_load(p, 0, &c, err), 0);
	ck_assert_str_eq(c.socket, "/tmp/x.sock");
	ck_assert_uint_eq(c.socket_mode, 0600);
	ck_assert_uint_eq(c.memory_limit, 2ull << 30);
	ck_assert_uint_eq(c.max_sessions, 8);
	ck_assert_uint_eq(c.log_level, 3);
	ck_assert_int_eq(dmn_config_allows(&c, 1000, 5, 42), 1);
	ck_assert_int_eq(dmn_config_allows(&c, 1001, 5, 1001), 0);
	f = fmemopen(text, sizeof(text), "w");
	dmn_config_print(&c, f);
	fclose(f);
	ck_assert_ptr_nonnull(strstr(text, "socket_mode 0600\n"));
	ck_assert_ptr_nonnull(strstr(text, "log_level debug\n"));
	unlink(p);
	free(p);
}
END_TEST

/*
 * -T output loads back to the same configuration, also for string values
 * that begin with '=' (the optional separator) or hold a '=' later.
 */
START_TEST(conf_print_round_trip)
{
	char *p = write_conf("user ==x\nshards = =cpu:2\nsocket /tmp/a=b.sock\n");
	struct dmn_config c, back;
	char text[8192];
	FILE *f;

	ck_assert_int_eq(dmn_config_load(p, 0, &c, err), 0);
	ck_assert_str_eq(c.user, "=x");
	ck_assert_str_eq(c.shards, "=cpu:2");
	unlink(p);
	free(p);
	f = fmemopen(text, sizeof(text), "w");
	dmn_config_print(&c, f);
	fclose(f);
	p = write_conf(text);
	ck_assert_int_eq(dmn_config_load(p, 0, &back, err), 0);
	ck_assert_str_eq(back.user, "=x");
	ck_assert(!memcmp(&back, &c, sizeof(c)));
	unlink(p);
	free(p);
}
END_TEST

START_TEST(conf_bad)
{
	static const char *const bad[] = {
		"nonsense 1\n", "max_sessions 0\n", "max_sessions 5000\n",
		"memory_limit 12Q\n", "memory_limit -1\n", "socket_mode 0999\n",
		"log_level loud\n", "max_sessions\n", "socket\n",
		"memory_limit 99999999999999999999T\n", "ring_entries 48\n",
		"workers 4\n", "step_timeout 86401\n", "step_timeout -1\n",
		"idle_poll_us 1000001\n", "idle_poll_us 5ms\n",
	};
	struct dmn_config c;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[256], where[64];
		char *p;

		snprintf(text, sizeof(text), "log_level info\n\n%s", bad[i]);
		p = write_conf(text);
		ck_assert_msg(dmn_config_load(p, 0, &c, err) == -1,
			      "accepted %s", bad[i]);
		snprintf(where, sizeof(where), "%s:3: ", p);
		ck_assert_msg(!strncmp(err, where, strlen(where)), "error: %s", err);
		unlink(p);
		free(p);
	}
	ck_assert_int_eq(dmn_config_load("/nonexistent/dashkv.conf", 0, &c, err), -1);
	ck_assert_int_eq(dmn_config_load("/nonexistent/dashkv.conf", 1, &c, err), 0);
	ck_assert_str_eq(c.socket, DMN_DEF_SOCKET);
}
END_TEST

START_TEST(conf_reload)
{
	struct dmn_config cur, next;

	dmn_config_defaults(&cur);
	next = cur;
	strcpy(next.socket, "/tmp/other.sock");
	next.memory_limit = 1 << 20;
	dmn_config_reload(&cur, &next);
	ck_assert_str_eq(cur.socket, DMN_DEF_SOCKET); /* needs a restart */
	ck_assert_uint_eq(cur.memory_limit, 1 << 20);
}
END_TEST

/* A shorter string value leaves no bytes of the longer one: reload compares
 * whole fields, and -T read back gives the same configuration. */
START_TEST(conf_strings)
{
	struct dmn_config a, b;

	dmn_config_defaults(&a);
	dmn_config_defaults(&b);
	ck_assert_int_eq(dmn_config_line(&a, "allow_users 1000,alice", err), 0);
	ck_assert_int_eq(dmn_config_line(&a, "allow_users 7", err), 0);
	ck_assert_int_eq(dmn_config_line(&b, "allow_users 7", err), 0);
	ck_assert_mem_eq(&a, &b, sizeof(a));
	ck_assert_int_eq(dmn_config_line(&a, "user nobody", err), 0);
	ck_assert_str_eq(a.user, "nobody");
	ck_assert_int_eq(dmn_config_line(&a, "step_timeout 5", err), 0);
	ck_assert_uint_eq(a.step_timeout, 5);
	ck_assert_uint_eq(b.step_timeout, 300);
	ck_assert_int_eq(dmn_config_line(&a, "idle_poll_us 2000", err), 0);
	ck_assert_uint_eq(a.idle_poll_us, 2000);
	ck_assert_uint_eq(b.idle_poll_us, 50);
}
END_TEST

START_TEST(reject_names)
{
	ck_assert_str_eq(ipc_reject_name(IPC_REJ_PERM), "perm");
	ck_assert_str_eq(ipc_reject_name(IPC_REJ_OTHER), "other");
	ck_assert_ptr_null(ipc_reject_name(IPC_REJ_END));
	ck_assert_int_le(IPC_REJ_END, IPC_REJ_SLOTS);
	ck_assert_int_eq(ipc_reject_of(DKV_E_INVAL), IPC_REJ_DESCRIPTOR);
	ck_assert_int_eq(ipc_reject_of(DKV_E_BADINPUT), IPC_REJ_INPUT);
	ck_assert_int_eq(ipc_reject_of(DKV_E_NOSPACE), IPC_REJ_NOSPACE);
	ck_assert_int_eq(ipc_reject_of(DKV_E_NOMEM), IPC_REJ_OTHER);
	ck_assert_uint_eq(ipc_payload_size(IPC_SESSION_INFO), sizeof(struct ipc_session_info));
	ck_assert_uint_eq(ipc_payload_size(IPC_SRVSTATS_OK), sizeof(struct ipc_srvstats));
	ck_assert_uint_eq(ipc_payload_size(IPC_DRAIN), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("ipc");
	TCase *t = tcase_create("proto");
	TCase *c = tcase_create("conf");
	SRunner *r;
	int failed;

	tcase_add_test(t, hdr_checks);
	tcase_add_test(t, hello_accept);
	tcase_add_test(t, open_model_checks);
	tcase_add_test(t, ring_layout);
	tcase_add_test(t, sqe_checks);
	tcase_add_test(t, reply_checks);
	tcase_add_test(t, validators_fuzz);
	tcase_add_test(c, conf_good);
	tcase_add_test(c, conf_print_round_trip);
	tcase_add_test(c, conf_bad);
	tcase_add_test(c, conf_reload);
	tcase_add_test(c, conf_strings);
	tcase_add_test(t, reject_names);
	suite_add_tcase(s, t);
	suite_add_tcase(s, c);
	r = srunner_create(s);
	srunner_run_all(r, CK_NORMAL);
	failed = srunner_ntests_failed(r);
	srunner_free(r);
	return failed ? 1 : 0;
}
