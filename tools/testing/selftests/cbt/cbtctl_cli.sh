#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# What of cbtctl's command line needs devices (the rest is host-side, in
# userspace/tests/cli.sh): `cbtctl list` and its JSON, the "version" field
# of every --json object, a JSON string from bytes that are not UTF-8, and
# the backup's progress: plain lines under -p when standard error is a
# file, a bar only on a terminal whose TERM is not dumb, nothing under -q;
# output that cannot be written (a reader gone, a full disk) and device
# paths other than /dev/mapper/NAME.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl jq script
plan 5

SIZE=$((16 << 20))

test_list() {
	local dir loop name dev d1 d2 lin out
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE list-a || return 1
	d1=$name
	cbtctl bitmap add "$dev" b0 || fail "bitmap add b0"
	cbtctl bitmap add "$dev" b1 --granularity 128K --disabled || fail "bitmap add b1"
	qio "$dev" "write -P 0x11 0 64k"
	cbt_over_file "$dir/b.raw" $SIZE list-b || return 1
	d2=$name
	# Not a cbt device: not listed.
	lin=$(dm_name list-linear)
	dm_create "$lin" "0 $((SIZE / 512)) linear $loop 0" || return 1

	out=$(cbtctl list) || fail "list: $out"
	head -1 <<<"$out" | grep -qE '^DEVICE +SIZE +BITMAP +GRANULARITY +DIRTY +STATE +SNAPSHOT$' ||
		fail "list header: $out"
	grep -qE "^$d1 +$SIZE +b0 +65536 +65536 +recording +none$" <<<"$out" || fail "b0 line: $out"
	grep -qE "^$d1 +$SIZE +b1 +131072 +0 +disabled,inconsistent +none$" <<<"$out" ||
		fail "b1 line: $out"
	grep -qE "^$d2 +$SIZE +- +- +- +- +none$" <<<"$out" || fail "no-bitmap line: $out"
	grep -q "$lin" <<<"$out" && fail "a linear device is listed: $out"

	out=$(cbtctl list --json) || fail "list --json: $out"
	expect_eq "list version" "$(jq .version <<<"$out")" 1
	expect_eq "list devices" "$(jq -r '[.devices[].device | select(startswith("cbt-test-'$$'-"))] | join(" ")' \
		<<<"$out")" "$d1 $d2"
	expect_eq "list b0 count" "$(jq ".devices[] | select(.device == \"$d1\") | .bitmaps[0].count" \
		<<<"$out")" 65536
	expect_eq "list device has no version" "$(jq '.devices[0] | has("version")' <<<"$out")" false
	expect_eq "status version" "$(cbtctl status "$d1" --json | jq .version)" 1
}

test_backup_json_utf8() {
	local dir loop name dev out target
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE json || return 1
	# A target name that is not UTF-8: 0xff, a lone continuation byte, an overlong '/'.
	target=$dir/$'t\xff\x80\xc0\xaf'.qcow2
	cbtctl backup --sync full --json -q "$dev=$target" >"$dir/out.json" 2>"$dir/err" ||
		fail "backup: $(cat "$dir/out.json" "$dir/err")"
	jq -e . "$dir/out.json" >/dev/null || fail "not JSON: $(cat "$dir/out.json")"
	expect_eq "backup version" "$(jq .version "$dir/out.json")" 1
	expect_eq "backup target" "$(jq -r '.jobs[0].target' "$dir/out.json")" \
		"$dir/t"$'\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd'.qcow2
	expect_eq "-q: nothing on stderr" "$(cat "$dir/err")" ""
	chain_matches "$target" "$dev"
}

test_progress() {
	local dir loop name dev out
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE progress || return 1
	# -p with standard error a file: plain lines, no carriage return.
	cbtctl backup --sync=full -p "$dev=$dir/p.qcow2" >"$dir/out" 2>"$dir/err" ||
		fail "backup -p: $(cat "$dir/err")"
	grep -q '^cbtctl: backup 100% ' "$dir/err" || fail "-p: no 100% line: $(cat -A "$dir/err")"
	grep -q $'\r' "$dir/err" && fail "-p: a carriage return: $(cat -A "$dir/err")"
	grep -q "completed" "$dir/out" || fail "-p: no summary: $(cat "$dir/out")"
	# No option, standard error a file: no progress.
	cbtctl backup --sync=full "$dev=$dir/n.qcow2" >"$dir/out" 2>"$dir/err" ||
		fail "backup: $(cat "$dir/err")"
	expect_eq "no progress into a file" "$(cat "$dir/err")" ""
	# -q: nothing at all on success.
	cbtctl backup --sync=full -q "$dev=$dir/q.qcow2" >"$dir/out" 2>"$dir/err" ||
		fail "backup -q: $(cat "$dir/err")"
	expect_eq "-q output" "$(cat "$dir/out" "$dir/err")" ""
	# A terminal (script's pty): the bar with TERM=xterm, none with TERM=dumb.
	TERM=xterm script -qec "cbtctl backup --sync=full '$dev=$dir/x.qcow2'" /dev/null >"$dir/tty" ||
		fail "backup on a tty: $(cat -A "$dir/tty")"
	grep -q $'\r\\[#* *\\] 100%' "$dir/tty" || fail "TERM=xterm: no bar: $(cat -A "$dir/tty")"
	TERM=dumb script -qec "cbtctl backup --sync=full '$dev=$dir/d.qcow2'" /dev/null >"$dir/tty" ||
		fail "backup on a dumb tty: $(cat -A "$dir/tty")"
	grep -q '%' "$dir/tty" && fail "TERM=dumb: progress shown: $(cat -A "$dir/tty")"
	grep -q "completed" "$dir/tty" || fail "TERM=dumb: no summary: $(cat -A "$dir/tty")"
}

