#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Error-injection rules under load and across suspends: rules firing
# concurrently under fio while rules are added, listed and removed; bios
# held by delay rules released by a suspend or a table reload instead of
# hanging it; and the cbtctl inject front end. Kernel warnings fail the run
# (vmrun checks the log).
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup fio dd cmp cbtctl timeout
plan 5

SIZE=$((64 << 20))

setup() {
	make_tmpdir dir
	cbt_over_file "$dir/backing" $SIZE "$1"
}

# hits ID: the hit count of rule ID from "inject list".
hits() {
	if [[ $(cbtctl inject "$name" list) =~ \ id=$1\ hits=([0-9]*)\  ]]; then
		echo "${BASH_REMATCH[1]}"
	fi
}

# wait_hits ID N: waits (up to 30 s) until rule ID has fired N times.
wait_hits() {
	local i
	for ((i = 0; i < 300; i++)); do
		[ "$(hits "$1")" = "$2" ] && return 0
		nap 0.1
	done
	fail "rule $1 did not reach $2 hits (has $(hits "$1"))"
}

test_fio_load() {
	local dir loop name dev pid out i
	setup load
	cbtctl inject "$name" error event=read probability=20000 id=rerr >/dev/null
	# EIO: fio's continue_on_error goes on after EIO, but ends a job on
	# most other errnos (ENOSPC means a full file to it).
	cbtctl inject "$name" error event=write count=40 id=wcount >/dev/null
	cbtctl inject "$name" delay event=write usecs=2000 probability=100000 id=wdelay >/dev/null
	cbtctl inject "$name" delay event=read usecs=500 probability=100000 id=rdelay >/dev/null
	cbtctl inject "$name" set-state event=flush state=1 new-state=2 id=up >/dev/null
	cbtctl inject "$name" set-state event=flush state=2 new-state=1 id=down >/dev/null
	cbtctl inject "$name" error event=read state=2 probability=50000 id=r2 >/dev/null
	cbtctl inject "$name" drop event=write probability=10000 id=wdrop >/dev/null

	out=$dir/fio.out
	fio --name=load --filename="$dev" --direct=1 --ioengine=libaio --iodepth=8 \
		--rw=randrw --bs=4k --numjobs=3 --time_based --runtime=8 --fsync=16 \
		--trim_verify_zero=0 --continue_on_error=all --group_reporting >"$out" 2>&1 &
	pid=$!
	# Meanwhile rules come and go and are listed, for as long as fio runs
	# (at least five times).
	i=0
	while [ $i -lt 5 ] || kill -0 $pid 2>/dev/null; do
		cbtctl inject "$name" error event=write offset=$((i * 4096)) length=4096 \
			id=tmp$i >/dev/null || fail "adding rule tmp$i under load failed"
		cbtctl inject "$name" list >/dev/null || fail "list under load failed"
		dmsetup status "$name" >/dev/null || fail "status under load failed"
		cbtctl inject "$name" remove id=tmp$i || fail "removing tmp$i under load failed"
		i=$((i + 1))
	done
	# fio exits non-zero for the errors it was told to go on after.
	wait $pid || true
	grep -q "IOPS=" "$out" || fail "fio did not run: $(cat "$out")"
	local r
	for r in rerr wdelay rdelay up down wdrop; do
		[ "$(hits $r)" -gt 0 ] ||
			fail "rule $r never fired: $(cbtctl inject "$name" list) $(tail -30 "$out")"
	done
	expect_eq "count=40 rule hits" "$(hits wcount)" 40

	# Without rules, random writes run clean and their data verifies: 16 MiB
	# in 16 KiB blocks (in 4 KiB blocks the debug kernel took 81 s here,
	# each I/O's allocations recorded by KASAN and kmemleak; 6.1 3 s).
	cbtctl inject "$name" clear
	expect_eq "status after clear" "$(dmsetup status "$name")" "0 $((SIZE / 512)) cbt 0 0 0 0 1 0 - -"
	fio --name=verify --filename="$dev" --direct=1 --ioengine=libaio --iodepth=8 \
		--rw=randwrite --bs=16k --size=16m --verify=crc32c --do_verify=1 \
		>"$out" 2>&1 || fail "fio verify without rules failed: $(cat "$out")"
}

