#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# cbtctl backups of one device: a full backup and incrementals after the
# QEMU incremental-backup test's writes, each image checked by qemu-img check
# and its chain compared with the device by qemu-img compare; granularities,
# cluster sizes, existing targets, a resized device (also between prepare
# and the backup instant), refused requests and read errors; the copy
# engine's reads in flight, an incremental of two bitmaps' union, the rate
# limit and zstd compression.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl
plan 18

SIZE=$((64 << 20))

# setup TAG: a 64 MiB cbt device with the seed's base pattern; sets dir, dev, name.
setup() {
	make_tmpdir dir
	cbt_over_file "$dir/disk" $SIZE "$1"
	qio "$dev" "write -P 0x41 0 512" "write -P 0xd5 1M 32k" "write -P 0xdc 32M 124k"
}

# incremental_simple GRANULARITY COUNT: the seed's simple scenario.
incremental_simple() {
	local gran=$1 want=$2 dir loop name dev
	setup "simple-$gran"
	cbtctl bitmap add "$dev" b0 --granularity="$gran" || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2" >/dev/null ||
		fail "full backup failed"
	chain_matches "$dir/full.qcow2" "$dev"
	expect_eq "count after the full backup" "$(bitmap_field "$dev" b0)" 0
	# A hollow incremental: nothing dirty, still a valid image.
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc0.qcow2,backing=$dir/full.qcow2" >/dev/null || fail "hollow incremental"
	chain_matches "$dir/inc0.qcow2" "$dev"
	qio "$dev" "${SEED_ROUND1[@]}"
	expect_eq "count after three writes" "$(bitmap_field "$dev" b0)" "$want"
	cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$dev=$dir/inc1.qcow2,backing=$dir/inc0.qcow2" >"$dir/out.json" ||
		fail "incremental 1 failed: $(cat "$dir/out.json")"
	expect_eq "dirty bytes copied" \
		"$(job_field "$dir/out.json" 0 dirty_bytes)" "$want"
	chain_matches "$dir/inc1.qcow2" "$dev"
	qio "$dev" "${SEED_ROUND2[@]}"
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc2.qcow2,backing=$dir/inc1.qcow2" >/dev/null || fail "incremental 2 failed"
	chain_matches "$dir/inc2.qcow2" "$dev"
	expect_eq "count after the last incremental" "$(bitmap_field "$dev" b0)" 0
	# The incremental's backing file and format are recorded.
	[[ $(qemu-img info --output=json "$dir/inc2.qcow2") == *'"backing-filename-format": "qcow2"'* ]] ||
		fail "no backing format in inc2"
}

test_simple_64k() { incremental_simple 64K 458752; }
test_small_granularity() { incremental_simple 32K 360448; }
test_large_granularity() { incremental_simple 128K 655360; }

# A device of 4096-byte logical blocks (a 4Kn disk) backed up into images
# of 512-byte clusters: reads stay whole blocks, the chain equals the device.
test_4kn_small_clusters() {
	local dir loop name dev
	make_tmpdir dir
	truncate -s $((16 << 20)) "$dir/disk"
	loop=$(losetup --find --show --sector-size 4096 "$dir/disk") || fail "losetup"
	_loop_devs+=("$loop")
	name=$(dm_name 4kn)
	dm_create "$name" "0 $((16 << 11)) cbt $loop" || fail "create"
	dev=/dev/mapper/$name
	expect_eq "logical block size" "$(blockdev --getss "$dev")" 4096
	qio "$dev" "write -P 0x41 0 4k" "write -P 0x42 1M 36k" "write -P 0x43 15M 12k"
	cbtctl bitmap add "$dev" b0 --granularity=4K || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2,cluster-size=512" \
		>"$dir/full.out" 2>&1 || fail "full backup: $(cat "$dir/full.out")"
	chain_matches "$dir/full.qcow2" "$dev"
	qio "$dev" "write -P 0x51 4k 4k" "write -P 0x52 2M 8k" "write -P 0x53 $(((16 << 20) - 4096)) 4k"
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc.qcow2,backing=$dir/full.qcow2,cluster-size=512" \
		>"$dir/inc.out" 2>&1 || fail "incremental: $(cat "$dir/inc.out")"
	chain_matches "$dir/inc.qcow2" "$dev"
}

