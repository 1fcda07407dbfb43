#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Past QEMU's incremental-backup test: chunks overwritten with zeros, writes
# unaligned to the granularity and to sectors, a device whose size is not a
# multiple of the granularity, discard and write-zeroes, 2 MiB and 512 B
# clusters, a chain of 20 incrementals, and fio writing while an incremental
# runs. Every chain is read back against the device by qemu-img compare and
# every count against the chunks the writes touched.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl blkdiscard sha256sum
plan 7

SIZE=$((64 << 20))

# start TAG [BYTES [GRANULARITY [CLUSTER]]]: a cbt device (64 MiB) with the
# seed's base pattern, bitmap b0 and a full backup full.qcow2 that matches it.
start() {
	local size=${2:-$SIZE}
	make_tmpdir dir
	cbt_over_file "$dir/disk" "$size" "$1"
	qio "$dev" "write -P 0x41 0 512" "write -P 0xd5 1M 32k" "write -P 0xdc $((size / 2)) 124k"
	cbtctl bitmap add "$dev" b0 --granularity="${3:-64K}" || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2${4:+,cluster-size=$4}" \
		>/dev/null || fail "full backup"
	chain_matches "$dir/full.qcow2" "$dev"
}

# incremental IMAGE BACKING [,OPTIONS]: an incremental through b0 whose chain
# must read as the device; leaves the job's dirty bytes in $dirty.
incremental() {
	cbtctl backup --sync=incremental --bitmap=b0 --json "$dev=$1,backing=$2$3" \
		>"$dir/out.json" || fail "incremental $1: $(cat "$dir/out.json")"
	dirty=$(job_field "$dir/out.json" 0 dirty_bytes)
	chain_matches "$1" "$dev"
	expect_eq "count after $1" "$(bitmap_field "$dev" b0)" 0
}

