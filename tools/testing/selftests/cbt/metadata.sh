#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Bitmaps on a metadata device (table feature "metadata <dev>"): formatted
# on first use, loaded again when the device is created again (names,
# granularity, recording state, counts, generation), clear and commit
# durable, a frozen bitmap back as its union, resize, refusals that change
# nothing, and a metadata device that fails under writes. The crash-point
# test (crash.sh) checks the write ordering itself.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl
plan 10

SIZE=$((16 << 20))

# setup TAG [META_BYTES]: a data file and a zeroed metadata file under loop
# devices (dloop, mloop) and a cbt device over them ($name, $dev).
setup() {
	make_tmpdir dir
	truncate -s "$SIZE" "$dir/data" || return 1
	truncate -s "${2:-$((1 << 20))}" "$dir/meta" || return 1
	make_loop dloop "$dir/data" || return 1
	make_loop mloop "$dir/meta" || return 1
	name=$(dm_name "$1")
	dev=/dev/mapper/$name
	create
}

# create [SECTORS]: (re)creates $name over the loops; fails like dmsetup.
create() {
	dm_create "$name" "0 ${1:-$((SIZE / 512))} cbt $dloop 2 metadata $mloop"
}

gone() {
	dmsetup remove "$name"
}

msg() {
	dmsetup message "$name" 0 "$@"
}

# field BITMAP KEY: a key=value of "bitmap info BITMAP".
field() {
	local w words
	read -r -a words <<<"$(msg bitmap info "$1")"
	for w in "${words[@]}"; do
		[[ $w != "$2="* ]] || echo "${w#*=}"
	done
}

# status_field N: field N of the status line after "<start> <len> cbt".
status_field() {
	local f
	read -r -a f <<<"$(dmsetup status "$name")"
	echo "${f[$1 + 2]}"
}

# sb_seq: the seq of the newest superblock on $mloop.
sb_seq() {
	cbtctl metadata show "$mloop" --json | json_field seq
}

# kernel_said TEXT: the kernel logged TEXT since the test began.
kernel_said() {
	dmesg | tail -n 30 | grep -qF "$1" || fail "the kernel log lacks '$1'"
}

test_persist() {
	local before after
	setup persist
	expect_eq "metadata state" "$(status_field 8)" ok
	[[ $(dmsetup table "$name") =~ \ 2\ metadata\ [0-9]*:[0-9]*$ ]] ||
		fail "table: $(dmsetup table "$name")"
	msg bitmap add b0
	msg bitmap add fine granularity=4096
	msg bitmap add off granularity=1048576 disabled
	expect_eq "persistent" "$(field b0 persistent)" 1
	qio "$dev" "write -P 0x11 0 4k" "write -P 0x22 5M 100k" "write -P 0x33 $((SIZE - 512)) 512"
	before=$(msg bitmap list)
	gone
	create || return 1
	after=$(msg bitmap list)
	expect_eq "bitmaps after create again" "$after" "$before"
	expect_eq "b0 count" "$(field b0 count)" $(((1 + 2 + 1) * 65536))
	expect_eq "fine count" "$(field fine count)" $((4096 + 102400 + 4096))
	expect_eq "off count" "$(field off count)" 0
	expect_eq "off recording" "$(field off recording)" 0
	expect_eq "off inconsistent (added disabled)" "$(field off inconsistent)" 1
	expect_eq "generation" "$(field b0 generation | cut -d: -f2)" 1
	# A remove is durable too.
	msg bitmap remove fine
	gone
	create || return 1
	expect_eq "bitmaps after remove" "$(msg bitmap list | cut -d' ' -f1 | tr '\n' ' ')" "b0 off "
}

