#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Crash points of a metadata device. One device logged by dm-log-writes is
# carved into a metadata slice and a data slice (dm-linear), so one log
# orders the writes of both; a cbt device tracks the data slice with the
# metadata slice as its metadata device. fio writes at random offsets with
# flushes; then logcheck replays the log and, at every entry (a superset of
# the flush and FUA points a power loss leaves), checks that every data
# write logged so far lies in chunks the replayed metadata marks dirty in
# every bitmap. Then the same while messages change the bitmaps under the
# writes: a disable and a remove must be on the metadata device before the
# I/O path stops marking the bitmap; and while the device shrinks and grows
# back.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup fio modprobe blkdiscard
logcheck=$cbt_top/build/selftests/logcheck
[ -x "$logcheck" ] || skip_all "logcheck is not built (make selftests)"
modprobe dm-log-writes 2>/dev/null
dmsetup targets | grep -q '^log-writes ' || skip_all "dm-log-writes is not installed"
plan 4

META=2048			# sectors: 1 MiB
DATA=$((64 << 11))		# sectors: 64 MiB

# wait_dirty BITMAP BYTES WHY: waits (30 s at most, then fails with WHY)
# until BITMAP of the workload's $cbt counts more than BYTES dirty.
wait_dirty() {
	local n=0
	until [ "$(dmsetup message "$cbt" 0 bitmap info "$1" | grep -o ' count=[0-9]*' |
		cut -d= -f2)" -gt "$2" ]; do
		n=$((n + 1))
		[ $n -lt 600 ] || { fail "$3"; break; }
		nap 0.05
	done
}

# workload TAG FIO_ARGS...: the logged stack, two bitmaps, a mark, fio, and
# everything but the log removed again; the log's loop device in $log.
# With MESSAGES ("WORDS;WORDS..."): the whole device written first, then
# bitmaps bx and by added and its first half written again (the second
# half is clean in bx and by only: a write there goes down at once when
# they no longer need it), the mark, and each message sent while fio runs
# (until stopped, half a second after the last).
workload() {
	local tag=$1 logw meta data cbt len
	shift
	make_tmpdir dir
	truncate -s $(((META + DATA) * 512)) "$dir/disk"
	truncate -s 512M "$dir/log"
	make_loop disk "$dir/disk"
	make_loop log "$dir/log"
	# dm-log-writes reads its log's first sector as its super: start from zeros.
	dd if=/dev/zero of="$log" bs=1M count=1 oflag=direct status=none
	logw=$(dm_name "$tag-log")
	meta=$(dm_name "$tag-meta")
	data=$(dm_name "$tag-data")
	cbt=$(dm_name "$tag")
	dm_create "$logw" "0 $((META + DATA)) log-writes $disk $log"
	if [ -n "${MESSAGES:-}" ]; then
		# The superblock writes (the only ones with a preflush there)
		# 200 ms late: a message's window is wide open.
		dm_create "$meta" "0 $META delay /dev/mapper/$logw 0 0 /dev/mapper/$logw 0 0 \
/dev/mapper/$logw 0 200"
	else
		dm_create "$meta" "0 $META linear /dev/mapper/$logw 0"
	fi
	dm_create "$data" "0 $DATA linear /dev/mapper/$logw $META"
	dm_create "$cbt" "0 $DATA cbt /dev/mapper/$data 3 write_cache metadata /dev/mapper/$meta"
	dmsetup message "$cbt" 0 bitmap add b64k
	dmsetup message "$cbt" 0 bitmap add b4k granularity=4096
	if [ -n "${MESSAGES:-}" ]; then
		dd if=/dev/zero of="/dev/mapper/$cbt" bs=1M count=$((DATA / 2048)) oflag=direct \
			status=none ||
			fail "prefill"
		dmsetup message "$cbt" 0 bitmap add bx granularity=4096
		dmsetup message "$cbt" 0 bitmap add by granularity=4096
		# Half of it dirty in them too: writes there never wait, so
		# fio goes on submitting while a message holds the metadata.
		dd if=/dev/zero of="/dev/mapper/$cbt" bs=1M count=$((DATA / 4096)) oflag=direct \
			status=none || fail "prefill of bx and by"
	fi
	dmsetup message "$logw" 0 mark start
	# With RESIZE: the last MiB written after the mark, past the half a
	# shrink keeps.
	if [ -n "${RESIZE:-}" ]; then
		dd if=/dev/zero of="/dev/mapper/$cbt" bs=1M seek=$((DATA / 2048 - 1)) count=1 \
			oflag=direct status=none || fail "the write past the half"
	fi
	fio --name=crash --filename="/dev/mapper/$cbt" --direct=1 --ioengine=libaio \
		--iodepth=8 --randrepeat=0 --norandommap --eta=never "$@" --output=/dev/null &
	local fio=$! msg m
	if [ -n "${RESIZE:-}" ]; then
		# fio writes the first half; the device shrinks to it and grows
		# back, by reloads, while it runs (once it has written 256 KiB).
		wait_dirty b4k $(((1 << 20) + (256 << 10))) "fio never wrote"
		for len in $((DATA / 2)) $DATA; do
			dmsetup reload "$cbt" --table \
				"0 $len cbt /dev/mapper/$data 3 write_cache metadata /dev/mapper/$meta" ||
				fail "reload at $len sectors"
			dmsetup resume "$cbt" || fail "resume at $len sectors"
			nap 0.5
		done
	elif [ -n "${MESSAGES:-}" ]; then
		# Once fio writes where bx is clean (its count past the half).
		wait_dirty bx $((DATA * 256)) "fio never wrote the second half"
		IFS=';' read -ra msg <<<"$MESSAGES"
		for m in "${msg[@]}"; do
			nap 0.3
			# shellcheck disable=SC2086
			dmsetup message "$cbt" 0 $m || fail "message $m"
			kill -0 $fio 2>/dev/null || fail "fio ended before '$m' was done"
		done
		# fio runs until told (its runtime only a bound): writes go on
		# after the last message, however long the messages took.
		nap 0.5
	fi
	if [ -n "${RESIZE:-}${MESSAGES:-}" ]; then
		kill -INT $fio 2>/dev/null || fail "fio ended before it was stopped"
		wait $fio || true	# stopped by a signal: not its own failure
	else
		wait $fio || fail "fio"
	fi
	# Discards are writes for the bitmaps too.
	if [ -n "${DISCARDS:-}" ]; then
		blkdiscard -o 1M -l 3M "/dev/mapper/$cbt"
		blkdiscard -o 40M -l 64k "/dev/mapper/$cbt"
		fio --name=after --filename="/dev/mapper/$cbt" --direct=1 --rw=randwrite \
			--bs=4k --number_ios=100 --fsync=10 --randrepeat=0 --output=/dev/null
	fi
	expect_eq "status" "$(dmsetup status "$cbt" | awk '{ print $11 }')" ok
	dmsetup message "$cbt" 0 bitmap info b4k | grep -q " inconsistent=0 " ||
		fail "b4k is inconsistent"
	# The log is complete once the logged device is gone.
	dmsetup remove "$cbt" "$data" "$meta" "$logw"
}

