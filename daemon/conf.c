/* conf.c - the table-driven dashkv.conf parser. */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "log.h"

enum ctype { C_STR, C_UINT, C_SIZE, C_OCTAL, C_LEVEL, C_LIST };

struct centry {
	const char *name;
	enum ctype type;
	size_t off, size;       /* size: of strings */
	uint64_t min, max;
	const char *def;
	int reloadable;
};

#define F(f) offsetof(struct dmn_config, f), sizeof(((struct dmn_config *)0)->f)

static const struct centry table[] = {
	{ "socket", C_STR, F(socket), 1, 0, DMN_DEF_SOCKET, 0 },
	{ "socket_mode", C_OCTAL, F(socket_mode), 0, 0777, "0660", 0 },
	{ "allow_users", C_LIST, F(allow_users), 0, 0, "", 1 },
	{ "allow_groups", C_LIST, F(allow_groups), 0, 0, "", 1 },
	{ "user", C_LIST, F(user), 0, 0, "", 0 },
	{ "shards", C_LIST, F(shards), 0, 0, "", 0 },
	{ "memory_limit", C_SIZE, F(memory_limit), 0, UINT64_MAX, "0", 1 },
	{ "session_memory_limit", C_SIZE, F(session_memory_limit), 0, UINT64_MAX, "0", 1 },
	{ "max_sessions", C_UINT, F(max_sessions), 1, 4096, "64", 1 },
	{ "workers", C_UINT, F(workers), 0, 0, "0", 0 }, /* thread per session */
	{ "log_level", C_LEVEL, F(log_level), 0, 3, "info", 1 },
	{ "ring_entries", C_UINT, F(ring_entries), 1, 65536, "64", 0 },
	{ "max_arena", C_SIZE, F(max_arena), 1 << 20, 1ull << 36, "1G", 1 },
	{ "step_timeout", C_UINT, F(step_timeout), 0, 86400, "300", 1 },
	{ "idle_poll_us", C_UINT, F(idle_poll_us), 0, 1000000, "50", 1 },
};

#define N_ENTRIES (sizeof(table) / sizeof(table[0]))

static const char *const levels[] = { "error", "warning", "info", "debug" };

static int parse_uint(const char *v, int base, uint64_t *out)
{
	char *end;

	if (!isdigit((unsigned char)*v))
		return -1;
	errno = 0;
	*out = strtoull(v, &end, base);
	if (errno || *end)
		return -1;
	return 0;
}

static int parse_size(const char *v, uint64_t *out)
{
	char num[32], *end;
	size_t n = strlen(v);
	unsigned shift = 0;

	if (!n || n >= sizeof(num))
		return -1;
	memcpy(num, v, n + 1);
	switch (num[n - 1]) {
	case 'K': case 'k': shift = 10; break;
	case 'M': case 'm': shift = 20; break;
	case 'G': case 'g': shift = 30; break;
	case 'T': case 't': shift = 40; break;
	}
	if (shift)
		num[n - 1] = '\0';
	if (!isdigit((unsigned char)num[0]))
		return -1;
	errno = 0;
	*out = strtoull(num, &end, 10);
	if (errno || *end || (shift && *out > (UINT64_MAX >> shift)))
		return -1;
	*out <<= shift;
	return 0;
}

static int parse_value(const struct centry *e, struct dmn_config *c,
		       const char *v, char *err)
{
	uint64_t x = 0;
	int rc = 0;

	switch (e->type) {
	case C_STR:
	case C_LIST:
		if (strlen(v) >= e->size || (e->type == C_STR && !*v))
			return krn_msgf(err, -1, "%s: value empty or too long", e->name);
		/* zero the rest: reload compares whole fields */
		memset((char *)c + e->off, 0, e->size);
		strcpy((char *)c + e->off, v);
		return 0;
	case C_UINT: rc = parse_uint(v, 10, &x); break;
	case C_OCTAL: rc = parse_uint(v, 8, &x); break;
	case C_SIZE: rc = parse_size(v, &x); break;
	case C_LEVEL:
		rc = -1;
		for (unsigned i = 0; i < 4; i++)
			if (!strcmp(v, levels[i]))
				x = i, rc = 0;
		break;
	}
	if (rc || x < e->min || x > e->max)
		return krn_msgf(err, -1, "%s: bad value \"%s\" (range %" PRIu64 " .. %" PRIu64 ")",
				e->name, v, e->min, e->max);
	*(uint64_t *)((char *)c + e->off) = x;
	return 0;
}