test_commit_clear() {
	local gen uuid seq
	setup commit
	msg bitmap add b0
	qio "$dev" "write -P 0x11 0 64k"
	uuid=$(field b0 generation | cut -d: -f1)
	msg bitmap freeze b0 t1
	qio "$dev" "write -P 0x22 1M 64k"
	# Removed while frozen: it comes back as frozen | live, not frozen.
	gone
	create || return 1
	expect_eq "busy after create" "$(field b0 busy)" 0
	expect_eq "union count" "$(field b0 count)" $((2 * 65536))
	expect_eq "generation kept" "$(field b0 generation)" "$uuid:1"
	msg bitmap freeze b0 t2
	qio "$dev" "write -P 0x33 2M 64k"
	msg bitmap commit b0 t2
	gen=$(field b0 generation)
	expect_eq "generation after commit" "$gen" "$uuid:2"
	gone
	create || return 1
	expect_eq "count after commit" "$(field b0 count)" 65536
	expect_eq "generation after commit, loaded" "$(field b0 generation)" "$gen"
	# One superblock write: the one with the new generation.
	seq=$(sb_seq)
	msg bitmap clear b0
	expect_eq "superblocks written by a clear" $(($(sb_seq) - seq)) 1
	gone
	create || return 1
	expect_eq "count after clear" "$(field b0 count)" 0
	expect_eq "generation after clear" "$(field b0 generation)" "$uuid:3"
	# Abort keeps the union, and the generation.
	qio "$dev" "write -P 0x44 3M 64k"
	msg bitmap freeze b0 t3
	qio "$dev" "write -P 0x55 4M 64k"
	msg bitmap abort b0 t3
	gone
	create || return 1
	expect_eq "count after abort" "$(field b0 count)" $((2 * 65536))
	expect_eq "generation after abort" "$(field b0 generation)" "$uuid:3"
}

test_resize() {
	setup resize
	msg bitmap add b0 granularity=512
	qio "$dev" "write -P 0x11 0 512"
	truncate -s $((SIZE * 2)) "$dir/data"
	losetup -c "$dloop"
	dmsetup reload "$name" --table "0 $((SIZE / 256)) cbt $dloop 2 metadata $mloop"
	dmsetup resume "$name"
	expect_eq "count after growth" "$(field b0 count)" $((512 + SIZE))
	qio "$dev" "write -P 0x22 $((SIZE + 4096)) 512"
	gone
	create $((SIZE / 256)) || return 1
	expect_eq "count after growth, loaded" "$(field b0 count)" $((512 + SIZE))
	# Loaded at the old length it is refused: the bitmaps cover the new one.
	gone
	if create; then
		fail "a table at another length than the bitmaps' was taken"
	fi
	kernel_said "Metadata device made for another length"
}

# A growth the metadata device has no room for: the resume fails with
# ENOSPC and changes nothing; the old table resumes.
test_resize_no_room() {
	local before
	setup noroom $((20 << 10))
	msg bitmap add b0 granularity=512
	qio "$dev" "write -P 0x11 0 512"
	before=$(msg bitmap list)
	truncate -s $((SIZE * 2)) "$dir/data"
	losetup -c "$dloop"
	dmsetup reload "$name" --table "0 $((SIZE / 256)) cbt $dloop 2 metadata $mloop"
	if dmsetup resume "$name" 2>/dev/null; then
		fail "a growth past the metadata device's end resumed"
	fi
	kernel_said "no room to grow bitmap 'b0'"
	dmsetup reload "$name" --table "0 $((SIZE / 512)) cbt $dloop 2 metadata $mloop"
	dmsetup resume "$name"
	expect_eq "bitmaps after the refused growth" "$(msg bitmap list)" "$before"
	gone
	create || return 1
	expect_eq "bitmaps loaded after the refused growth" "$(msg bitmap list)" "$before"
	# The metadata device grown (an LV extended): a reload takes its room,
	# no reformat; the larger bitmap is on it after a remove and a create.
	truncate -s $((32 << 10)) "$dir/meta"
	losetup -c "$mloop"
	dmsetup reload "$name" --table "0 $((SIZE / 256)) cbt $dloop 2 metadata $mloop"
	dmsetup resume "$name" || fail "the growth did not resume on a grown metadata device"
	kernel_said "grown from 5 to 8 blocks of 4 KiB"
	# The grown part is dirty: no backup has seen it.
	expect_eq "b0 count after the growth" "$(field b0 count)" $((512 + SIZE))
	gone
	create $((SIZE / 256)) || return 1
	expect_eq "b0 count loaded at the new length" "$(field b0 count)" $((512 + SIZE))
}