# A reader that went away before cbtctl wrote (as "| head -c 1" does): the
# backup is not killed by SIGPIPE halfway (exit 141, a view, a snapshot and
# a frozen bitmap left) but completes and commits, and exits 1 because its
# report was lost; a full disk under --json exits 1 too.
test_output_errors() {
	local dir loop name dev w rc
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE pipe || return 1
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	qio "$dev" "write -P 0x11 0 1M" "write -P 0x12 9M 64k"
	exec {w}> >(exec true)
	wait $! 2>/dev/null || nap 1
	cbtctl backup --sync=full -b b0 -p "$dev=$dir/p.qcow2" >&$w 2>&1 && rc=0 || rc=$?
	expect_eq "exit status, output to a closed pipe" "$rc" 1
	expect_eq "views left" "$(views)" 0
	expect_eq "snapshot" "$(snap_state "$dev")" none
	expect_eq "bitmap busy" "$(bitmap_field "$dev" b0 busy)" false
	expect_eq "bitmap committed" "$(bitmap_field "$dev" b0)" 0
	chain_matches "$dir/p.qcow2" "$dev"
	cbtctl status "$dev" --json >&$w 2>"$dir/err" && rc=0 || rc=$?
	exec {w}>&-
	expect_eq "status into a closed pipe" "$rc" 1
	grep -q "cannot write standard output: Broken pipe" "$dir/err" || fail "err: $(cat "$dir/err")"
	cbtctl list --json >/dev/full 2>"$dir/err" && rc=0 || rc=$?
	expect_eq "list --json into /dev/full" "$rc" 1
	grep -q "No space left on device" "$dir/err" || fail "err: $(cat "$dir/err")"
}

# /dev/dm-N and any other path to the device name the same device as its
# dm name: for the bitmap commands, status, a backup, and the lock that
# keeps two runs apart.
test_device_paths() {
	local dir loop name dev dmn pid rc
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE paths || return 1
	# devtmpfs makes /dev/dm-MINOR for every dm device.
	dmn=/dev/dm-$(dmsetup info -c --noheadings -o minor "$name")
	[ -b "$dmn" ] || { fail "no block device $dmn for $name"; return 1; }
	cbtctl bitmap add "$dmn" b0 || fail "bitmap add through $dmn"
	expect_eq "status through $dmn" "$(cbtctl status "$dmn" --json | jq -r '.bitmaps[0].name')" b0
	cbtctl backup -q --sync=full -b b0 "$dmn=$dir/full.qcow2" || fail "full backup through $dmn"
	qio "$dev" "write -P 0x21 2M 64k"
	CBT_TEST_STOP_AT=prepared cbtctl backup -q --sync=incremental -b b0 \
		"$dmn=$dir/inc.qcow2,backing=full.qcow2" 2>"$dir/err" &
	pid=$!
	wait_stopped $pid "prepared"
	cbtctl backup -q --sync=incremental -b b0 "$name=$dir/inc2.qcow2,backing=full.qcow2" \
		2>"$dir/err2" && rc=0 || rc=$?
	expect_eq "a second run through the dm name" "$rc" 1
	grep -q "$name: in use by another cbtctl (pid $pid)" "$dir/err2" ||
		fail "not refused by the lock: $(cat "$dir/err2")"
	kill -CONT $pid
	wait $pid || fail "the run through $dmn: $(cat "$dir/err")"
	chain_matches "$dir/inc.qcow2" "$dev"
}

run_test "list: cbt devices only, bitmaps, states, JSON" test_list
run_test "backup --json: version, a target that is not UTF-8, -q" test_backup_json_utf8
run_test "progress: lines under -p, a bar on a terminal only, none under -q" test_progress
run_test "a closed pipe or a full disk on the output: no SIGPIPE death, exit 1" test_output_errors
run_test "/dev/dm-N names the device: bitmaps, status, backup, the lock" test_device_paths
finish
