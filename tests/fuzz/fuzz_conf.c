/*
 * fuzz_conf.c - libFuzzer target for the dashkv.conf parser (daemon/conf.c):
 * the input is a whole file, read through dmn_config_load as dashkvd -t
 * does, then printed as -T does and read back; what -T prints must parse
 * to the same settings.  Build: make fuzz (see tests/fuzz/Makefile.am.inc).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "conf.h"
#include "log.h"

static int as_file(const uint8_t *data, size_t size, char *path, size_t len)
{
	int fd = memfd_create("fuzz-conf", 0);

	if (fd < 0)
		return -1;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return -1;
	}
	snprintf(path, len, "/proc/self/fd/%d", fd);
	return fd;
}

/* -T output parsed again must give the same configuration. */
static void round_trip(const struct dmn_config *c)
{
	struct dmn_config back;
	char *text = NULL, err[512];
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	uint8_t buf[8192];
	char path[64];
	int fd;

	if (!f)
		return;
	dmn_config_print(c, f);
	fclose(f);
	if (len > sizeof(buf)) {
		free(text);
		return;
	}
	memcpy(buf, text, len);
	free(text);
	fd = as_file(buf, len, path, sizeof(path));
	if (fd < 0)
		return;
	if (dmn_config_load(path, 0, &back, err) ||
	    memcmp(&back, c, sizeof(back)))
		abort();
	close(fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	struct dmn_config c;
	char path[64], err[512];
	int fd;

	if (!quiet) {
		dmn_log_level(-1);
		quiet = 1;
	}
	if (size > 1 << 16)
		return 0;
	fd = as_file(data, size, path, sizeof(path));
	if (fd < 0)
		return 0;
	memset(&c, 0, sizeof(c));
	if (dmn_config_load(path, 0, &c, err) == 0)
		round_trip(&c);
	else if (!memchr(err, '\0', sizeof(err)))
		abort();
	close(fd);
	return 0;
}