test_refusals() {
	local other before
	setup refuse $((20 << 10))
	# 20 KiB: four superblock blocks and one area block.
	msg bitmap add b0 granularity=512
	before=$(msg bitmap list)
	if msg bitmap add b1 granularity=512 2>/dev/null; then
		fail "a bitmap past the metadata device's end was added"
	fi
	kernel_said "no room for bitmap 'b1'"
	expect_eq "list after a refused add" "$(msg bitmap list)" "$before"
	# A reload must keep the metadata device, and may not drop it.
	if dmsetup reload "$name" --table "0 $((SIZE / 512)) cbt $dloop"; then
		fail "a reload without the metadata device was taken"
	fi
	kernel_said "A reload must keep the metadata device"
	gone
	# Another dm device may not take it.
	other=$(dm_name other)
	if dm_create "$other" "0 $((SIZE / 512)) cbt $dloop 2 metadata $mloop"; then
		fail "another dm device took the metadata"
	fi
	kernel_said "belongs to another dm device"
	# Nor garbage, nor a device too small to hold anything.
	dd if=/dev/urandom of="$mloop" bs=4k count=4 oflag=direct status=none
	if create; then
		fail "a metadata device of random bytes was taken"
	fi
	kernel_said "Not a dm-cbt metadata device"
	# Unknown feature words and a missing path are refused.
	if dm_create "$name" "0 $((SIZE / 512)) cbt $dloop 1 metadata"; then
		fail "metadata without a path was taken"
	fi
	kernel_said "Missing metadata device path"
	if dm_create "$name" "0 $((SIZE / 512)) cbt $dloop 2 metadata $dloop"; then
		fail "the data device as its own metadata device was taken"
	fi
}

# One live device per metadata device: a rename (no dm uuid) and a create
# under the old name with the same metadata device is refused, the renamed
# device keeps its bitmaps, and once it is gone the metadata loads again.
test_shared_meta() {
	local d2 old
	setup shared
	msg bitmap add b0
	qio "$dev" "write -P 0x11 0 64k"
	old=$name-old
	dmsetup rename "$name" "$old" || fail "rename"
	_dm_devs+=("$old")	# removed at the end if the test stops early
	truncate -s "$SIZE" "$dir/data2"
	make_loop d2 "$dir/data2" || return 1
	if dm_create "$name" "0 $((SIZE / 512)) cbt $d2 2 metadata $mloop"; then
		fail "a second live device took the metadata device"
	fi
	kernel_said "The metadata device is in use by another cbt device"
	expect_eq "the renamed device's b0" \
		"$(dmsetup message "$old" 0 bitmap info b0 | grep -o ' count=[0-9]*')" " count=65536"
	dmsetup remove "$old" || fail "remove $old"
	create || fail "create again once the other is gone"
	expect_eq "b0 loaded again" "$(field b0 count)" 65536
}

# within SECS CMD...: CMD in the background, waited for SECS at most: its
# status, or 1 with CMD left running.
within() {
	local secs=$1 pid n=0
	shift
	"$@" &
	pid=$!
	while kill -0 $pid 2>/dev/null; do
		n=$((n + 1))
		[ $n -le $((secs * 10)) ] || return 1
		nap 0.1
	done
	wait $pid
}

# A metadata device that does not answer (a suspended dm device): the
# create that reads it waits, but only it: another cbt device is created
# and read through netlink meanwhile; once it answers, the first is made.
test_stuck_meta() {
	local m mdev other pid n=0
	make_tmpdir dir
	truncate -s "$SIZE" "$dir/data" "$dir/data2"
	truncate -s $((1 << 20)) "$dir/meta"
	make_loop dloop "$dir/data" || return 1
	make_loop d2 "$dir/data2" || return 1
	make_loop mloop "$dir/meta" || return 1
	m=$(dm_name stuck-meta)
	dm_create "$m" "0 2048 linear $mloop 0" || return 1
	mdev=/dev/mapper/$m
	name=$(dm_name stuck)
	dmsetup suspend "$m"
	dmsetup create "$name" --table "0 $((SIZE / 512)) cbt $dloop 2 metadata $mdev" &
	pid=$!
	_dm_devs+=("$name")
	# Its constructor waits for the superblock read.
	until grep -qs . "/proc/$pid/stack" && [ "$(awk '{ print $3 }' "/proc/$pid/stat")" = D ]; do
		n=$((n + 1))
		[ $n -lt 400 ] || { fail "the create never waited for the metadata device"; break; }
		nap 0.05
	done
	other=$(dm_name stuck-other)
	_dm_devs+=("$other")
	# Each in the background, given 20 s: a kernel that makes them wait
	# for the stuck device fails here, and goes on once it resumes it.
	if ! within 20 dmsetup create "$other" --table "0 $((SIZE / 512)) cbt $d2" ||
		! within 20 dmsetup message "$other" 0 bitmap add b0 ||
		! qio "/dev/mapper/$other" "write -P 0x21 0 64k" ||
		! within 20 cbtctl extents "$other" b0 >"$dir/extents"; then
		dmsetup resume "$m"
		wait
		fail "another cbt device waited for the stuck metadata device"
	fi
	expect_eq "a netlink dump meanwhile" "$(cat "$dir/extents")" "0 65536"
	kill -0 $pid 2>/dev/null || fail "the create did not wait for its metadata device"
	dmsetup resume "$m"
	wait $pid || fail "the create failed once its metadata device answered"
	dev=/dev/mapper/$name
	msg bitmap add b1 || fail "bitmap add on the device created last"
}

