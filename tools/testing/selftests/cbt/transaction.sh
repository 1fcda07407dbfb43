#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Backups across several devices as one transaction: a grouped failure
# leaves every bitmap as it was and no target behind, and the re-run
# succeeds; the race variant; two bitmaps reset by one full backup; a
# controller killed at each phase loses no dirty bit and leaves no
# snapshot or view once recovered; a full target file system; Ctrl-C; one
# cbtctl per device at a time.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl
plan 10

SIZE=$((40 << 20))
export CBT_RUN_DIR=/tmp/cbtctl-run.$$
_tmp_dirs+=("$CBT_RUN_DIR")

# two_devs TAG PATTERN: in a new $dir, devices d0 (0x41) and d1 (PATTERN)
# with bitmap b0 each, and one full backup of both: full0.qcow2, full1.qcow2.
two_devs() {
	make_tmpdir dir
	pattern_dev d0 "$1-0" 0x41
	pattern_dev d1 "$1-1" "$2"
	cbtctl bitmap add "$d0" b0 && cbtctl bitmap add "$d1" b0 || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$d0=$dir/full0.qcow2" "$d1=$dir/full1.qcow2" \
		>/dev/null || fail "full backup transaction"
}

no_leftovers() {
	local left=() n all lock
	entries all "$dir"
	for n in "${all[@]}"; do
		[[ $n != *.tmp && $n != inc* ]] || left+=("$n")
	done
	[ ${#left[@]} = 0 ] || fail "files left behind: ${left[*]}"
	n=$(journals)
	[ -z "$n" ] || fail "journals left behind: $n"
	# Lock files stay (removing them would race a new run); none is held.
	for lock in "$CBT_RUN_DIR"/locks/*.lock; do
		[ -e "$lock" ] || continue
		flock -n "$lock" true || fail "a device lock is still held: $lock"
	done
}

# grouped SCENARIO: QEMU's grouped-failure test; "race": no writes on dev0.
grouped() {
	local dir d0 d1 rc c0 c1
	two_devs "$1" 0x6b
	[ "$1" = race ] || qio "$d0" "${SEED_ROUND1[@]}"
	# The next read of the second device fails once a flush has moved the
	# state: the writes' flush (QEMU sends none when nothing was written).
	cbtctl inject "$d1" set-state event=flush state=1 new-state=2 >/dev/null &&
		cbtctl inject "$d1" error event=read state=2 errno=5 once >/dev/null || fail "inject"
	qio "$d1" "write -P 0xef 0 512" "write -P 0x56 16M 256k" "write -P 0x66 32736k 64k" "flush"
	expect_eq "state after the flush" "$(inject_state "$d1")" 2
	c0=$(bitmap_field "$d0" b0)
	c1=$(bitmap_field "$d1" b0)
	expect_eq "dev0 count" "$c0" "$([ "$1" = race ] && echo 0 || echo 458752)"
	expect_eq "dev1 count" "$c1" 458752
	cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" \
		"$d1=$dir/inc1.qcow2,backing=$dir/full1.qcow2" >"$dir/out.json" && rc=0 || rc=$?
	expect_eq "exit status" "$rc" 1
	expect_eq "job 0" "$(job_field "$dir/out.json" 0 status)" cancelled
	expect_eq "job 1" "$(job_field "$dir/out.json" 1 status)" failed
	[[ $(job_field "$dir/out.json" 1 error) == *"Input/output error"* ]] ||
		fail "job 1 error: $(job_field "$dir/out.json" 1 error)"
	expect_eq "dev0 count kept" "$(bitmap_field "$d0" b0)" "$c0"
	expect_eq "dev1 count kept" "$(bitmap_field "$d1" b0)" "$c1"
	expect_eq "dev0 not busy" "$(bitmap_field "$d0" b0 busy)" false
	no_leftovers
	# The same command again succeeds.
	cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" \
		"$d1=$dir/inc1.qcow2,backing=$dir/full1.qcow2" >"$dir/out.json" ||
		fail "re-run failed: $(cat "$dir/out.json")"
	expect_eq "dev0 dirty bytes" "$(job_field "$dir/out.json" 0 dirty_bytes)" "$c0"
	chain_matches "$dir/inc0.qcow2" "$d0"
	chain_matches "$dir/inc1.qcow2" "$d1"
	expect_eq "dev0 count after" "$(bitmap_field "$d0" b0)" 0
	expect_eq "dev1 count after" "$(bitmap_field "$d1" b0)" 0
}

test_grouped_failure() { grouped writes; }
test_grouped_race() { grouped race; }

test_two_bitmaps() {
	local dir d0
	make_tmpdir dir
	pattern_dev d0 two 0x41
	cbtctl bitmap add "$d0" b0 || fail "bitmap add b0"
	qio "$d0" "write -P 0xab 0 512" "write -P 0xfe 16M 256k"
	cbtctl bitmap add "$d0" b1 || fail "bitmap add b1"
	qio "$d0" "write -P 0x64 32736k 64k"
	expect_eq "b0 before" "$(bitmap_field "$d0" b0)" 458752
	expect_eq "b1 before" "$(bitmap_field "$d0" b1)" 131072
	cbtctl backup --sync=full --bitmap=b0 --bitmap=b1 "$d0=$dir/full.qcow2" >/dev/null ||
		fail "full backup resetting both"
	expect_eq "b0 reset" "$(bitmap_field "$d0" b0)" 0
	expect_eq "b1 reset" "$(bitmap_field "$d0" b1)" 0
	qio "$d0" "${SEED_ROUND2[@]}"
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc-b0.qcow2,backing=$dir/full.qcow2" >/dev/null || fail "incremental via b0"
	chain_matches "$dir/inc-b0.qcow2" "$d0"
	cbtctl backup --sync=incremental --bitmap=b1 \
		"$d0=$dir/inc-b1.qcow2,backing=$dir/full.qcow2" >/dev/null || fail "incremental via b1"
	chain_matches "$dir/inc-b1.qcow2" "$d0"
}

# killed_at PHASE K: cbtctl stopped at PHASE and killed; recover; nothing
# lost. One pair of devices for every phase: the chain goes on from $b0 and
# $b1 (the images the last incremental made) and each phase writes its own
# patterns (K), so a bit lost at any phase leaves its chain unlike the device.
killed_at() {
	local pid inc0=$dir/$1-inc0.qcow2 inc1=$dir/$1-inc1.qcow2
	qio "$d0" "write -P $((0x10 + $2)) 0 512" "write -P $((0x20 + $2)) 16M 256k" \
		"write -P $((0x30 + $2)) 32736k 64k"
	qio "$d1" "write -P $((0xc0 + $2)) 5M 4k"
	CBT_TEST_STOP_AT=$1 cbtctl backup --sync=incremental --bitmap=b0 \
		"$d0=$inc0,backing=$b0" "$d1=$inc1,backing=$b1" >/dev/null 2>&1 &
	pid=$!
	wait_stopped $pid "phase $1"
	case $1 in
	prepared|frozen|copy)
		[ "$(snap_state "$d0")" != none ] || fail "no snapshot at phase $1" ;;
	esac
	[ "$1" != copy ] || expect_eq "views before the kill" "$(views)" 2
	# Writes while the controller is dead (and, for early phases, the devices suspended).
	if [ "$1" != suspended ] && [ "$1" != frozen ]; then
		qio "$d0" "write -P $((0x70 + $2)) 36M 64k"
	fi
	kill -9 $pid
	wait $pid 2>/dev/null || true
	cbtctl recover "$d0" "$d1" >"$dir/recover.out" || fail "recover: $(cat "$dir/recover.out")"
	active "${d0#/dev/mapper/}" || fail "$d0 left suspended"
	active "${d1#/dev/mapper/}" || fail "$d1 left suspended"
	expect_eq "views after recover" "$(views)" 0
	expect_eq "dev0 snapshot" "$(snap_state "$d0")" none
	expect_eq "dev1 snapshot" "$(snap_state "$d1")" none
	expect_eq "dev0 not busy" "$(bitmap_field "$d0" b0 busy)" false
	expect_eq "dev1 not busy" "$(bitmap_field "$d1" b0 busy)" false
	[ -z "$(tmp_files "$dir")" ] || fail "temporaries left: $(ls -A "$dir")"
	qio "$d0" "write -P $((0x80 + $2)) 38M 4k"
	# Killed after the images were in place: they are complete backups, but
	# the next incremental goes on from those whose bitmap was committed
	# (at phase committing, dev0's: jobs commit in order); from the last
	# base otherwise (the image's identity says so: identity.sh).
	[ "$1" != committing ] || b0=$inc0
	case $1 in
	renamed|committing)
		[ -e "$inc0" ] && [ -e "$inc1" ] ||
			fail "the images were not in place at phase $1" ;;
	*)
		[ ! -e "$inc0" ] && [ ! -e "$inc1" ] ||
			fail "a target appeared before phase renamed" ;;
	esac
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$d0=$dir/$1-next0.qcow2,backing=$b0" \
		"$d1=$dir/$1-next1.qcow2,backing=$b1" >/dev/null ||
		fail "incremental after recovery"
	b0=$dir/$1-next0.qcow2 b1=$dir/$1-next1.qcow2
	chain_matches "$b0" "$d0"
	chain_matches "$b1" "$d1"
}

test_killed() {
	local dir d0 d1 b0 b1 phase k=0
	two_devs killed 0x42
	b0=$dir/full0.qcow2 b1=$dir/full1.qcow2
	# prepared: a snapshot prepared; frozen: started, devices suspended; copy: viewed.
	for phase in prepared suspended frozen copy renamed committing; do
		echo "# killed at phase: $phase"
		killed_at $phase $((k += 1))
	done
}

test_enospc() {
	local dir d0 rc small
	make_tmpdir dir
	pattern_dev d0 nospc 0x41
	cbtctl bitmap add "$d0" b0 || fail "bitmap add"
	qio "$d0" "write -P 0x99 2M 8M"
	small=$dir/small
	mkdir "$small"
	mount -t tmpfs -o size=2m tmpfs "$small" || fail "cannot mount a small tmpfs"
	cbtctl backup --sync=full --bitmap=b0 "$d0=$small/full.qcow2" >/dev/null 2>"$dir/err" &&
		rc=0 || rc=$?
	local left
	entries left "$small"
	umount "$small"
	expect_eq "exit status on a full file system" "$rc" 1
	has "$dir/err" "No space left on device" || fail "error: $(cat "$dir/err")"
	has "$dir/err" "$small" || fail "the error does not name the target: $(cat "$dir/err")"
	[ ${#left[@]} = 0 ] || fail "left on the full file system: ${left[*]}"
	expect_eq "count kept" "$(bitmap_field "$d0" b0)" $((8 << 20))
	expect_eq "not busy" "$(bitmap_field "$d0" b0 busy)" false
}

test_interrupt() {
	local dir d0 pid rc
	make_tmpdir dir
	pattern_dev d0 sigint 0x41
	cbtctl bitmap add "$d0" b0 || fail "bitmap add"
	qio "$d0" "write -P 0x12 0 64k" "write -P 0x13 16M 128k"
	# The read at 16 MiB is held 10 s: once it is held, the copy is
	# certainly running, and it is interrupted there.
	cbtctl inject "$d0" delay event=read offset=$((16 << 20)) length=4096 usecs=10000000 \
		id=hold >/dev/null || fail "inject delay"
	cbtctl backup --sync=full --bitmap=b0 --json "$d0=$dir/full.qcow2" >"$dir/out.json" &
	pid=$!
	wait_held "$d0" $pid "16 MiB" || return 1
	kill -INT $pid
	wait $pid && rc=0 || rc=$?
	cbtctl inject "$d0" clear >/dev/null
	expect_eq "exit status after SIGINT" "$rc" 1
	expect_eq "job status" "$(job_field "$dir/out.json" 0 status)" cancelled
	[ ! -e "$dir/full.qcow2" ] || fail "an interrupted backup left its target"
	no_leftovers
	expect_eq "count kept" "$(bitmap_field "$d0" b0)" 196608
	active "${d0#/dev/mapper/}" || fail "left suspended"
}

# A backup of d0 stopped while it copies holds d0: a second backup of d0
# (and of d0 with d1) is refused at once, names the holder, touches
# nothing; d1 alone can be backed up meanwhile; once the first ends, d0 can.
test_one_per_device() {
	local dir d0 d1 pid
	two_devs busy 0x42
	qio "$d0" "write -P 0x55 2M 64k"
	CBT_TEST_STOP_AT=copy cbtctl backup --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" >/dev/null 2>&1 &
	pid=$!
	wait_stopped $pid "phase copy"
	cbtctl backup --sync=full --bitmap=b0 "$d1=$dir/x1.qcow2" "$d0=$dir/x0.qcow2" \
		>/dev/null 2>"$dir/err" && fail "a second backup of a busy device ran"
	has "$dir/err" "in use by another cbtctl (pid $pid)" ||
		fail "the refusal does not name the holder: $(cat "$dir/err")"
	[ ! -e "$dir/x0.qcow2" ] && [ ! -e "$dir/x1.qcow2" ] || fail "the refused run made a target"
	expect_eq "d1 not frozen by the refused run" "$(bitmap_field "$d1" b0 busy)" false
	cbtctl backup --sync=full --bitmap=b0 "$d1=$dir/y1.qcow2" >/dev/null ||
		fail "d1 alone could not be backed up"
	kill -CONT $pid
	wait $pid || fail "the first backup failed"
	chain_matches "$dir/inc0.qcow2" "$d0"
	cbtctl backup --sync=full --bitmap=b0 "$d0=$dir/z0.qcow2" >/dev/null ||
		fail "d0 is still locked after the first backup ended"
}

test_existing_unusable() {
	local dir d0 d1 rc pid n
	make_tmpdir dir
	pattern_dev d0 ex0 0x41
	pattern_dev d1 ex1 0x42
	cbtctl bitmap add "$d1" b0 && cbtctl bitmap add "$d0" b0 || fail "bitmap add"
	qio "$d0" "write -P 0x12 0 64k" "write -P 0x13 16M 128k"
	qemu-img create -q -f qcow2 "$dir/t0.qcow2" $SIZE
	# d1's last block fails, and its read is held until d0's copy has
	# marked t0 (the corrupt bit, set before its first write), then let go
	# by a suspend of d1. (Timing alone was not enough: twice the
	# transaction failed before t0 was written, and the target was
	# rightly left unmarked.)
	cbtctl inject "$d1" delay event=read offset=$((SIZE - 4096)) length=4096 \
		usecs=60000000 id=hold >/dev/null
	cbtctl inject "$d1" error event=read offset=$((SIZE - 4096)) length=4096 errno=EIO \
		>/dev/null
	cbtctl backup -q --sync=full --bitmap=b0 --json "$d0=$dir/t0.qcow2,mode=existing" \
		"$d1=$dir/t1.qcow2" >"$dir/out.json" &
	pid=$!
	wait_held "$d1" $pid "d1's last block"
	# t0's corrupt bit (incompatible features, bit 1).
	for ((n = 0; n < 300; n++)); do
		[ $(($(od -An -tu1 -j79 -N1 "$dir/t0.qcow2") & 2)) = 2 ] && break
		nap 0.1
	done
	dmsetup suspend "${d1#/dev/mapper/}"
	dmsetup resume "${d1#/dev/mapper/}"
	wait $pid && rc=0 || rc=$?
	cbtctl inject "$d1" clear >/dev/null
	expect_eq "exit status" "$rc" 1
	expect_eq "job 1" "$(job_field "$dir/out.json" 1 status)" failed
	[ ! -e "$dir/t1.qcow2" ] || fail "mode=create target left behind"
	# The existing target was written in place: reported, not hidden.
	expect_eq "job 0" "$(job_field "$dir/out.json" 0 status)" cancelled
	expect_eq "job 0 reported unusable" "$(job_field "$dir/out.json" 0 target_unusable)" true
	[[ $(qemu-img info --output=json "$dir/t0.qcow2") == *'"corrupt": true'* ]] ||
		fail "the half-written target is not marked corrupt"
	expect_eq "d0 count kept" "$(bitmap_field "$d0" b0)" 196608
}

run_test "grouped transaction failure, then the re-run" test_grouped_failure
run_test "grouped failure, race variant (nothing to copy on one device)" test_grouped_race
run_test "two bitmaps reset by one full backup, incremental through each" test_two_bitmaps
run_test "controller killed at each phase loses nothing after recover" test_killed
run_test "ENOSPC on the target fails cleanly" test_enospc
run_test "SIGINT cancels the transaction" test_interrupt
run_test "a failed transaction reports its existing target unusable" test_existing_unusable
run_test "a second cbtctl on a busy device is refused, naming the holder" test_one_per_device
run_test "recover with nothing to do" cbtctl recover
run_test "recover --force needs a device" bash -c '! cbtctl recover --force 2>/dev/null'
finish