# chunk_bytes GRANULARITY DEVICE_BYTES OFFSET:LENGTH...: the bytes of the
# chunks the ranges touch, the last chunk clipped to the device's end.
chunk_bytes() {
	local g=$1 size=$2 r off len c total=0
	local -A chunks=()
	shift 2
	for r in "$@"; do
		off=${r%:*}
		len=${r#*:}
		for ((c = off / g; c <= (off + len - 1) / g; c++)); do
			chunks[$c]=1
		done
	done
	for c in "${!chunks[@]}"; do
		total=$((total + (size - c * g < g ? size - c * g : g)))
	done
	echo $total
}

# wait_dirty WHAT: waits (up to 60 s) until b0 has a dirty chunk.
wait_dirty() {
	local n=0
	until [ "$(bitmap_field "$dev" b0)" -gt 0 ]; do
		n=$((n + 1))
		[ $n -lt 120 ] || { fail "no dirty chunk: $1"; return 1; }
		nap 0.5
	done
}

test_zero_overwrite() {
	local dir loop name dev dirty
	start zeros
	qio "$dev" "write -P 0x11 8M 192k" "write -P 0x12 20M 64k"
	incremental "$dir/inc1.qcow2" "$dir/full.qcow2"
	# Zeros written as data over a whole chunk and over part of one, and a
	# write-zeroes request: each must hide the older image's bytes.
	qio "$dev" "write -P 0 8M 64k" "write -P 0 $(((8 << 20) + (68 << 10))) 4k" "write -z 20M 64k"
	expect_eq "count" "$(bitmap_field "$dev" b0)" $((3 * 65536))
	incremental "$dir/inc2.qcow2" "$dir/inc1.qcow2"
	expect_eq "dirty bytes" "$dirty" $((3 * 65536))
	qio "$dir/inc2.qcow2" "read -P 0 8M 64k" "read -P 0x11 $(((8 << 20) + (64 << 10))) 4k" \
		"read -P 0 $(((8 << 20) + (68 << 10))) 4k" "read -P 0x11 $(((8 << 20) + (72 << 10))) 120k" \
		"read -P 0 20M 64k"
}

test_unaligned() {
	local dir loop name dev dirty ranges want
	start unaligned
	cbtctl bitmap add "$dev" b1 --granularity=4K || fail "bitmap add b1"
	# Sector-aligned direct writes across chunk boundaries...
	qio "$dev" "write -P 0x21 $((65536 - 512)) 1024" \
		"write -P 0x22 $(((5 << 20) - 1536)) 3584" "write -P 0x23 40M 512"
	# ...and buffered writes that are not even sector-aligned.
	qio --buffered "$dev" "write -P 0x24 $(((2 << 20) - 100)) 300" \
		"write -P 0x25 $(((50 << 20) + 196601)) 9" "flush"
	ranges="$((65536 - 512)):1024 $(((5 << 20) - 1536)):3584 $((40 << 20)):512
		$(((2 << 20) - 100)):300 $(((50 << 20) + 196601)):9"
	# shellcheck disable=SC2086 # one word per range
	want=$(chunk_bytes 65536 $SIZE $ranges)
	expect_eq "64K count" "$(bitmap_field "$dev" b0)" "$want"
	expect_eq "64K count is nine chunks" "$want" $((9 * 65536))
	# shellcheck disable=SC2086
	expect_eq "4K count" "$(bitmap_field "$dev" b1)" "$(chunk_bytes 4096 $SIZE $ranges)"
	incremental "$dir/inc.qcow2" "$dir/full.qcow2"
	expect_eq "dirty bytes" "$dirty" "$want"
	qio "$dir/inc.qcow2" "read -P 0x24 $(((2 << 20) - 100)) 300" \
		"read -P 0 $(((2 << 20) + 200)) 512" "read -P 0x25 $(((50 << 20) + 196601)) 9"
}

test_odd_size() {
	local dir loop name dev dirty odd=$(((40 << 20) + 7 * 1024)) grown
	start odd $odd
	expect_eq "full image size" "$(qemu-img info --output=json "$dir/full.qcow2" |
		json_field virtual-size)" $odd
	# The last chunk holds only 7 KiB of the device.
	qio "$dev" "write -P 0x31 0 512" "write -P 0x32 $((odd - 1024)) 1024"
	expect_eq "count with the clipped last chunk" "$(bitmap_field "$dev" b0)" $((65536 + 7168))
	incremental "$dir/inc1.qcow2" "$dir/full.qcow2"
	# Grow by 5 KiB, still inside that chunk, and write the new bytes.
	grown=$((odd + 5 * 1024))
	truncate -s $grown "$dir/disk"
	losetup -c "$loop"
	dmsetup reload "$name" --table "0 $((grown / 512)) cbt $loop" || fail "reload"
	dmsetup resume "$name" || fail "resume"
	qio "$dev" "write -P 0x33 $odd 5k"
	expect_eq "count after growing" "$(bitmap_field "$dev" b0)" 12288
	expect_eq "consistent after growing" "$(bitmap_field "$dev" b0 inconsistent)" false
	incremental "$dir/inc2.qcow2" "$dir/inc1.qcow2"
	qio "$dir/inc2.qcow2" "read -P 0x32 $((odd - 1024)) 1024" "read -P 0x33 $odd 5k"
}

test_discard() {
	local dir loop name dev dirty
	start discard
	qio "$dev" "write -P 0x51 16M 1M" "write -P 0x52 40M 64k" "write -P 0x53 48M 128k"
	incremental "$dir/inc1.qcow2" "$dir/full.qcow2"
	blkdiscard -o 16M -l 1M "$dev" || fail "discard 1M"
	blkdiscard -o $(((40 << 20) + 4096)) -l 4096 "$dev" || fail "discard 4K"
	blkdiscard -z -o 48M -l 128K "$dev" || fail "zero-out 128K"
	expect_eq "count" "$(bitmap_field "$dev" b0)" $(((1 << 20) + (64 << 10) + (128 << 10)))
	incremental "$dir/inc2.qcow2" "$dir/inc1.qcow2"
	expect_eq "dirty bytes" "$dirty" $(((1 << 20) + (64 << 10) + (128 << 10)))
	# What the device reads after the discard (zeros over a loop file) is in
	# the chain, not the older images' data.
	qio "$dir/inc2.qcow2" "read -P 0 16M 1M" "read -P 0x52 40M 4k" "read -P 0x52 $(((40 << 20) + 8192)) 56k" \
		"read -P 0 48M 128k"
}

test_cluster_sizes() {
	local dir loop name dev dirty
	start clusters $SIZE 64K 2M
	qio "$dev" "${SEED_ROUND1[@]}"
	incremental "$dir/inc1.qcow2" "$dir/full.qcow2" ",cluster-size=512"
	expect_eq "dirty bytes" "$dirty" 458752
	qio "$dev" "${SEED_ROUND2[@]}" \
		"write -P 0x66 $(((3 << 20) + 512)) 4k"
	incremental "$dir/inc2.qcow2" "$dir/inc1.qcow2" ",cluster-size=2M"
	incremental "$dir/inc3.qcow2" "$dir/inc2.qcow2" ",cluster-size=512"
	expect_eq "hollow incremental" "$dirty" 0
	expect_eq "cluster sizes of the chain" "$(qemu-img info --output=json --backing-chain \
		"$dir/inc3.qcow2" | json_field cluster-size | tr '\n' ' ')" "512 2097152 512 2097152 "
}