# areas_fail NAME, areas_work NAME: the linear metadata device NAME fails
# past its two superblock copies (16 KiB), or works again.
areas_fail() {
	dmsetup suspend "$1"
	printf '0 32 linear %s 0\n32 2016 error\n' "$mloop" | dmsetup load "$1"
	dmsetup resume "$1"
}

areas_work() {
	dmsetup suspend "$1"
	dmsetup load "$1" --table "0 2048 linear $mloop 0"
	dmsetup resume "$1"
}

# create_on METADEV: (re)creates $name over $dloop with METADEV.
create_on() {
	dm_create "$name" "0 $((SIZE / 512)) cbt $dloop 2 metadata $1"
}

# The metadata device starts failing past its superblocks (a bad area):
# the message that meets the error answers EIO, writes keep flowing, the
# bitmaps say they are inconsistent and so does the status line; a full
# backup starts a new chain; later
# messages work in memory; and the last superblock written records the
# bitmaps as inconsistent, so they load so when the device works again.
test_io_error() {
	local mname
	make_tmpdir dir
	truncate -s "$SIZE" "$dir/data"
	truncate -s $((1 << 20)) "$dir/meta"
	make_loop dloop "$dir/data"
	make_loop mloop "$dir/meta"
	mname=$(dm_name meta)
	dm_create "$mname" "0 2048 linear $mloop 0"
	name=$(dm_name ioerr)
	dev=/dev/mapper/$name
	create_on "/dev/mapper/$mname"
	msg bitmap add b0
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full.qcow2" >/dev/null || fail "full backup"
	qio "$dev" "write -P 0x11 0 4k"
	# Both superblock copies (16 KiB) still work, the areas fail.
	areas_fail "$mname"
	qio "$dev" "write -P 0x22 1M 4k" "read -P 0x22 1M 4k"
	expect_eq "metadata state" "$(status_field 8)" failed
	expect_eq "inconsistent" "$(field b0 inconsistent)" 1
	expect_eq "count" "$(field b0 count)" $((2 * 65536))
	kernel_said "metadata write failed"
	# The next incremental refuses: the bitmap may have missed writes.
	if cbtctl backup --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc.qcow2,backing=$dir/full.qcow2" >"$dir/out" 2>&1; then
		fail "an incremental through a bitmap whose metadata failed was taken"
	fi
	grep -q inconsistent "$dir/out" || fail "the refusal does not say why: $(cat "$dir/out")"
	# What the bitmap missed is before a freeze: the frozen copy keeps it
	# (an abort gives it back), the successor is complete, so a full
	# backup starts a chain that holds while the device stays.
	msg bitmap freeze b0 t1
	expect_eq "inconsistent while frozen" "$(field b0 inconsistent)" 1
	msg bitmap abort b0 t1
	expect_eq "inconsistent after an abort" "$(field b0 inconsistent)" 1
	cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full2.qcow2" >/dev/null ||
		fail "a full backup after the failure"
	expect_eq "inconsistent after a full backup" "$(field b0 inconsistent)" 0
	qio "$dev" "write -P 0x33 2M 4k"
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc2.qcow2,backing=$dir/full2.qcow2" >/dev/null ||
		fail "the incremental on the full backup after the failure"
	chain_matches "$dir/inc2.qcow2" "$dev"
	# From now on: add refused, the rest in memory.
	if msg bitmap add b1 2>/dev/null; then
		fail "add on a failed metadata device answered success"
	fi
	msg bitmap info b1 >/dev/null 2>&1 && fail "a refused add left bitmap b1"
	msg bitmap disable b0 || fail "disable after the failure"
	expect_eq "recording after disable" "$(field b0 recording)" 0
	msg bitmap enable b0 || fail "enable after the failure"
	msg bitmap clear b0 || fail "clear after the failure"
	expect_eq "count after clear" "$(field b0 count)" 0
	expect_eq "inconsistent after clear" "$(field b0 inconsistent)" 0
	# The device works again at the next create: b0 comes back
	# inconsistent, from the last superblock written.
	gone
	areas_work "$mname"
	create_on "/dev/mapper/$mname" || { fail "create after the metadata device works again"; return; }
	expect_eq "loaded inconsistent" "$(field b0 inconsistent)" 1
	expect_eq "metadata state after the create" "$(status_field 8)" ok
	# A clear meets the error: it answers EIO (its change made in memory).
	msg bitmap clear b0
	areas_fail "$mname"
	if msg bitmap clear b0 2>/dev/null; then
		fail "a clear whose area write failed answered success"
	fi
	expect_eq "metadata state after the failed clear" "$(status_field 8)" failed
	expect_eq "count after the failed clear" "$(field b0 count)" 0
	expect_eq "inconsistent after the failed clear" "$(field b0 inconsistent)" 1
}