test_larger_cluster_target() {
	# A full backup into a 128K-cluster image made beforehand, no backing
	# file; the incremental is rebased onto it afterwards.
	local dir loop name dev
	setup cluster
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	qemu-img create -q -f qcow2 -o cluster_size=128k "$dir/full.qcow2" $SIZE
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2,mode=existing" >/dev/null ||
		fail "full backup into an existing image failed"
	chain_matches "$dir/full.qcow2" "$dev"
	qio "$dev" "${SEED_ROUND1[@]}"
	qemu-img create -q -f qcow2 -o cluster_size=128k "$dir/inc.qcow2" $SIZE
	cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,mode=existing" \
		>/dev/null || fail "incremental into an existing image failed"
	qemu-img rebase -u -F qcow2 -b "$dir/full.qcow2" "$dir/inc.qcow2"
	chain_matches "$dir/inc.qcow2" "$dev"
}

test_existing_with_backing() {
	local dir loop name dev
	setup existing
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2,cluster-size=512" >/dev/null ||
		fail "full backup with 512 B clusters failed"
	qio "$dev" "write -P 0x21 100k 3k" "write -z 1M 32k" "write -P 0x22 63M 1M"
	qemu-img create -q -f qcow2 -b "$dir/full.qcow2" -F qcow2 "$dir/inc.qcow2"
	cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,mode=existing" \
		>/dev/null || fail "incremental into an existing image failed"
	chain_matches "$dir/inc.qcow2" "$dev"
	# The chunk overwritten with zeros reads as zeros, not the full's 0xd5.
	qio "$dir/inc.qcow2" "read -P 0 1M 32k"
}

test_existing_stale_and_larger() {
	# A full backup into an image that already holds data: clusters that are
	# zero on the device must read zero, not the old data. Then an image
	# larger than a device whose end is not cluster-aligned, over a backing file.
	local dir loop name dev odd=$((SIZE - 3 * 512))
	make_tmpdir dir
	cbt_over_file "$dir/disk" $odd stale
	qio "$dev" "write -P 0x41 0 512" "write -P 0x42 $((odd - 512)) 512"
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	qemu-img create -q -f qcow2 "$dir/old.qcow2" $SIZE
	qio "$dir/old.qcow2" "write -P 0x55 1M 1M" "write -P 0x56 $((SIZE - 64 * 1024)) 64k"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/old.qcow2,mode=existing" >/dev/null ||
		fail "full backup over old data failed"
	qemu-img check -q "$dir/old.qcow2" || fail "check"
	# Old data must not survive where the device is zero; the device's tail.
	qio "$dir/old.qcow2" "read -P 0 1M 1M" "read -P 0x42 $((odd - 512)) 512" \
		"read -P 0 $odd 1536"
	qio "$dev" "write -P 0x43 $((odd - 1024)) 1024"
	qemu-img create -q -f qcow2 -b "$dir/old.qcow2" -F qcow2 "$dir/inc.qcow2" $SIZE
	cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,mode=existing" \
		>/dev/null || fail "incremental into a larger image over a backing file failed"
	qemu-img check -q "$dir/inc.qcow2" || fail "check inc"
	qio "$dir/inc.qcow2" "read -P 0x43 $((odd - 1024)) 1024" "read -P 0x41 0 512"
}

test_resized_device() {
	local dir loop name dev
	setup resize
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2" >/dev/null || fail "full"
	truncate -s $((65 << 20)) "$dir/disk"
	losetup -c "$loop"
	dmsetup reload "$name" --table "0 $((65 << 11)) cbt $loop" || fail "reload"
	dmsetup resume "$name" || fail "resume"
	qio "$dev" "write -P 0x7f 64M 64k"
	# The whole grown MiB is dirty: no backup has seen it.
	expect_eq "count after the growth and a write past the old end" \
		"$(bitmap_field "$dev" b0)" $((1 << 20))
	qemu-img create -q -f qcow2 -b "$dir/full.qcow2" -F qcow2 "$dir/inc.qcow2" 65M
	cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,mode=existing" \
		>/dev/null || fail "incremental after the resize failed"
	chain_matches "$dir/inc.qcow2" "$dev"
}