/* Rules beyond a setting's bounds. */
static int check_value(const struct dmn_config *c, const char *name, char *err)
{
	if (!strcmp(name, "ring_entries") && (c->ring_entries & (c->ring_entries - 1)))
		return krn_msgf(err, -1, "ring_entries: %" PRIu64 " is not a power of two",
				c->ring_entries);
	return 0;
}

void dmn_config_defaults(struct dmn_config *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < N_ENTRIES; i++)
		parse_value(&table[i], c, table[i].def, NULL);
}

int dmn_config_line(struct dmn_config *c, const char *line, char *err)
{
	char name[64];
	size_t n = strcspn(line, " \t=");
	const char *v = line + n;

	if (n >= sizeof(name))
		return krn_msgf(err, -1, "setting name too long");
	memcpy(name, line, n);
	name[n] = '\0';
	v += strspn(v, " \t");
	if (*v == '=')
		v += 1 + strspn(v + 1, " \t");
	for (size_t i = 0; i < N_ENTRIES; i++)
		if (!strcmp(table[i].name, name))
			return parse_value(&table[i], c, v, err) ||
			       check_value(c, name, err) ? -1 : 0;
	return krn_msgf(err, -1, "unknown setting \"%s\"", name);
}

static char *trim(char *s)
{
	char *e;

	s[strcspn(s, "#\n")] = '\0';
	s += strspn(s, " \t");
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

int dmn_config_load(const char *path, int missing_ok, struct dmn_config *c, char *err)
{
	char buf[1024], why[KRN_MSGLEN];
	unsigned lineno = 0;
	FILE *f;

	dmn_config_defaults(c);
	f = fopen(path, "re");
	if (!f) {
		if (missing_ok && errno == ENOENT)
			return 0;
		return krn_msgf(err, -1, "%s: %s", path, strerror(errno));
	}
	while (fgets(buf, sizeof(buf), f)) {
		char *line = trim(buf);

		lineno++;
		if (!*line)
			continue;
		if (dmn_config_line(c, line, why)) {
			fclose(f);
			return krn_msgf(err, -1, "%s:%u: %s", path, lineno, why);
		}
	}
	fclose(f);
	return 0;
}

static void print_entry(const struct centry *e, const struct dmn_config *c, FILE *f)
{
	const void *p = (const char *)c + e->off;
	uint64_t x = *(const uint64_t *)p;

	switch (e->type) {
	case C_STR:
	case C_LIST:
		/* a value that begins with '=' needs the separator to survive a reload */
		fprintf(f, "%s %s%s\n", e->name, *(const char *)p == '=' ? "= " : "",
			(const char *)p);
		break;
	case C_OCTAL:
		fprintf(f, "%s 0%" PRIo64 "\n", e->name, x);
		break;
	case C_LEVEL:
		fprintf(f, "%s %s\n", e->name, levels[x]);
		break;
	default:
		fprintf(f, "%s %" PRIu64 "\n", e->name, x);
	}
}

void dmn_config_print(const struct dmn_config *c, FILE *f)
{
	for (size_t i = 0; i < N_ENTRIES; i++)
		print_entry(&table[i], c, f);
}

void dmn_config_reload(struct dmn_config *cur, const struct dmn_config *next)
{
	for (size_t i = 0; i < N_ENTRIES; i++) {
		const struct centry *e = &table[i];
		size_t size = e->type == C_STR || e->type == C_LIST ? e->size : 8;
		char *d = (char *)cur + e->off;
		const char *s = (const char *)next + e->off;

		if (!memcmp(d, s, size))
			continue;
		if (e->reloadable)
			memcpy(d, s, size);
		else
			dmn_log(DMN_WARN, "reload: %s changes only at restart", e->name);
	}
}

static int id_in_list(const char *list, uint32_t id, int groups)
{
	char buf[512], *tok, *save = NULL;

	snprintf(buf, sizeof(buf), "%s", list);
	for (tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
		uint64_t n;

		if (!parse_uint(tok, 10, &n)) {
			if (n == id)
				return 1;
		} else if (groups) {
			struct group *g = getgrnam(tok);

			if (g && g->gr_gid == id)
				return 1;
		} else {
			struct passwd *pw = getpwnam(tok);

			if (pw && pw->pw_uid == id)
				return 1;
		}
	}
	return 0;
}

int dmn_config_allows(const struct dmn_config *c, uint32_t uid, uint32_t gid,
		      uint32_t self_uid)
{
	if (!c->allow_users[0] && !c->allow_groups[0])
		return uid == self_uid;
	return id_in_list(c->allow_users, uid, 0) || id_in_list(c->allow_groups, gid, 1);
}