# Writes to chunks already dirty on the metadata device do not wait; the
# first write to a clean chunk writes the metadata device first.
test_first_writes() {
	local r1 r2
	setup first
	msg bitmap add b0
	r1=$(awk '{ print $5 }' "/sys/block/${mloop#/dev/}/stat")
	qio "$dev" "write -P 0x11 0 4k"
	r2=$(awk '{ print $5 }' "/sys/block/${mloop#/dev/}/stat")
	[ "$r2" -gt "$r1" ] || fail "a first write did not write the metadata device"
	qio "$dev" "write -P 0x22 4k 4k" "write -P 0x33 8k 4k"
	r1=$(awk '{ print $5 }' "/sys/block/${mloop#/dev/}/stat")
	expect_eq "metadata writes for writes to a dirty chunk" "$r1" "$r2"
}

# A point-in-time backup of a persistent device: 1 MiB writes over every
# chunk while the copy is held are split by the snapshot and wait for the
# metadata device too; the image is the device before them, and after a
# remove and a create the next incremental is the device after them.
test_point_in_time() {
	local pid rc
	setup pit
	msg bitmap add b0
	qio "$dev" "write -P 0x5a 0 $SIZE"
	dd if="$dev" of="$dir/before.raw" bs=1M iflag=direct status=none
	head -c $SIZE /dev/urandom >"$dir/new.raw"
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync=full --bitmap=b0 --cbw-memory=32M \
		"$dev=$dir/full.qcow2" >"$dir/out" 2>&1 &
	pid=$!
	wait_stopped $pid "phase snapshot"
	dd if="$dir/new.raw" of="$dev" bs=1M oflag=direct status=none || fail "overwrite"
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "backup exit status ($(cat "$dir/out"))" "$rc" 0
	chain_matches "$dir/full.qcow2" "$dir/before.raw"
	cmp -s "$dev" "$dir/new.raw" || fail "the device does not hold what was written"
	gone
	create || return 1
	cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,backing=$dir/full.qcow2" \
		>/dev/null || fail "incremental"
	chain_matches "$dir/inc.qcow2" "$dev"
}

run_test "bitmaps survive a remove and a create" test_persist
run_test "commit and clear are durable; frozen comes back as its union" test_commit_clear
run_test "resize grows the bitmaps on the metadata device" test_resize
run_test "a growth without room on the metadata device is refused, then taken once it grew" test_resize_no_room
run_test "refusals change nothing" test_refusals
run_test "one live device per metadata device (a rename, then a create)" test_shared_meta
run_test "a metadata device that does not answer stalls its own create only" test_stuck_meta
run_test "a failing metadata device: writes go on, bitmaps inconsistent, also when loaded again" test_io_error
run_test "only first writes to a chunk write the metadata device" test_first_writes
run_test "a point-in-time backup of a persistent device under 1 MiB writes" test_point_in_time
finish