# expect_exit CODE CMD...: the exit status, an error message, and no file
# left in the scratch directory.
expect_exit() {
	local want=$1 rc err names n left=()
	shift
	"$@" >/dev/null 2>"$dir/err" && rc=0 || rc=$?
	slurp err "$dir/err"
	expect_eq "exit status of '$*' ($err)" "$rc" "$want"
	[ -n "$err" ] || fail "'$*' gave no error message"
	entries names "$dir"
	for n in "${names[@]}"; do
		case $n in
		disk | err | existing.qcow2 | .*) ;;
		*) left+=("$n") ;;
		esac
	done
	[ ${#left[@]} = 0 ] || fail "'$*' left files: ${left[*]}"
}

# refused_setup TAG: a device whose bitmap b0 has one dirty chunk.
refused_setup() {
	setup "$1"
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	qio "$dev" "write -P 0x33 0 64k"
	expect_eq "count" "$(bitmap_field "$dev" b0)" 65536
}

# nothing_changed: b0 still has its one chunk and is not frozen.
nothing_changed() {
	expect_eq "count after the refusal" "$(bitmap_field "$dev" b0)" 65536
	expect_eq "busy after the refusal" "$(bitmap_field "$dev" b0 busy)" false
	expect_eq "bitmaps" "$(bitmaps "$dev")" 1
}

test_sync_bitmap_missing() {
	local dir loop name dev
	refused_setup missing
	expect_exit 2 cbtctl backup --sync=incremental "$dev=$dir/t.qcow2"
	has "$dir/err" "--bitmap" || fail "the error does not ask for --bitmap: $(cat "$dir/err")"
	nothing_changed
}

test_sync_bitmap_not_found() {
	local dir loop name dev
	refused_setup notfound
	expect_exit 1 cbtctl backup --sync=incremental --bitmap=unknown "$dev=$dir/t.qcow2"
	has "$dir/err" "unknown" || fail "the error does not name the bitmap: $(cat "$dir/err")"
	nothing_changed
}

test_bad_granularity() {
	local dir loop name dev g
	refused_setup granularity
	for g in 64000 48K 3; do
		expect_exit 1 cbtctl bitmap add "$dev" b1 --granularity=$g
		# The target itself refuses it, not only the controller.
		! dmsetup message "$name" 0 bitmap add b1 granularity=$g 2>/dev/null ||
			fail "the target accepted granularity $g"
	done
	expect_exit 2 cbtctl bitmap add "$dev" b1 --granularity=0
	expect_exit 2 cbtctl bitmap add "$dev" b1 --granularity=banana
	nothing_changed
}

test_usage_errors() {
	local dir loop name dev
	refused_setup usage
	expect_exit 2 cbtctl backup "$dev=$dir/t.qcow2"
	expect_exit 2 cbtctl backup --sync=sometimes "$dev=$dir/t.qcow2"
	expect_exit 2 cbtctl backup --sync=full
	expect_exit 2 cbtctl backup --sync=full "$dev"
	expect_exit 2 cbtctl backup --sync=full "$dev=$dir/t.qcow2,cluster-size=3000"
	expect_exit 2 cbtctl backup --sync=full "$dev=$dir/t.qcow2,mode=sideways"
	expect_exit 2 cbtctl backup --sync=full --retries=x "$dev=$dir/t.qcow2"
	expect_exit 1 cbtctl backup --sync=full "/dev/mapper/cbt-no-such-dev=$dir/t.qcow2"
	expect_exit 1 cbtctl backup --sync=full "$dev=/nonexistent-dir/t.qcow2"
	has "$dir/err" "nonexistent-dir" || fail "the error does not name the target"
	qemu-img create -q -f qcow2 "$dir/existing.qcow2" 32M
	expect_exit 1 cbtctl backup --sync=full "$dev=$dir/existing.qcow2"
	expect_exit 1 cbtctl backup --sync=full "$dev=$dir/existing.qcow2,mode=existing"
	expect_eq "existing image untouched" "$(qemu-img info --output=json "$dir/existing.qcow2" |
		json_field virtual-size)" $((32 << 20))
	expect_exit 1 cbtctl bitmap remove "$dev" nosuch
	expect_exit 2 cbtctl frobnicate
	nothing_changed
}

# seed_read_error: the seed's blkdebug script. The first read after the
# next flush fails once; the incremental's writes end with that flush.
seed_read_error() {
	cbtctl inject "$dev" set-state event=flush state=1 new-state=2 >/dev/null &&
		cbtctl inject "$dev" error event=read state=2 errno=5 once >/dev/null ||
		fail "inject"
	qio "$dev" "${SEED_ROUND1[@]}" "flush"
	expect_eq "count after three writes" "$(bitmap_field "$dev" b0)" 458752
	expect_eq "not busy before the backup" "$(bitmap_field "$dev" b0 busy)" false
}

