// SPDX-License-Identifier: GPL-2.0
/* cbt_parse_size: the SIZE arguments of cbtctl. */
#include <errno.h>
#include <stdint.h>

#include "libcbt.h"
#include "unit.h"

static int parse(const char *s, uint64_t *v)
{
	*v = 0xdeadbeef;
	return cbt_parse_size(s, v);
}

int main(void)
{
	uint64_t v;

	CHECK(parse("0", &v) == 0 && v == 0);
	CHECK(parse("512", &v) == 0 && v == 512);
	CHECK(parse("64K", &v) == 0 && v == 65536);
	CHECK(parse("64k", &v) == 0 && v == 65536);
	CHECK(parse("2M", &v) == 0 && v == 2u << 20);
	CHECK(parse("1G", &v) == 0 && v == 1u << 30);
	CHECK(parse("16T", &v) == 0 && v == 16ULL << 40);
	CHECK(parse("128KiB", &v) == 0 && v == 128 << 10);
	CHECK(parse("1MB", &v) == 0 && v == 1 << 20);
	CHECK(parse("18446744073709551615", &v) == 0 && v == UINT64_MAX);

	/* Refusals leave the output alone. */
	CHECK(parse("", &v) == -EINVAL && v == 0xdeadbeef);
	CHECK(parse("K", &v) == -EINVAL);
	CHECK(parse("-1", &v) == -EINVAL);
	CHECK(parse(" 1", &v) == -EINVAL);
	CHECK(parse("1 ", &v) == -EINVAL);
	CHECK(parse("1X", &v) == -EINVAL);
	CHECK(parse("1KK", &v) == -EINVAL);
	CHECK(parse("1.5M", &v) == -EINVAL);
	CHECK(parse("18446744073709551616", &v) == -ERANGE && v == 0xdeadbeef);
	CHECK(parse("16777216T", &v) == -ERANGE);
	CHECK(cbt_parse_size(NULL, &v) == -EINVAL);

	return unit_done("test-size");
}
