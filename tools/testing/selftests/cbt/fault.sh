#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The fault pass's backups (debug kernel: failslab and fail_make_request).
# A cbt device with a metadata device and a writer beside it; incremental
# backups while
# - failslab fails dm-cbt's allocations at a rising probability, in every
#   task (the copy-before-write path, the workqueues, cbtctl's messages and
#   netlink dumps), filtered by the stack to dm-cbt's code;
# - fail_make_request fails I/O to the data device below the target;
# - fail_make_request fails I/O to the metadata device.
# Each backup either succeeds or fails with an error message and leaves no
# image under its name; a guest write never fails unless its own device
# does; after the faults, the next backup (an incremental, or a full one
# once the metadata device failed and the incremental refused) reads
# exactly as the device does. A splat fails the run (vmrun).
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl dd
debugfs=/sys/kernel/debug
mount -t debugfs debugfs $debugfs 2>/dev/null
[ -w $debugfs/failslab/probability ] && [ -w $debugfs/fail_make_request/probability ] ||
	skip_all "no failslab or fail_make_request in this kernel (debug kernel only)"
plan 3

SIZE=$((32 << 20))
ROUNDS=4

# setup TAG: data and metadata files under loop devices (dloop, mloop), a
# cbt device over them ($name, $dev) with bitmap b0, some data and a full
# backup $dir/full.qcow2 ($prev).
setup() {
	failslab_reset
	make_tmpdir dir
	truncate -s "$SIZE" "$dir/data" || return 1
	truncate -s $((1 << 20)) "$dir/meta" || return 1
	make_loop dloop "$dir/data" || return 1
	make_loop mloop "$dir/meta" || return 1
	name=$(dm_name "$1")
	dev=/dev/mapper/$name
	dm_create "$name" "0 $((SIZE / 512)) cbt $dloop 2 metadata $mloop" || return 1
	cbtctl bitmap add "$dev" b0 || return 1
	qio "$dev" "write -P 0x11 0 1M" "write -P 0x22 20M 300k"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2" >/dev/null ||
		fail "the full backup before any fault failed"
	prev=$dir/full.qcow2
}

# writer_start: 4 KiB direct writes at random offsets of $dev, about 20 a
# second (the guest has one vCPU to share with the backup), until
# writer_stop; each failed write is a line in $dir/werr.
writer_start() {
	rm -f "$dir/stop" "$dir/werr"
	touch "$dir/werr"
	(
		while [ ! -e "$dir/stop" ]; do
			dd if=/dev/urandom of="$dev" bs=4k count=1 oflag=direct conv=notrunc \
				seek=$((RANDOM % (SIZE / 4096))) status=none 2>>"$dir/werr" ||
				echo "write failed" >>"$dir/werr"
			nap 0.05
		done
	) &
	writer=$!
}

# writer_stop: stops the writer; fails if a write failed and $1 is not "may-fail".
writer_stop() {
	touch "$dir/stop"
	wait "$writer"
	[ "${1:-}" = may-fail ] || [ ! -s "$dir/werr" ] ||
		fail "guest writes failed: $(sort "$dir/werr" | uniq -c | head -3)"
}

# backup_round N: an incremental on $prev into $dir/incN.qcow2, its exit
# status in $rc; on success $prev moves on. Checks nothing: faults may
# still be on.
backup_round() {
	cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc$1.qcow2,backing=$prev" \
		>/dev/null 2>"$dir/err" && rc=0 || rc=$?
	[ $rc != 0 ] || prev=$dir/inc$1.qcow2
}

# round_checks N: after backup_round N, faults off: a failure said why and
# left no image.
round_checks() {
	[ $rc = 0 ] && return 0
	grep -q . "$dir/err" || fail "round $1: backup failed (exit $rc) without a message"
	[ ! -e "$dir/inc$1.qcow2" ] || fail "round $1: a failed backup left its image"
	echo "# round $1: backup failed as it may: $(head -c 160 "$dir/err")"
}

# settled: no snapshot running or view left, b0 not frozen.
settled() {
	expect_eq "views left" "$(views)" 0
	expect_eq "snapshot state" "$(snap_state "$dev")" none
	expect_eq "b0 busy" "$(dmsetup message "$name" 0 bitmap info b0 |
		tr ' ' '\n' | sed -n 's/^busy=//p')" 0
}

# failslab_setup: failslab limited to allocations with dm-cbt's text on
# the stack (sleeping ones too), in every task, not yet failing any.
failslab_setup() {
	local lo hi
	# Addresses of one width sort as text; past the last function's start.
	lo=$(awk '$4 == "[dm_cbt]" && ($2 == "t" || $2 == "T") { print $1 }' /proc/kallsyms | sort)
	hi=$(tail -n 1 <<<"$lo")
	lo=$(head -n 1 <<<"$lo")
	[ -n "$lo" ] || { fail "dm_cbt's text is not in /proc/kallsyms"; return 1; }
	echo 0 >$debugfs/failslab/probability
	echo N >$debugfs/failslab/ignore-gfp-wait
	echo N >$debugfs/failslab/task-filter
	echo 0 >$debugfs/failslab/verbose
	echo 32 >$debugfs/failslab/stacktrace-depth
	printf '%u\n' "0x$lo" >$debugfs/failslab/require-start
	printf '%u\n' $((0x$hi + 4096)) >$debugfs/failslab/require-end
	echo 1 >$debugfs/failslab/interval
}

