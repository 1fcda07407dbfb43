#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Data safety around the backup transaction: a bitmap commit the kernel
# refuses fails the backup; "cbtctl recover" with no device undoes a backup
# killed while it copies; the suspend is journalled before it happens and
# its resume after, with cbtctl's memory locked in between; recovery leaves
# alone a device that a live cbtctl holds; an existing image that cbtctl
# died writing into is marked unusable, one it never wrote into is not.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl
plan 7

SIZE=$((16 << 20))
export CBT_RUN_DIR=/tmp/cbtctl-run.$$
_tmp_dirs+=("$CBT_RUN_DIR")

# one_dev TAG: in a new $dir, a device $d0 ($n0 its dm name) with bitmap b0
# and a full backup of it, full.qcow2; then a write, so that b0 is dirty.
one_dev() {
	make_tmpdir dir
	pattern_dev d0 "$1" 0x41
	n0=${d0#/dev/mapper/}
	cbtctl bitmap add "$d0" b0 || fail "bitmap add"
	cbtctl backup -q --sync=full --bitmap=b0 "$d0=$dir/full.qcow2" || fail "full backup"
	qio "$d0" "write -P 0x5a 4M 64k"
}

# The kernel refuses the commit (the bitmap was aborted with force while
# cbtctl was stopped before it): exit 1, "bitmap_errors": 1, the image
# complete and in place, the bitmap's bits kept.
test_commit_refused() {
	local dir d0 n0 pid rc
	one_dev commit
	cbtctl backup -q --json --sync=incremental --bitmap=b0 \
		"$d0=$dir/ok.qcow2,backing=$dir/full.qcow2" >"$dir/ok.json" || fail "incremental"
	expect_eq "bitmap_errors of a good backup" "$(json_field bitmap_errors <"$dir/ok.json")" 0
	qio "$d0" "write -P 0x5b 8M 64k"
	CBT_TEST_STOP_AT=renamed cbtctl backup -q --json --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc.qcow2,backing=$dir/ok.qcow2" >"$dir/out.json" 2>"$dir/err" &
	pid=$!
	wait_stopped $pid "phase renamed"
	dmsetup message "$n0" 0 bitmap abort b0 force || fail "abort force"
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "exit status" "$rc" 1
	expect_eq "bitmap_errors" "$(json_field bitmap_errors <"$dir/out.json")" 1
	expect_eq "status" "$(sed 's/, "jobs".*//' "$dir/out.json" | json_field status)" failed
	expect_eq "job status" "$(job_field "$dir/out.json" 0 status)" completed
	has "$dir/err" "bitmap commit b0" || fail "the error names no commit: $(cat "$dir/err")"
	chain_matches "$dir/inc.qcow2" "$d0"
	expect_eq "bits kept" "$(bitmap_field "$d0" b0)" 65536
	expect_eq "not busy" "$(bitmap_field "$d0" b0 busy)" false
	expect_eq "journals" "$(journals)" ""
}

# Killed while it copies (a relative target, recovered from elsewhere):
# "cbtctl recover" with no device leaves no view, snapshot, suspend,
# frozen bitmap, temporary or journal, and the dirty bits are kept.
test_recover_all() {
	local dir d0 n0 pid
	one_dev all
	( cd "$dir" && CBT_TEST_STOP_AT=copy exec cbtctl backup -q --sync=incremental \
		--bitmap=b0 "$d0=inc.qcow2,backing=full.qcow2" >/dev/null 2>&1 ) &
	pid=$!
	wait_stopped $pid "phase copy"
	expect_eq "views while copying" "$(views)" 1
	[ -n "$(tmp_files "$dir")" ] || fail "no temporary while copying"
	[ -n "$(journals)" ] || fail "no journal while copying"
	[ -n "$(ls -A "$CBT_STATE_DIR/temporaries")" ] || fail "no record of temporaries"
	kill -9 $pid
	wait $pid 2>/dev/null || true
	(cd / && cbtctl recover) >"$dir/recover.out" || fail "recover: $(cat "$dir/recover.out")"
	has "$dir/recover.out" \
		"1 views removed, 1 snapshots stopped, 0 devices resumed, 0 freeze hooks thawed, 1 bitmaps aborted, 0 prunes finished, 1 temporary" || fail "recover said: $(cat "$dir/recover.out")"
	active "$n0" || fail "$d0 left suspended"
	expect_eq "views" "$(views)" 0
	expect_eq "snapshot" "$(snap_state "$d0")" none
	expect_eq "not busy" "$(bitmap_field "$d0" b0 busy)" false
	expect_eq "bits kept" "$(bitmap_field "$d0" b0)" 65536
	expect_eq "files" "$(ls -A "$dir" | grep -v -e '\.raw$' -e '\.out$' | tr '\n' ' ')" \
		"full.qcow2 "
	expect_eq "journals" "$(journals)" ""
}

# Killed while it copies, then its journal lost as a reboot loses /run:
# the record of temporaries (CBT_STATE_DIR, on a disk) named the temporary
# before it was made, and "cbtctl recover" removes it, and the record.
test_recover_no_journal() {
	local dir d0 n0 pid tmp rec view
	one_dev nojournal
	CBT_TEST_STOP_AT=copy cbtctl backup -q --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc.qcow2,backing=$dir/full.qcow2" >/dev/null 2>&1 &
	pid=$!
	wait_stopped $pid "phase copy"
	tmp=$(tmp_files "$dir")
	[ -n "$tmp" ] || fail "no temporary while copying"
	rec=$(grep -l . "$CBT_STATE_DIR"/temporaries/cbtctl.$pid.*) || fail "no record of temporaries"
	has_line "$rec" "temp $dir/$tmp" || fail "the record lacks the temporary: $(cat "$rec")"
	kill -9 $pid
	wait $pid 2>/dev/null || true
	# What a reboot takes with it: the journal in /run, the view.
	view=$(grep '^view ' "$CBT_RUN_DIR"/cbtctl.$pid.*) || fail "no view in the journal"
	rm -f "$CBT_RUN_DIR"/cbtctl.$pid.*
	dmsetup remove "${view#view }" || fail "cannot remove the view"
	cbtctl recover "$d0" >"$dir/recover.out" || fail "recover: $(cat "$dir/recover.out")"
	has "$dir/recover.out" "1 temporary" || fail "recover said: $(cat "$dir/recover.out")"
	expect_eq "temporaries" "$(tmp_files "$dir")" ""
	[ ! -e "$rec" ] || fail "the record stayed: $(cat "$rec")"
	expect_eq "not busy" "$(bitmap_field "$d0" b0 busy)" false
	expect_eq "bits kept" "$(bitmap_field "$d0" b0)" 65536
	expect_eq "journals" "$(journals)" ""
}

# At phase suspended the journal has "suspend NAME" and no "resumed NAME"
# and cbtctl's memory is locked; once copying, "resumed NAME" and unlocked.
test_suspend_journal() {
	local dir d0 n0 pid phase prev
	one_dev susp
	prev=$dir/full.qcow2
	for phase in suspended copy; do
		CBT_TEST_STOP_AT=$phase cbtctl backup -q --sync=incremental --bitmap=b0 \
			"$d0=$dir/inc-$phase.qcow2,backing=$prev" >/dev/null &
		pid=$!
		wait_stopped $pid "phase $phase"
		local j lck k v
		j=$(grep -l . "$CBT_RUN_DIR"/cbtctl.$pid.*) || fail "no journal at $phase"
		lck=
		while read -r k v _; do
			[ "$k" != VmLck: ] || lck=$v
		done </proc/$pid/status
		has_line "$j" "suspend $n0" || fail "no suspend line at $phase: $(cat "$j")"
		if [ $phase = suspended ]; then
			active "$n0" && fail "not suspended at phase suspended"
			has_line "$j" "resumed $n0" && fail "resumed already: $(cat "$j")"
			[ "$lck" -gt 0 ] || fail "memory not locked while suspended (VmLck $lck kB)"
		else
			has_line "$j" "resumed $n0" || fail "no resumed line: $(cat "$j")"
			expect_eq "VmLck while copying" "$lck" 0
		fi
		kill -CONT $pid
		wait $pid || fail "the backup stopped at $phase failed"
		chain_matches "$dir/inc-$phase.qcow2" "$d0"
		prev=$dir/inc-$phase.qcow2
	done
}

# A dead run's journal says it suspended the device, which a live backup
# holds (suspended, at its instant): recover leaves the device and the
# journal alone, naming the holder; once that backup is done, it finishes.
test_recover_locked() {
	local dir d0 n0 pid rc dead=cbtctl.999999.1
	one_dev locked
	CBT_TEST_STOP_AT=suspended cbtctl backup -q --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc.qcow2,backing=$dir/full.qcow2" >/dev/null &
	pid=$!
	wait_stopped $pid "phase suspended"
	# Written now: the backup recovered what it found dead when it started.
	printf 'device %s\nsuspend %s\n' "$n0" "$n0" >"$CBT_RUN_DIR/$dead"
	cbtctl recover >"$dir/out" 2>&1 && rc=0 || rc=$?
	expect_eq "recover's exit status" "$rc" 1
	has "$dir/out" "$n0: in use by another cbtctl (pid $pid)" ||
		fail "recover said: $(cat "$dir/out")"
	active "$n0" && fail "recover resumed a device that a live backup holds suspended"
	[ -e "$CBT_RUN_DIR/$dead" ] || fail "the dead run's journal went"
	kill -CONT $pid
	wait $pid || fail "the live backup failed"
	chain_matches "$dir/inc.qcow2" "$d0"
	cbtctl recover >"$dir/out" || fail "recover after: $(cat "$dir/out")"
	expect_eq "journals" "$(journals)" ""
	active "$n0" || fail "left suspended"
	# --force on a device a live backup holds: refused, its snapshot and
	# frozen bitmap left to it (before: stopped and aborted under it).
	qio "$d0" "write -P 0x61 1M 64k"
	CBT_TEST_STOP_AT=copy cbtctl backup -q --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc2.qcow2,backing=$dir/inc.qcow2" >/dev/null &
	pid=$!
	wait_stopped $pid "phase copy"
	cbtctl recover --force "$d0" >"$dir/out" 2>&1 && rc=0 || rc=$?
	expect_eq "recover --force's exit status" "$rc" 1
	has "$dir/out" "$n0: in use by another cbtctl (pid $pid)" ||
		fail "recover --force said: $(cat "$dir/out")"
	expect_eq "snapshot" "$(snap_state "$d0")" running
	expect_eq "bitmap busy" "$(bitmap_field "$d0" b0 busy)" true
	kill -CONT $pid
	wait $pid || fail "the second live backup failed"
	chain_matches "$dir/inc2.qcow2" "$d0"
}

# kill_and_recover PID: kills the backup PID, whose copy an inject rule on
# $d0 holds, lets the held read go (a suspend fails it), clears the rules
# and runs recover, its report into $out.
kill_and_recover() {
	kill -9 "$1"
	dmsetup suspend "$n0" && dmsetup resume "$n0" || fail "suspend and resume"
	wait "$1" 2>/dev/null || true
	cbtctl inject "$d0" clear >/dev/null
	out=$(cbtctl recover) || fail "recover: $out"
}

# mode=existing: killed before its first write (phase copy, or in the copy
# with every read held), the target is untouched and recover leaves it
# usable; killed with the copy held at
# 8 MiB, recover marks it corrupt and says so, and cbtctl refuses it.
test_existing_killed() {
	local dir d0 n0 pid out sum n
	one_dev existing
	qemu-img create -q -f qcow2 "$dir/t0.qcow2" $SIZE
	CBT_TEST_STOP_AT=copy cbtctl backup -q --sync=full --bitmap=b0 \
		"$d0=$dir/t0.qcow2,mode=existing" &
	pid=$!
	wait_stopped $pid "phase copy"
	kill -9 $pid
	wait $pid 2>/dev/null || true
	out=$(cbtctl recover) || fail "recover: $out"
	[[ $out == *", 0 existing images unusable" ]] || fail "recover said: $out"
	# Killed in the copy before its first write (every read held): the
	# journal names the image, which carries no mark: left as it was.
	sum=$(md5sum <"$dir/t0.qcow2")
	cbtctl inject "$d0" delay event=read offset=0 length=$SIZE usecs=60000000 id=all \
		>/dev/null || fail "inject delay of every read"
	cbtctl backup -q --sync=full --bitmap=b0 "$d0=$dir/t0.qcow2,mode=existing" &
	pid=$!
	# The copy started (the journal names the image) and its reads wait.
	n=0
	until [[ $(cbtctl inject "$d0" list) =~ id=all\ hits=[1-9] ]] &&
		grep -qs "^existing .*/t0.qcow2$" "$CBT_RUN_DIR"/cbtctl.$pid.*; do
		n=$((n + 1))
		[ $n -lt 300 ] || { kill -9 $pid; fail "the copy never read"; return 1; }
		nap 0.1
	done
	kill_and_recover $pid
	[[ $out == *"t0.qcow2: untouched"*", 0 existing images unusable" ]] ||
		fail "recover said: $out"
	expect_eq "the image, never written" "$(md5sum <"$dir/t0.qcow2")" "$sum"
	# Data before 8 MiB (zeros need no write into a fresh image), written
	# before the copy is held there: the image carries the mark (the
	# corrupt bit, byte 79 of the header) before the kill.
	qio "$d0" "write -P 0x71 1M 64k"
	cbtctl inject "$d0" delay event=read offset=$((8 << 20)) length=4096 usecs=60000000 \
		id=hold >/dev/null || fail "inject delay"
	cbtctl backup -q --sync=full --bitmap=b0 "$d0=$dir/t0.qcow2,mode=existing" &
	pid=$!
	wait_held "$d0" $pid "8 MiB" || return 1
	n=0
	until (( $(od -An -tu1 -j79 -N1 "$dir/t0.qcow2") & 2 )); do
		n=$((n + 1))
		[ $n -lt 300 ] || { fail "the image was never marked"; break; }
		nap 0.1
	done
	kill_and_recover $pid
	[[ $out == *"t0.qcow2: unusable, marked corrupt"*", 1 existing images unusable" ]] ||
		fail "recover said: $out"
	[[ $(qemu-img info --output=json "$dir/t0.qcow2") == *'"corrupt": true'* ]] ||
		fail "not marked corrupt: $(qemu-img info "$dir/t0.qcow2")"
	if cbtctl backup -q --sync=full --bitmap=b0 "$d0=$dir/t0.qcow2,mode=existing" \
		2>"$dir/err"; then
		fail "a backup into the corrupt image was taken"
	fi
	has "$dir/err" "marked corrupt" || fail "the refusal: $(cat "$dir/err")"
	expect_eq "journals" "$(journals)" ""
}

# A target on a file system that refuses RENAME_NOREPLACE (9p: the guest's
# run directory, shared with the host): the image is placed by link and
# unlink, whole, with no temporary left.
test_no_noreplace() {
	local dir d0 n0 t left
	one_dev noreplace
	t=$(mktemp -d /run/vmrun/noreplace.XXXXXX) || fail "no 9p directory"
	cbtctl backup -q --sync=full "$d0=$t/f.qcow2" 2>"$dir/err" ||
		{ rm -rf "$t"; fail "backup onto 9p: $(cat "$dir/err")"; return 1; }
	chain_matches "$t/f.qcow2" "$d0"
	entries left "$t"
	expect_eq "beside it" "${left[*]}" f.qcow2
	rm -rf "$t"
}

run_test "a refused bitmap commit fails the backup (exit 1, bitmap_errors)" test_commit_refused
run_test "recover with no device after a kill while copying" test_recover_all
run_test "recover after a reboot emptied /run: the record of temporaries" test_recover_no_journal
run_test "the suspend journalled before, its resume after; memory locked between" \
	test_suspend_journal
run_test "recover leaves a device that a live cbtctl holds" test_recover_locked
run_test "an existing image cbtctl died writing into is marked unusable" test_existing_killed
run_test "a target on 9p (no RENAME_NOREPLACE): placed by link and unlink" test_no_noreplace
finish
