#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The cbt target passes every bio through unchanged: data written through
# /dev/mapper/X (at odd offsets, with FUA and flushes, discards and
# write-zeroes) lands on the underlying device exactly as the same
# operations land on a plain reference file.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cmp blkdiscard
plan 5

SIZE=$((64 << 20))

# The operations, in qemu-io syntax, applied both to the device and the reference.
WRITES=(
	"write -P 0x11 0 512"
	"write -P 0x22 4096 65536"
	"write -P 0x33 1535k 1025k"
	"write -P 0x44 33553920 1024"
	"write -f -P 0x55 12345k 3k"
	"flush"
	"write -P 0x66 $((SIZE - 512)) 512"
	"write -P 0x77 40m 2m"
	"write -z 40m 512k"
	"write -P 0x78 50m 4m"
)

setup() {
	make_tmpdir dir
	truncate -s $SIZE "$dir/reference"
	cbt_over_file "$dir/backing" $SIZE "$1"
}

test_writes_land_on_device() {
	local dir loop name dev
	setup writes
	qio "$dev" "${WRITES[@]}"
	qio "$dir/reference" "${WRITES[@]}"
	cmp "$dir/reference" "$dir/backing" || fail "device contents differ from the reference"
	# Reads through the target return what is on the device.
	qio "$dev" "read -P 0x33 1535k 1025k" "read -P 0x66 $((SIZE - 512)) 512" "read -P 0 40m 512k"
}

test_discard_passes_down() {
	local dir loop name dev
	setup discard
	qio "$dev" "write -P 0x99 1m 8m"
	blkdiscard -o $((2 << 20)) -l $((4 << 20)) "$dev" || fail "discard through the target failed"
	qio "$dir/reference" "write -P 0x99 1m 8m" "write -z 2m 4m"
	cmp "$dir/reference" "$dir/backing" || fail "discarded range was not zeroed on the loop device"
	# The discard reached the file: its blocks were punched out.
	local blocks
	blocks=$(stat -c %b "$dir/backing")
	[ "$blocks" -lt $(( (8 << 20) / 512 )) ] || fail "backing file still has $blocks blocks allocated"
}

test_offset_table() {
	# A cbt segment that does not start at sector 0 of the dm device maps
	# its first sector to sector 0 of its own device.
	local dir loop loop2 name dev
	make_tmpdir dir
	truncate -s $SIZE "$dir/backing" "$dir/reference"
	truncate -s $((8 << 20)) "$dir/head"
	make_loop loop "$dir/backing"
	make_loop loop2 "$dir/head"
	name=$(dm_name offset)
	dm_create "$name" "0 16384 linear $loop2 0
16384 $((SIZE / 512)) cbt $loop"
	dev=/dev/mapper/$name
	qio "$dev" "write -P 0xab 8m 1m" "write -P 0xcd $(((8 << 20) + SIZE - 4096)) 4096"
	qio "$dir/reference" "write -P 0xab 0 1m" "write -P 0xcd $((SIZE - 4096)) 4096"
	cmp "$dir/reference" "$dir/backing" || fail "the cbt segment did not map to its device's start"
}

test_table_reports() {
	local dir loop name dev
	setup reports
	local table status
	table=$(dmsetup table "$name")
	expect_eq "table" "$table" "0 $((SIZE / 512)) cbt $(stat -Lc '%Hr:%Lr' "$loop")"
	status=$(dmsetup status "$name")
	expect_eq "status" "$status" "0 $((SIZE / 512)) cbt 0 0 0 0 1 0 - -"
	# The same table loads again from what `dmsetup table` printed.
	dmsetup reload "$name" --table "$table" || fail "reload of the printed table failed"
	dmsetup resume "$name" || fail "resume failed"
}

test_flush_and_fua() {
	# qemu-io's flush and FUA writes go through without error, and the data stays.
	local dir loop name dev
	setup flush
	qio "$dev" "write -f -P 0x5a 0 64k" "flush" "write -P 0x5b 64k 64k" "flush"
	qio "$dir/reference" "write -P 0x5a 0 64k" "write -P 0x5b 64k 64k"
	cmp "$dir/reference" "$dir/backing" || fail "data after flush/FUA differs"
}

run_test "writes at odd offsets land on the device" test_writes_land_on_device
run_test "discard passes down" test_discard_passes_down
run_test "a segment at a table offset maps to its device's start" test_offset_table
run_test "table and status lines" test_table_reports
run_test "flush and FUA pass through" test_flush_and_fua
finish
