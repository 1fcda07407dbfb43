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
# every bitmap.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup fio modprobe blkdiscard
logcheck=$cbt_top/build/selftests/logcheck
[ -x "$logcheck" ] || skip_all "logcheck is not built (make selftests)"
modprobe dm-log-writes 2>/dev/null
dmsetup targets | grep -q '^log-writes ' || skip_all "dm-log-writes is not installed"
plan 2

META=2048			# sectors: 1 MiB
DATA=$((64 << 11))		# sectors: 64 MiB

# workload TAG FIO_ARGS...: the logged stack, two bitmaps, a mark, fio, and
# everything but the log removed again; the log's loop device in $log.
workload() {
	local tag=$1 logw meta data cbt
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
	dm_create "$meta" "0 $META linear /dev/mapper/$logw 0"
	dm_create "$data" "0 $DATA linear /dev/mapper/$logw $META"
	dm_create "$cbt" "0 $DATA cbt /dev/mapper/$data 3 write_cache metadata /dev/mapper/$meta"
	dmsetup message "$cbt" 0 bitmap add b64k
	dmsetup message "$cbt" 0 bitmap add b4k granularity=4096
	dmsetup message "$logw" 0 mark start
	fio --name=crash --filename="/dev/mapper/$cbt" --direct=1 --ioengine=libaio \
		--iodepth=8 --randrepeat=0 --norandommap "$@" --output=/dev/null ||
		fail "fio"
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

check() {
	local out
	out=$("$logcheck" --log "$log" --meta 0:$META --data $META:$DATA --from-mark start \
		--every-entry --min-points "$1" 2>&1) || { fail "logcheck: $out"; return 1; }
	echo "# $out"
	grep -q " 2 bitmaps" <<<"$out" || fail "logcheck did not check both bitmaps: $out"
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

run_test "4 KiB random writes with flushes: every crash point is honest" test_small_writes
run_test "mixed sizes, discards, FUA: every crash point is honest" test_mixed
finish