test_incremental_failure() {
	local dir loop name dev rc
	setup failure
	# The anchor commits b0: an incremental follows the image that did (identity.sh).
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/anchor.qcow2" >/dev/null ||
		fail "anchor backup"
	seed_read_error
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc.qcow2,backing=$dir/anchor.qcow2" >/dev/null 2>"$dir/err" && rc=0 || rc=$?
	expect_eq "exit status with a read error" "$rc" 1
	has "$dir/err" "Input/output error" || fail "error text: $(cat "$dir/err")"
	has "$dir/err" "offset" || fail "the error names no offset: $(cat "$dir/err")"
	[ ! -e "$dir/inc.qcow2" ] || fail "a failed backup left its target"
	[ -z "$(tmp_files "$dir")" ] || fail "temporaries left: $(ls -A "$dir")"
	expect_eq "count kept after the failure" "$(bitmap_field "$dev" b0)" 458752
	expect_eq "not busy after the failure" "$(bitmap_field "$dev" b0 busy)" false
	# The guest goes on writing; the next incremental has both rounds.
	qio "$dev" "${SEED_ROUND2[@]}"
	cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$dev=$dir/inc.qcow2,backing=$dir/anchor.qcow2" >"$dir/out.json" ||
		fail "the incremental after the failure failed: $(cat "$dir/out.json")"
	expect_eq "dirty bytes of both rounds" "$(job_field "$dir/out.json" 0 dirty_bytes)" 1638400
	chain_matches "$dir/inc.qcow2" "$dev"
	expect_eq "count after" "$(bitmap_field "$dev" b0)" 0
}

# grow_to MIB: the device (file, loop, table) grows to MIB MiB.
grow_to() {
	truncate -s $(($1 << 20)) "$dir/disk"
	losetup -c "$loop"
	dmsetup reload "$name" --table "0 $(($1 << 11)) cbt $loop" || fail "reload"
	dmsetup resume "$name" || fail "resume"
}

# A device grown after the backup's prepare (where its size was first read)
# and before the instant: the image has the size of the device at the
# instant and everything written in the new range; an existing target too
# small for it fails the job cleanly.
test_grown_after_prepare() {
	local dir loop name dev pid rc count
	setup grow
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2" >/dev/null || fail "full"
	qio "$dev" "write -P 0x33 1M 64k"
	CBT_TEST_STOP_AT=prepared cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$dev=$dir/inc.qcow2,backing=$dir/full.qcow2" >"$dir/out.json" &
	pid=$!
	wait_stopped $pid "prepared"
	grow_to 65
	qio "$dev" "write -P 0x7f 64M 64k"
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "exit status ($(<"$dir/out.json"))" "$rc" 0
	expect_eq "image size" "$(qemu-img info --output=json "$dir/inc.qcow2" |
		json_field virtual-size)" $((65 << 20))
	chain_matches "$dir/inc.qcow2" "$dev"
	expect_eq "count after" "$(bitmap_field "$dev" b0)" 0

	# mode=existing: a target of the old size cannot hold the instant.
	qio "$dev" "write -P 0x11 2M 64k"
	qemu-img create -q -f qcow2 -b "$dir/inc.qcow2" -F qcow2 "$dir/inc2.qcow2" 65M
	CBT_TEST_STOP_AT=prepared cbtctl backup --sync=incremental --bitmap=b0 --json \
		"$dev=$dir/inc2.qcow2,mode=existing" >"$dir/out.json" &
	pid=$!
	wait_stopped $pid "prepared"
	grow_to 66
	count=$(bitmap_field "$dev" b0)
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "exit status, existing target too small" "$rc" 1
	[[ $(job_field "$dir/out.json" 0 error) == *"grew from $((65 << 20)) to $((66 << 20)) bytes"* ]] ||
		fail "job error: $(job_field "$dir/out.json" 0 error)"
	expect_eq "count kept" "$(bitmap_field "$dev" b0)" "$count"
	expect_eq "not busy" "$(bitmap_field "$dev" b0 busy)" false
}

