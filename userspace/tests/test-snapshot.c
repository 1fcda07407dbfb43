// SPDX-License-Identifier: GPL-2.0
/* The snapshot info answer, chunk sizes, event names and freeze hooks, on the host. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <linux/dm-cbt.h>
#include "hook.h"
#include "snapshot.h"
#include "unit.h"

static void parse_info(void)
{
	struct cbt_snapshot_info s;

	CHECK(cbt_snapshot_parse("state=none", &s) == 0 && s.state == CBT_SNAPSHOT_NONE);
	CHECK(cbt_snapshot_parse("state=none\n", &s) == 0 && !s.token[0]);
	CHECK(cbt_snapshot_parse("token=cbtctl.12.34 state=running chunk=65536 length=16777216 "
				 "needed=250 preserved=3 used=196608 limit=67108864 waited=7 "
				 "timeout=30 views=1", &s) == 0);
	CHECK(s.state == CBT_SNAPSHOT_RUNNING && !strcmp(s.token, "cbtctl.12.34"));
	CHECK(s.chunk == 65536 && s.length == 16777216 && s.needed == 250 && s.preserved == 3);
	CHECK(s.used == 196608 && s.limit == 67108864 && s.waited == 7 && s.timeout == 30 &&
	      s.views == 1);
	CHECK(cbt_snapshot_parse("token=t state=broken", &s) == 0 &&
	      s.state == CBT_SNAPSHOT_BROKEN);
	CHECK(cbt_snapshot_parse("token=t state=prepared", &s) == 0 &&
	      s.state == CBT_SNAPSHOT_PREPARED);
	/* Fields appended later are skipped. */
	CHECK(cbt_snapshot_parse("token=t state=running future=9 needed=2", &s) == 0 &&
	      s.needed == 2);
	/* Refused: no state, an unknown state, junk, a bad number, a long token. */
	CHECK(cbt_snapshot_parse("", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("token=t needed=1", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("state=asleep", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("state=running needed", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("state=running =1", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("state=running needed=1x", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("state=running needed=-1", &s) == -EPROTO);
	CHECK(cbt_snapshot_parse("state=running token=0123456789012345678901234567890123456789"
				 "012345678901234567890123", &s) == -EPROTO);
	CHECK(!strcmp(cbt_snapshot_state_name(CBT_SNAPSHOT_BROKEN), "broken"));
	CHECK(!strcmp(cbt_snapshot_state_name(99), "unknown"));
}

static void runs(void)
{
	struct cbt_extent r[3];

	CHECK(cbt_snapshot_parse_runs("\n", r, 3) == 0);
	CHECK(cbt_snapshot_parse_runs("0+4096 65536+8192\n", r, 3) == 2);
	CHECK(r[0].offset == 0 && r[0].length == 4096);
	CHECK(r[1].offset == 65536 && r[1].length == 8192);
	CHECK(cbt_snapshot_parse_runs("1+1 2+1 3+1 4+1", r, 3) == -EPROTO);
	CHECK(cbt_snapshot_parse_runs("1+0", r, 3) == -EPROTO);
	CHECK(cbt_snapshot_parse_runs("1-2", r, 3) == -EPROTO);
	CHECK(cbt_snapshot_parse_runs("-1+2", r, 3) == -EPROTO);
	CHECK(cbt_snapshot_parse_runs("1+2x", r, 3) == -EPROTO);
	CHECK(cbt_snapshot_parse_runs("18446744073709551615+2", r, 3) == -EPROTO);
}

static void chunks(void)
{
	CHECK(cbt_snapshot_cluster(512) == 4096);
	CHECK(cbt_snapshot_cluster(4096) == 4096);
	CHECK(cbt_snapshot_cluster(65536) == 65536);
	CHECK(cbt_snapshot_cluster(2u << 20) == 2u << 20);
	CHECK(cbt_snapshot_cluster(4u << 20) == 2u << 20);
	/* 4 KiB chunks up to 64 GiB of device, then larger, never above the cluster. */
	CHECK(cbt_snapshot_chunk(65536, 512ull << 20) == 4096);
	CHECK(cbt_snapshot_chunk(512, 512ull << 20) == 4096);
	CHECK(cbt_snapshot_chunk(65536, 64ull << 30) == 4096);
	CHECK(cbt_snapshot_chunk(65536, (64ull << 30) + 4096) == 8192);
	CHECK(cbt_snapshot_chunk(65536, 1ull << 40) == 65536);
	CHECK(cbt_snapshot_chunk(65536, 16ull << 40) == 65536);
	CHECK(cbt_snapshot_chunk(2u << 20, 16ull << 40) == 1u << 20);
}

static void events(void)
{
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_FREEZE), "freeze"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_RESIZE), "resize"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_SNAPSHOT_START), "snapshot_start"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_SNAPSHOT_STOP), "snapshot_stop"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_SNAPSHOT_BREAK), "snapshot_break"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_VIEW_CREATE), "view_create"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_VIEW_REMOVE), "view_remove"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_LOADED), "loaded"));
	CHECK(!strcmp(cbt_event_name(0), "unknown"));
	CHECK(!strcmp(cbt_event_name(DM_CBT_EVENT_LOADED + 1), "unknown"));
}

/* The file's content, or "" */
static const char *slurp(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	size_t n = 0;

	if (f) {
		n = fread(buf, 1, len - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	return buf;
}

static void hooks(void)
{
	char dir[] = "/tmp/test-hook.XXXXXX", log[128], buf[256];
	const char *cmd = "echo out; echo hook";
	struct cbt_err e = { 0 };
	int saved, fd;

	if (!mkdtemp(dir)) {
		CHECK(0);
		return;
	}
	snprintf(log, sizeof(log), "%s/log", dir);
	/* The argument comes last; stdout goes to our stderr, which is the log here. */
	saved = dup(STDERR_FILENO);
	fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	dup2(fd, STDERR_FILENO);
	close(fd);
	CHECK(cbt_run_hook(cmd, "freeze", &e) == 0);
	CHECK(cbt_run_hook(cmd, "thaw", &e) == 0);
	dup2(saved, STDERR_FILENO);
	close(saved);
	CHECK(!strcmp(slurp(log, buf, sizeof(buf)), "out\nhook freeze\nout\nhook thaw\n"));

	CHECK(cbt_run_hook("exit 3; :", "freeze", &e) == -ECHILD && e.errnum == ECHILD);
	CHECK(strstr(e.msg, "'exit 3; : freeze' exited with status 3") != NULL);
	CHECK(cbt_run_hook("kill -TERM $$; :", "thaw", &e) == -ECHILD);
	CHECK(strstr(e.msg, "killed by signal 15") != NULL);
	CHECK(cbt_run_hook("/nonexistent/hook 2>/dev/null", "freeze", &e) == -ECHILD);
	CHECK(strstr(e.msg, "status 127") != NULL);
	/* Standard input is /dev/null: a hook that reads it does not hang. */
	CHECK(cbt_run_hook("read x; test -z \"$x\" || exit 1; :", "freeze", &e) == 0);
	unlink(log);
	rmdir(dir);
}

int main(void)
{
	parse_info();
	chunks();
	runs();
	events();
	hooks();
	return unit_done("test-snapshot");
}