# A write held by a long delay must not hold up a suspend: presuspend lets it go.
test_suspend_releases_delayed() {
	local dir loop name dev pid
	setup suspend
	cbtctl inject "$name" delay event=write usecs=60000000 id=long >/dev/null
	dd if=/dev/urandom of="$dir/data" bs=64k count=1 status=none
	dd if="$dir/data" of="$dev" bs=64k seek=10 oflag=direct status=none &
	pid=$!
	wait_hits long 1
	timeout 30 dmsetup suspend "$name" || fail "suspend with a delayed write did not finish"
	timeout 30 tail --pid=$pid -f /dev/null || fail "the delayed write was not released"
	wait $pid || fail "the delayed write failed"
	cmp -n 65536 "$dir/data" <(dd if="$loop" bs=64k skip=10 count=1 iflag=direct \
		status=none) || fail "the released write did not land"
	# Suspended: writes are not delayed, and messages still work.
	cbtctl inject "$name" list | grep -q "id=long hits=1" || fail "rule lost in suspend"
	dmsetup resume "$name"
	# After resume the rule holds bios again.
	dd if="$dir/data" of="$dev" bs=64k seek=20 oflag=direct status=none &
	pid=$!
	wait_hits long 2
	kill -0 $pid 2>/dev/null || fail "a write after resume was not delayed"
	cbtctl inject "$name" remove id=long
	timeout 30 dmsetup suspend "$name" || fail "second suspend hung"
	dmsetup resume "$name"
	wait $pid || fail "the second delayed write failed"
}

# A table reload suspends and destroys the old table's target: held bios go
# on, and the new table starts with no rules.
test_reload_releases_delayed() {
	local dir loop name dev pid table
	setup reload
	cbtctl inject "$name" delay event=read usecs=60000000 id=long >/dev/null
	cbtctl inject "$name" error event=write id=werr >/dev/null
	dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none &
	pid=$!
	wait_hits long 1
	table=$(dmsetup table "$name")
	dmsetup reload "$name" --table "$table" || fail "reload failed"
	timeout 30 dmsetup resume "$name" || fail "resume of the new table hung"
	timeout 30 tail --pid=$pid -f /dev/null || fail "the delayed read was not released"
	wait $pid || fail "the delayed read failed"
	expect_eq "status of the new table" "$(dmsetup status "$name")" \
		"0 $((SIZE / 512)) cbt 0 0 0 0 1 0 - -"
	dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none ||
		fail "the new table kept the old write rule"
}

# A clear while bios are held: they still go on when due.
test_clear_with_held_bios() {
	local dir loop name dev pid start
	setup clear
	cbtctl inject "$name" delay event=read usecs=1500000 id=slow >/dev/null
	start=$(date +%s%N)
	dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none &
	pid=$!
	wait_hits slow 1
	cbtctl inject "$name" clear
	wait $pid || fail "the held read failed"
	[ $(($(date +%s%N) - start)) -ge 1500000000 ] || fail "the held read came back early"
}

test_cbtctl_inject() {
	local dir loop name dev out rc
	setup cbtctl
	out=$(cbtctl inject "$name" error event=read id=x) || fail "cbtctl inject failed"
	expect_eq "answer" "$out" "x"
	out=$(cbtctl inject "$name" list) || fail "cbtctl inject list failed"
	expect_eq "list" "$out" "state=1 rules=1
error event=read errno=EIO probability=1000000 id=x hits=0 armed"
	rc=0
	out=$(cbtctl inject "$name" error event=nope 2>&1) || rc=$?
	expect_eq "exit status of a refused rule" "$rc" 1
	grep -q "$name" <<<"$out" || fail "refusal does not name the device: $out"
	grep -q "Invalid argument" <<<"$out" || fail "refusal does not give the errno: $out"
	rc=0
	out=$(cbtctl inject "$name" remove id=nope 2>&1) || rc=$?
	expect_eq "exit status of removing a missing rule" "$rc" 1
	grep -q "No such file or directory" <<<"$out" || fail "missing rule: $out"
	rc=0
	cbtctl inject "$name" >/dev/null 2>&1 || rc=$?
	expect_eq "exit status without words" "$rc" 2
	rc=0
	cbtctl inject cbt-test-no-such-device list >/dev/null 2>&1 || rc=$?
	expect_eq "exit status on a missing device" "$rc" 1
	expect_eq "rules after the refusals" "$(dmsetup status "$name")" \
		"0 $((SIZE / 512)) cbt 0 0 0 0 1 1 - -"
}

run_test "rules fire under concurrent fio load" test_fio_load
run_test "a suspend releases delayed bios" test_suspend_releases_delayed
run_test "a table reload releases delayed bios" test_reload_releases_delayed
run_test "clear with bios held" test_clear_with_held_bios
run_test "cbtctl inject" test_cbtctl_inject
finish