test_chain_of_20() {
	local dir loop name dev dirty size=$((8 << 20)) k w off len prev ranges writes sums=()
	start chain $size
	prev=$dir/full.qcow2
	sums[0]=$(sha256sum <"$prev")
	RANDOM=124
	for ((k = 1; k <= 20; k++)); do
		ranges=()
		writes=()
		for w in 1 2 3; do
			off=$(((RANDOM * 32768 + RANDOM) % (size - (256 << 10)) / 512 * 512))
			len=$(((RANDOM % 256 + 1) * 512))
			writes+=("write -P $((k + 16 * w)) $off $len")
			ranges+=("$off:$len")
		done
		qio "$dev" "${writes[@]}"
		# Exactly this round's chunks: the last commit cleared the rest.
		cbtctl backup --sync=incremental --bitmap=b0 --json \
			"$dev=$dir/inc$k.qcow2,backing=$prev" >"$dir/out.json" ||
			fail "incremental $k: $(cat "$dir/out.json")"
		expect_eq "dirty bytes in round $k" "$(job_field "$dir/out.json" 0 dirty_bytes)" \
			"$(chunk_bytes 65536 $size "${ranges[@]}")"
		prev=$dir/inc$k.qcow2
		chain_matches "$prev" "$dev"
		sums[k]=$(sha256sum <"$prev")
	done
	expect_eq "images in the chain" "$(qemu-img info --output=json --backing-chain "$prev" |
		json_field virtual-size | wc -l)" 21
	# Each image read as the device when it was made; none changed since.
	expect_eq "full unchanged by the incrementals" "$(sha256sum <"$dir/full.qcow2")" "${sums[0]}"
	for ((k = 1; k < 20; k++)); do
		expect_eq "inc$k unchanged by later backups" "$(sha256sum <"$dir/inc$k.qcow2")" \
			"${sums[k]}"
	done
}

test_fio_during_incremental() {
	local dir loop name dev dirty fpid
	command -v fio >/dev/null || skip_test "fio is not installed"
	start fio
	# Random 4 KiB writes over 16 MiB of the device, until stopped, 200 a
	# second: enough that writes land before and after the freeze and the
	# copy's reads, while the backup still gets most of the one vCPU (at
	# full speed fio held it; the debug kernel took 126 s here).
	fio --name=during --filename="$dev" --offset=8M --size=16M --rw=randwrite --bs=4k \
		--direct=1 --ioengine=psync --rate_iops=200 \
		--time_based --runtime=600 --refill_buffers --randseed=$$ --eta=never \
		--output="$dir/fio.out" &
	fpid=$!
	wait_dirty "fio's first writes" || { kill $fpid; return 1; }
	# The copy reads while fio writes: writes land before and after the
	# freeze and before and after the copy reads their chunks.
	cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$dev=$dir/inc1.qcow2,backing=$dir/full.qcow2" >"$dir/out.json" ||
		{ kill $fpid; fail "incremental under fio: $(cat "$dir/out.json")"; }
	wait_dirty "a write after the incremental" || { kill $fpid; return 1; }
	kill $fpid
	wait $fpid || true
	qemu-img check -q "$dir/inc1.qcow2" || fail "qemu-img check inc1"
	[ "$(job_field "$dir/out.json" 0 dirty_bytes)" -gt 0 ] || fail "fio wrote nothing before the freeze"
	# With the device quiet, the next incremental completes the chain.
	incremental "$dir/inc2.qcow2" "$dir/inc1.qcow2"
}

run_test "dirty chunks overwritten with zeros" test_zero_overwrite
run_test "writes unaligned to chunks and to sectors" test_unaligned
run_test "device size not a multiple of the granularity, grown" test_odd_size
run_test "discard and write-zeroes" test_discard
run_test "2 MiB and 512 B clusters in one chain" test_cluster_sizes
run_test "a chain of 20 incrementals" test_chain_of_20
run_test "fio writing during an incremental" test_fio_during_incremental
finish