test_incremental_pause() {
	local dir loop name dev pid rc
	setup pause
	# The anchor commits b0: an incremental follows the image that did (identity.sh).
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/anchor.qcow2" >/dev/null ||
		fail "anchor backup"
	seed_read_error
	# The controller stops itself where it would pause before the retry.
	CBT_TEST_STOP_AT=retry cbtctl backup --sync=incremental --bitmap=b0 \
		--on-source-error=retry --json \
		"$dev=$dir/inc.qcow2,backing=$dir/anchor.qcow2" >"$dir/out.json" &
	pid=$!
	wait_stopped $pid "the retry"
	expect_eq "busy while the retry waits" "$(bitmap_field "$dev" b0 busy)" true
	expect_eq "frozen bytes while the retry waits" "$(bitmap_field "$dev" b0 frozen)" 458752
	expect_eq "recording while the retry waits" "$(bitmap_field "$dev" b0 recording)" true
	expect_eq "nothing written since the freeze" "$(bitmap_field "$dev" b0)" 0
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "exit status after the retry ($(<"$dir/out.json"))" "$rc" 0
	expect_eq "reads retried" "$(job_field "$dir/out.json" 0 read_retries)" 1
	expect_eq "count after" "$(bitmap_field "$dev" b0)" 0
	expect_eq "frozen after" "$(bitmap_field "$dev" b0 frozen)" 0
	expect_eq "not busy after" "$(bitmap_field "$dev" b0 busy)" false
	chain_matches "$dir/inc.qcow2" "$dev"
}

# Reads in flight, counted by the copy: a cbt device over dm-delay (20 ms
# reads) over a loop device, so that every read is still in flight when
# the next ones start. Then an incremental of two bitmaps' union, out of
# order, and its dirty bytes.
test_parallel_reads() {
	local dir loop name dev dname
	make_tmpdir dir
	truncate -s $((32 << 20)) "$dir/disk"
	make_loop loop "$dir/disk"
	dname=$(dm_name delay)
	dm_create "$dname" "0 65536 delay $loop 0 20 $loop 0 0" || fail "dm-delay"
	name=$(dm_name par)
	dm_create "$name" "0 65536 cbt /dev/mapper/$dname" || fail "cbt over dm-delay"
	dev=/dev/mapper/$name
	qio "$dev" "write -P 0x51 0 4M" "write -P 0x52 9M 3M" "write -P 0x53 31M 1M"
	cbtctl bitmap add "$dev" b1 || fail "bitmap add b1"
	cbtctl bitmap add "$dev" b2 --granularity=4K || fail "bitmap add b2"
	cbtctl backup --sync=full -b b1 -b b2 --parallel=4 --json "$dev=$dir/p4.qcow2" \
		>"$dir/p4.json" || fail "full backup, 4 in flight: $(cat "$dir/p4.json")"
	expect_eq "most reads in flight, --parallel=4" "$(job_field "$dir/p4.json" 0 max_reads_in_flight)" 4
	chain_matches "$dir/p4.qcow2" "$dev"
	cbtctl backup --sync=full --parallel=1 --json "$dev=$dir/p1.qcow2" >"$dir/p1.json" ||
		fail "full backup, 1 in flight"
	expect_eq "most reads in flight, --parallel=1" "$(job_field "$dir/p1.json" 0 max_reads_in_flight)" 1
	chain_matches "$dir/p1.qcow2" "$dev"
	# Committed together, the two record the same writes at their own
	# granularities: the union is b1's 64K chunks, not b2's 4K ones
	# (first in the list) and, the order swapped, not b1 alone either.
	qio "$dev" "write -P 0x61 2M 128k" "write -P 0x62 20M 4k" "write -P 0x63 30M 512"
	cbtctl backup --sync=incremental -b b2 -b b1 -W --json \
		"$dev=$dir/i2.qcow2,backing=$dir/p4.qcow2" >"$dir/i2.json" ||
		fail "incremental of the union: $(cat "$dir/i2.json")"
	expect_eq "union's dirty bytes" "$(job_field "$dir/i2.json" 0 dirty_bytes)" $((256 << 10))
	chain_matches "$dir/i2.qcow2" "$dev"
	qio "$dev" "write -P 0x64 24M 4k" "write -P 0x65 28M 4k"
	cbtctl backup --sync=incremental -b b1 -b b2 --json \
		"$dev=$dir/i3.qcow2,backing=$dir/i2.qcow2" >"$dir/i3.json" ||
		fail "incremental of the union, swapped: $(cat "$dir/i3.json")"
	expect_eq "union's dirty bytes, swapped" "$(job_field "$dir/i3.json" 0 dirty_bytes)" \
		$((128 << 10))
	chain_matches "$dir/i3.qcow2" "$dev"
}