# failslab_on PERCENT: those allocations fail at PERCENT %.
failslab_on() {
	echo 1000000 >$debugfs/failslab/times
	echo "$1" >$debugfs/failslab/probability
}

# failslab_off: no more failures; prints how many were injected.
failslab_off() {
	echo 0 >$debugfs/failslab/probability
	echo $((1000000 - $(cat $debugfs/failslab/times)))
}

# failslab_reset: back to failslab's defaults for the filter.
failslab_reset() {
	echo 0 >$debugfs/failslab/probability
	echo 0 >$debugfs/failslab/require-start
	echo 0 >$debugfs/failslab/require-end
}

# make_fail LOOP PERCENT: I/O to LOOP fails at PERCENT % (0: never).
make_fail() {
	local d=/sys/block/${1#/dev/}
	echo 0 >$debugfs/fail_make_request/verbose
	echo 1 >$debugfs/fail_make_request/interval
	echo -1 >$debugfs/fail_make_request/times
	echo "$2" >$debugfs/fail_make_request/probability
	if [ "$2" = 0 ]; then echo 0 >"$d/make-it-fail"; else echo 1 >"$d/make-it-fail"; fi
}

test_failslab() {
	# The last round fails the first allocation: one failure at least.
	local r injected total=0 ok=0 pct=(2 10 40 100)
	setup slab
	failslab_setup
	for ((r = 0; r < ROUNDS; r++)); do
		qio "$dev" "write -P $((r + 0x30)) $((r * 3))M 64k"
		writer_start
		failslab_on "${pct[r]}"
		backup_round "$r"
		injected=$(failslab_off)
		writer_stop
		round_checks "$r"
		echo "# round $r: failslab ${pct[r]} %: $injected failures injected, backup exit $rc"
		total=$((total + injected))
		[ $rc = 0 ] && ok=$((ok + 1))
		settled
	done
	failslab_reset
	# The filter reached dm-cbt's allocations (a test that injects nothing proves nothing).
	[ "$total" -gt 0 ] || fail "failslab injected no failure in dm-cbt"
	expect_eq "metadata state" "$(dmsetup status "$name" | awk '{ print $11 }')" ok
	backup_round final
	expect_eq "the backup after the faults ($(cat "$dir/err"))" "$rc" 0
	chain_matches "$prev" "$dev"
	echo "# $ok of $ROUNDS backups under failslab succeeded, $total failures injected"
}

test_data_fails() {
	# cbtctl retries a failed read: the last round fails them all.
	local r failed=0 pct=(10 30 60 100)
	setup data
	for ((r = 0; r < ROUNDS; r++)); do
		writer_start
		make_fail "$dloop" "${pct[r]}"
		backup_round "$r"
		make_fail "$dloop" 0
		# The data device failing fails guest writes too: not the target's doing.
		writer_stop may-fail
		round_checks "$r"
		[ $rc = 0 ] || failed=$((failed + 1))
		settled
	done
	[ $failed -gt 0 ] || fail "no backup failed while the data device failed"
	backup_round final
	expect_eq "the backup after the faults ($(cat "$dir/err"))" "$rc" 0
	chain_matches "$prev" "$dev"
}

test_metadata_fails() {
	setup meta
	writer_start
	make_fail "$mloop" 100
	backup_round 0
	make_fail "$mloop" 0
	# The guest never sees the metadata device's errors.
	writer_stop
	round_checks 0
	settled
	expect_eq "metadata state" "$(dmsetup status "$name" | awk '{ print $11 }')" failed
	# The bitmap may have missed writes while it failed: the incremental refuses ...
	backup_round 1
	[ $rc != 0 ] || fail "an incremental was taken over a failed metadata device"
	round_checks 1
	# ... and a full backup starts a chain that holds while the device stays.
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full2.qcow2" >/dev/null 2>"$dir/err" ||
		fail "full backup after the failure: $(cat "$dir/err")"
	prev=$dir/full2.qcow2
	qio "$dev" "write -P 0x77 7M 128k"
	backup_round 2
	expect_eq "the incremental on the new full backup ($(cat "$dir/err"))" "$rc" 0
	chain_matches "$prev" "$dev"
}

run_test "backups while failslab fails dm-cbt's allocations" test_failslab
run_test "backups while the data device fails I/O" test_data_fails
run_test "a backup while the metadata device fails I/O" test_metadata_fails
finish