# check MIN_POINTS [BITMAPS]: logcheck over the log, BITMAPS (default 2)
# checked at the mark.
check() {
	local out
	out=$("$logcheck" --log "$log" --meta 0:$META --data $META:$DATA --from-mark start \
		--every-entry --min-points "$1" 2>&1) || { fail "logcheck: $out"; return 1; }
	echo "# $out"
	grep -q " ${2:-2} bitmaps" <<<"$out" || fail "logcheck did not check ${2:-2} bitmaps: $out"
}

# 4 KiB writes: most go to clean chunks of b4k, many to dirty ones of b64k.
test_small_writes() {
	workload small --rw=randwrite --bs=4k --number_ios=1500 --fsync=32
	check 1500
}

# Mixed sizes with FUA writes (O_DSYNC) instead of flushes, then discards.
test_mixed() {
	DISCARDS=1 workload mixed --rw=randwrite --bssplit=4k/50:64k/30:1m/20 \
		--number_ios=600 --sync=dsync
	check 400
}

# Writes to chunks clean in bx and by only, while by is disabled and bx
# removed: a crash before the superblock says so must find them in bx and
# by, or by inconsistent, or bx gone.
test_messages() {
	MESSAGES="bitmap disable by;bitmap remove bx" workload msgs --rw=randwrite --bs=4k \
		--time_based --runtime=300 --fsync=64
	check 200 4
}

# A shrink and a regrowth under writes, with the last MiB written after the
# mark: a crash before the superblock records the shorter length must find
# that MiB dirty (before, the areas were written first, the chunks past the
# new end cleared under a superblock that still counted them).
test_resize() {
	RESIZE=1 workload resize --rw=randwrite --bs=4k --size=$((DATA / 2 * 512)) \
		--time_based --runtime=300 --fsync=64
	check 50
}

run_test "4 KiB random writes with flushes: every crash point is honest" test_small_writes
run_test "mixed sizes, discards, FUA: every crash point is honest" test_mixed
run_test "disable and remove under writes: every crash point is honest" test_messages
run_test "a shrink and a regrowth under writes: every crash point is honest" test_resize
finish