# --rate-limit: 16 MiB at 8 MiB/s cannot take less than 15/8 s (the first
# read goes at once), on the guest's clock.
test_rate_limit() {
	local dir loop name dev t0 t1
	make_tmpdir dir
	cbt_over_file "$dir/disk" $((16 << 20)) rate
	qio "$dev" "write -P 0x71 0 16M"
	t0=$(date +%s%N)
	cbtctl backup --sync=full --rate-limit=8M "$dev=$dir/r.qcow2" >/dev/null ||
		fail "rate-limited backup"
	t1=$(date +%s%N)
	(((t1 - t0) / 1000000 >= 1875)) || fail "16 MiB at 8M/s took $(((t1 - t0) / 1000000)) ms"
	chain_matches "$dir/r.qcow2" "$dev"
	rm -f "$dir/r.qcow2"
	expect_exit 2 cbtctl backup --sync=full --rate-limit=0 "$dev=$dir/x.qcow2"
	expect_exit 2 cbtctl backup --sync=full --parallel=65 "$dev=$dir/x.qcow2"
}

# --compress: a full and an incremental backup of text-like data, zstd
# clusters that QEMU reads back as the device; a zlib target is refused.
test_compress() {
	local dir loop name dev n
	make_tmpdir dir
	cbt_over_file "$dir/disk" $((16 << 20)) zstd
	yes "the quick brown fox $RANDOM" | head -c $((6 << 20)) >"$dir/text"
	dd if="$dir/text" of="$dev" bs=1M oflag=direct status=none
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup --sync=full -b b0 --compress "$dev=$dir/full.qcow2" >/dev/null ||
		fail "compressed full backup"
	chain_matches "$dir/full.qcow2" "$dev"
	[[ $(qemu-img info "$dir/full.qcow2") == *"compression type: zstd"* ]] || fail "not zstd"
	n=$(qemu-img check --output=json "$dir/full.qcow2" | json_field compressed-clusters)
	expect_eq "compressed clusters (6 MiB of text in 64K clusters)" "$n" 96
	qio "$dev" "write -P 0x33 1M 64k" "write -P 0 2M 64k"
	dd if="$dir/text" of="$dev" bs=1M seek=10 count=1 oflag=direct status=none
	cbtctl backup --sync=incremental -b b0 -c "$dev=$dir/inc.qcow2,backing=$dir/full.qcow2" \
		>/dev/null || fail "compressed incremental"
	chain_matches "$dir/inc.qcow2" "$dev"
	n=$(qemu-img check --output=json "$dir/inc.qcow2" | json_field compressed-clusters)
	# 0x33 compresses as the text does; zeros are a zero cluster.
	expect_eq "compressed clusters of the incremental" "$n" 17
	qio "$dev" "write -P 0x34 5M 4k"
	qemu-img create -q -f qcow2 -o compression_type=zlib "$dir/zlib.qcow2" 16M
	cbtctl backup --sync=full -b b0 --compress "$dev=$dir/zlib.qcow2,mode=existing" \
		2>"$dir/err" &&
		fail "a zlib target was taken"
	has "$dir/err" zlib || fail "the refusal does not name zlib: $(cat "$dir/err")"
	expect_eq "count after the refusal" "$(bitmap_field "$dev" b0)" 65536
}

run_test "incremental simple (64K granularity)" test_simple_64k
run_test "small granularity (32K)" test_small_granularity
run_test "large granularity (128K)" test_large_granularity
run_test "a 4Kn device into 512 B clusters" test_4kn_small_clusters
run_test "128K-cluster targets made beforehand, rebased" test_larger_cluster_target
run_test "existing target with backing, 512 B clusters, zeroed chunk" test_existing_with_backing
run_test "existing targets: stale data, larger than the device" test_existing_stale_and_larger
run_test "device grown before an incremental" test_resized_device
run_test "device grown between prepare and the instant" test_grown_after_prepare
run_test "incremental without a bitmap is refused" test_sync_bitmap_missing
run_test "incremental with an unknown bitmap is refused" test_sync_bitmap_not_found
run_test "a granularity that is not a power of two is refused" test_bad_granularity
run_test "other usage errors change nothing" test_usage_errors
run_test "failed incremental (read error), then a good one" test_incremental_failure
run_test "read error retried to success, bitmap busy meanwhile" test_incremental_pause
run_test "reads in flight (dm-delay), the union of two bitmaps" test_parallel_reads
run_test "--rate-limit holds the copy to its rate" test_rate_limit
run_test "--compress: zstd clusters, a zlib target refused" test_compress
finish
