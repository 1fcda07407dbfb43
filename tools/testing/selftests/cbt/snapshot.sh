#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Point-in-time backups through copy-before-write snapshots: images that
# hold the devices as they were at the instant although every chunk of
# both was overwritten while the controller was held after it (full and
# incremental); a store that fills breaks the snapshot and fails the backup
# cleanly, every write on the device and every dirty bit kept; the copy
# releases what it has written, and takes first what fills the store; the
# freeze hook; --no-snapshot; status; a snapshot whose device loses its
# last cbt table stops then, though a netlink dump holds the device.
# (transaction.sh kills the controller with a snapshot prepared, started
# and viewed.)
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl fio
plan 14

SIZE=$((16 << 20))
export CBT_RUN_DIR=/tmp/cbtctl-run.$$
_tmp_dirs+=("$CBT_RUN_DIR")

# nothing_left DEV...: no view, no snapshot, no busy bitmap, no journal, no temporary.
nothing_left() {
	local d left
	expect_eq "views left" "$(views)" 0
	for d in "$@"; do
		expect_eq "$d snapshot" "$(snap_state "$d")" none
		expect_eq "$d busy" "$(bitmap_field "$d" b0 busy)" false
		active "${d#/dev/mapper/}" || fail "$d left suspended"
	done
	left=$(journals)
	[ -z "$left" ] || fail "journals left behind: $left"
	left=$(tmp_files "$dir")
	[ -z "$left" ] || fail "temporaries left behind: $left"
}

# devs TAG 1|2: in a new $dir, d0 (and d1) with patterns and bitmap b0
# each, and one full backup of them: full0.qcow2 (full1.qcow2).
devs() {
	local jobs
	make_tmpdir dir
	pattern_dev d0 "$1-0" 0x41
	cbtctl bitmap add "$d0" b0 || fail "bitmap add"
	jobs=("$d0=$dir/full0.qcow2")
	if [ "$2" = 2 ]; then
		pattern_dev d1 "$1-1" 0x42
		cbtctl bitmap add "$d1" b0 || fail "bitmap add"
		jobs+=("$d1=$dir/full1.qcow2")
	fi
	cbtctl backup --sync=full --bitmap=b0 "${jobs[@]}" >/dev/null || fail "full backup"
}

# overwrite DEV FILE: writes FILE over the start of DEV with O_DIRECT; fails if a write does.
overwrite() {
	dd if="$2" of="$1" bs=1M oflag=direct status=none || fail "a write to $1 failed"
}

# point_in_time full|incremental [memory|store]: the backup is held after
# its views exist, every chunk of both devices is overwritten, and it goes
# on: the images are the devices before the overwrite; the next
# incremental, the devices after. The snapshots keep what they preserve in
# 16 MiB of memory each, or on a store device each (--cbw-store).
point_in_time() {
	local dir d0 d1 pid w0 w1 t0 t1 rc s0 s1 store=(--cbw-memory=16M)
	devs "pit-$1-${2:-memory}" 2
	if [ "${2:-memory}" = store ]; then
		truncate -s $SIZE "$dir/s0.raw" "$dir/s1.raw"
		make_loop s0 "$dir/s0.raw" || fail "store loop"
		make_loop s1 "$dir/s1.raw" || fail "store loop"
		store=(--cbw-store="$s0" --cbw-store="$s1")
	fi
	t0="$dir/t0.qcow2" t1="$dir/t1.qcow2"
	if [ "$1" = incremental ]; then
		qio "$d0" "write -P 0x51 0 512" "write -P 0x52 5M 192k"
		qio "$d1" "write -P 0x53 9M 64k"
		t0="$t0,backing=$dir/full0.qcow2" t1="$t1,backing=$dir/full1.qcow2"
	fi
	dd if="$d0" of="$dir/before0.raw" bs=1M iflag=direct status=none
	dd if="$d1" of="$dir/before1.raw" bs=1M iflag=direct status=none
	head -c $SIZE /dev/urandom >"$dir/new0.raw"
	head -c $SIZE /dev/urandom >"$dir/new1.raw"
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync="$1" --bitmap=b0 "${store[@]}" \
		"$d0=$t0" "$d1=$t1" >"$dir/out" 2>&1 &
	pid=$!
	wait_stopped $pid "phase snapshot"
	expect_eq "views while held" "$(views)" 2
	expect_eq "d0 snapshot while held" "$(snap_state "$d0")" running
	if [ "${2:-memory}" = store ]; then
		[[ $(snap_info "$d1") == *" store=7:"* ]] ||
			fail "d1's snapshot is not on its store device"
	fi
	overwrite "$d0" "$dir/new0.raw" & w0=$!
	overwrite "$d1" "$dir/new1.raw" & w1=$!
	wait $w0 || fail "overwriting d0"
	wait $w1 || fail "overwriting d1"
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "backup exit status ($(<"$dir/out"))" "$rc" 0
	chain_matches "$dir/t0.qcow2" "$dir/before0.raw"
	chain_matches "$dir/t1.qcow2" "$dir/before1.raw"
	cmp -s "$d0" "$dir/new0.raw" || fail "d0 does not hold what was written"
	cmp -s "$d1" "$dir/new1.raw" || fail "d1 does not hold what was written"
	nothing_left "$d0" "$d1"
	cbtctl backup --sync=incremental --bitmap=b0 "$d0=$dir/n0.qcow2,backing=$dir/t0.qcow2" \
		"$d1=$dir/n1.qcow2,backing=$dir/t1.qcow2" >/dev/null || fail "next incremental"
	chain_matches "$dir/n0.qcow2" "$d0"
	chain_matches "$dir/n1.qcow2" "$d1"
}

test_point_in_time_full() { point_in_time full; }
test_point_in_time_incremental() { point_in_time incremental; }
test_point_in_time_store() { point_in_time full store; }

# A store of 128 KiB (32 chunks of 4 KiB), the reader held and 1 MiB of
# needed chunks written: a write finds no space, waits a second, the
# snapshot breaks, every write goes down.
test_store_full() {
	local dir d0 d1 pid rc
	devs full 1
	qio "$d0" "write -P 0x61 0 1M" "write -P 0x62 8M 64k"
	head -c $((1 << 20)) /dev/urandom >"$dir/w.raw"
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync=incremental --bitmap=b0 \
		--cbw-memory=128K --cbw-timeout=1 "$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" \
		>"$dir/out" 2>"$dir/err" &
	pid=$!
	wait_stopped $pid "phase snapshot"
	overwrite "$d0" "$dir/w.raw"
	expect_eq "snapshot after the writes" "$(snap_state "$d0")" broken
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "exit status" "$rc" 1
	has "$dir/err" "snapshot broke" || fail "error: $(cat "$dir/err")"
	cmp -s -n $((1 << 20)) "$d0" "$dir/w.raw" || fail "the writes are not on the device"
	[ ! -e "$dir/inc0.qcow2" ] || fail "a failed backup left its target"
	nothing_left "$d0"
	# Every dirty bit is kept, the one at 8 MiB that no write touched since too.
	expect_eq "count kept" "$(bitmap_field "$d0" b0)" $(((1 << 20) + (64 << 10)))
	cbtctl backup --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" >/dev/null || fail "the re-run"
	chain_matches "$dir/inc0.qcow2" "$d0"
}

# hold_read OFFSET: d0's read at OFFSET waits up to a minute (rule "hold")
# or until let_go.
hold_read() {
	cbtctl inject "$d0" delay event=read offset="$1" length=4096 usecs=60000000 \
		id=hold >/dev/null || fail "inject delay"
}

# held_backup OFFSET ARG...: starts a backup of d0 with bitmap b0, a
# 128 KiB store, a timeout of one second and ARGs, its read at OFFSET held;
# returns once that read is held, the backup's pid in pid.
held_backup() {
	local off=$1
	shift
	hold_read "$off"
	cbtctl backup --bitmap=b0 --cbw-memory=128K --cbw-timeout=1 "$@" >"$dir/out" 2>&1 &
	pid=$!
	wait_held "$d0" $pid "$((off >> 20)) MiB"
}

# let_go PID IMAGE RAW: a suspend and resume of d0 lets the held read go;
# the backup PID then ends well and IMAGE's chain holds RAW.
let_go() {
	dmsetup suspend "${d0#/dev/mapper/}" && dmsetup resume "${d0#/dev/mapper/}" ||
		fail "suspend and resume to let the held read go"
	wait "$1" || fail "backup: $(cat "$dir/out")"
	cbtctl inject "$d0" clear >/dev/null
	chain_matches "$2" "$3"
}

# needed_bytes: the bytes of the chunks d0's snapshot still needs.
needed_bytes() {
	local info needed= chunk=
	info=$(snap_info "$d0")
	[[ $info =~ \ needed=([0-9]*)\  ]] && needed=${BASH_REMATCH[1]}
	[[ $info =~ \ chunk=([0-9]*)\  ]] && chunk=${BASH_REMATCH[1]}
	echo $((needed * chunk))
}

# The copy releases each run it has written: with the read at 8 MiB held,
# the first 8 MiB are no longer needed, and writes there need no store slot
# even with a store of two chunks and a timeout of one second.
test_release() {
	local dir d0 pid info
	devs release 1
	dd if="$d0" of="$dir/before0.raw" bs=1M iflag=direct status=none
	held_backup $((8 << 20)) --sync=full "$d0=$dir/t0.qcow2" || return 1
	# The second half is still needed.
	expect_eq "needed, the copy held at 8 MiB" "$(needed_bytes)" $((8 << 20))
	head -c $((8 << 20)) /dev/urandom >"$dir/w.raw"
	overwrite "$d0" "$dir/w.raw"
	info=$(snap_info "$d0")
	[[ $info == *"state=running "*" waited=0 "* ]] || fail "writes waited: $info"
	let_go $pid "$dir/t0.qcow2" "$dir/before0.raw"
	release_scattered
}

# Every other 64 KiB chunk dirty, the read at 8 MiB held: a request takes
# the runs of 1 MiB of the device, each read on its own, and releases them
# together once written. Every dirty chunk before 8 MiB is then released,
# every one from 8 MiB on still needed (4 MiB of them).
release_scattered() {
	local cmds=() i n pid
	cbtctl backup --sync=incremental --bitmap=b0 "$d0=$dir/i0.qcow2,backing=$dir/t0.qcow2" \
		>/dev/null || fail "incremental"
	for ((i = 0; i < 256; i += 2)); do
		cmds+=("write -P $((0x80 + i % 64)) $((i << 16)) 64k")
	done
	qio "$d0" "${cmds[@]}" || fail "scattered writes"
	dd if="$d0" of="$dir/before1.raw" bs=1M iflag=direct status=none
	held_backup $((8 << 20)) --sync=incremental "$d0=$dir/i1.qcow2,backing=$dir/i0.qcow2" ||
		return 1
	# The requests before the held one may still be being written.
	for ((i = 0; i < 50; i++)); do
		n=$(needed_bytes)
		[ "$n" = $((4 << 20)) ] && break
		nap 0.1
	done
	expect_eq "needed, scattered, the copy held at 8 MiB" "$n" $((4 << 20))
	let_go $pid "$dir/i1.qcow2" "$dir/before1.raw"
}

# scatter DEV FIRST N: 4 KiB writes at 8 MiB + FIRST + i * 256 KiB, i < N.
scatter() {
	local i cmds=()
	for ((i = 0; i < $3; i++)); do
		cmds+=("write -P 0x71 $(((8 << 20) + $2 + i * (256 << 10))) 4k")
	done
	qio "$1" "${cmds[@]}" || fail "scattered writes"
}

# The copy takes first what fills the store. With the copy stopped at the
# instant, 16 scattered 4 KiB writes fill half the 128 KiB store; the copy
# copies their clusters before its first read, so while its read at 4 MiB
# is held the store empties, and 24 more scattered writes fit
# without a wait (without that they would need 160 KiB of store and break
# the snapshot after a second).
test_urgent() {
	local dir d0 pid info i
	devs urgent 1
	dd if="$d0" of="$dir/before0.raw" bs=1M iflag=direct status=none
	hold_read $((4 << 20))
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync=full --bitmap=b0 --cbw-memory=128K \
		--cbw-timeout=1 "$d0=$dir/t0.qcow2" >"$dir/out" 2>&1 &
	pid=$!
	wait_stopped $pid "phase snapshot"
	scatter "$d0" 0 16
	info=$(snap_info "$d0")
	[[ $info == *" used=65536 "* ]] || fail "half the store used: $info"
	kill -CONT $pid
	wait_held "$d0" $pid "4 MiB" || return 1
	# The reads of the urgent clusters may still be in flight beside the
	# held one (8 at once): they are written and released, the copy's
	# order being stuck at 4 MiB.
	for ((i = 0; i < 50; i++)); do
		info=$(snap_info "$d0")
		[[ $info == *" preserved=0 used=0 "* ]] && break
		nap 0.2
	done
	[[ $info == *" preserved=0 used=0 "* ]] || fail "not taken first: $info"
	scatter "$d0" $((128 << 10)) 24
	info=$(snap_info "$d0")
	[[ $info == *"state=running "*" used=98304 "*" waited=0 "* ]] || fail "writes waited: $info"
	let_go $pid "$dir/t0.qcow2" "$dir/before0.raw"
}

# write_hook FILE LOG DEV [FAIL]: a hook logging "ARG STATE BUSY SNAPSHOT"
# of DEV per call; FAIL makes its freeze exit 3.
write_hook() {
	cat >"$1" <<-EOF
	#!/bin/bash
	. "$cbt_selftest_dir/lib.sh"
	echo "\$1 \$(dmsetup info -c --noheadings -o attr "${3#/dev/mapper/}" | cut -c3)" \\
		"\$(bitmap_field "$3" b0 busy) \$(snap_state "$3")" >>"$2"
	[ "\$1" != freeze ] || [ -z "$4" ] || exit 3
	EOF
	chmod +x "$1"
}

# The hook freezes before anything is suspended or frozen, thaws after the
# devices run again with the snapshot started; a failing freeze aborts
# with nothing frozen and is still thawed.
test_freeze_hook() {
	local dir d0 d1 rc
	devs hook 1
	write_hook "$dir/hook" "$dir/log" "$d0"
	qio "$d0" "write -P 0x33 2M 64k"
	cbtctl backup --sync=incremental --bitmap=b0 --freeze-hook="$dir/hook" \
		"$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" >/dev/null || fail "backup with a hook"
	# attr's third letter is s when suspended.
	expect_eq "hook calls" "$(<"$dir/log")" $'freeze - false prepared\nthaw - true running'
	chain_matches "$dir/inc0.qcow2" "$d0"

	write_hook "$dir/bad" "$dir/badlog" "$d0" fail
	qio "$d0" "write -P 0x34 3M 64k"
	cbtctl backup --sync=incremental --bitmap=b0 --freeze-hook="$dir/bad" \
		"$d0=$dir/inc1.qcow2,backing=$dir/inc0.qcow2" >/dev/null 2>"$dir/err" && rc=0 || rc=$?
	expect_eq "exit status after a failed freeze" "$rc" 1
	has "$dir/err" "hook '$dir/bad freeze' exited with status 3" ||
		fail "error: $(cat "$dir/err")"
	expect_eq "hook calls" "$(<"$dir/badlog")" \
		$'freeze - false prepared\nthaw - false prepared'
	[ ! -e "$dir/inc1.qcow2" ] || fail "target left"
	nothing_left "$d0"
	expect_eq "count kept" "$(bitmap_field "$d0" b0)" 65536

	# A thaw that fails: the backup stands, the warning in --json too.
	printf '#!/bin/sh\n[ "$1" != thaw ] || exit 4\n' >"$dir/nothaw"
	chmod +x "$dir/nothaw"
	cbtctl backup --sync=incremental --bitmap=b0 --freeze-hook="$dir/nothaw" --json \
		"$d0=$dir/inc1.qcow2,backing=$dir/inc0.qcow2" >"$dir/out.json" 2>"$dir/err" ||
		fail "backup with a failing thaw: $(cat "$dir/err")"
	grep -q '"warnings": \["hook .*nothaw thaw.* exited with status 4: the guest may still be frozen"\]' \
		"$dir/out.json" || fail "no warning in --json: $(cat "$dir/out.json")"
	has "$dir/err" "the guest may still be frozen" || fail "stderr: $(cat "$dir/err")"
}

# A cbtctl killed between the freeze and the thaw (SIGKILL while the
# devices are suspended): recover resumes the device, then runs the hook's
# thaw, named in the journal; once.
test_hook_recover() {
	local dir d0 d1 pid out
	devs hookrec 1
	write_hook "$dir/hook" "$dir/log" "$d0"
	qio "$d0" "write -P 0x35 2M 64k"
	# A relative hook: recover runs it from the backup's directory.
	( cd "$dir" && CBT_TEST_STOP_AT=suspended exec cbtctl backup --sync=incremental \
		--bitmap=b0 --freeze-hook=./hook "$d0=inc0.qcow2,backing=full0.qcow2" \
		>/dev/null 2>&1 ) &
	pid=$!
	wait_stopped $pid "phase suspended"
	kill -9 $pid
	wait $pid 2>/dev/null || true
	expect_eq "hook calls before recover" "$(<"$dir/log")" "freeze - false prepared"
	out=$(cd / && cbtctl recover 2>&1) || fail "recover: $out"
	[[ $out == *"1 devices resumed, 1 freeze hooks thawed,"* ]] || fail "recover said: $out"
	[[ $(tail -n 1 "$dir/log") == "thaw - "* ]] ||
		fail "not thawed once the device ran: $(<"$dir/log")"
	out=$(cbtctl recover 2>&1) || fail "second recover: $out"
	[[ $out == *" 0 freeze hooks thawed,"* ]] || fail "a second recover thawed again: $out"
	expect_eq "hook calls" "$(grep -c . "$dir/log")" 2
	# A dead run of another boot froze nothing of this one: not thawed.
	printf 'hookboot 00000000-0000-0000-0000-000000000000\nhookcwd /\nhook %s\n' \
		"$dir/hook" >"$CBT_RUN_DIR/cbtctl.999999.1"
	out=$(cbtctl recover 2>&1) || fail "recover of another boot's journal: $out"
	[[ $out == *"froze in another boot"*" 0 freeze hooks thawed,"* ]] ||
		fail "another boot's hook: $out"
	expect_eq "hook calls" "$(grep -c . "$dir/log")" 2
	nothing_left "$d0"
	expect_eq "count kept" "$(bitmap_field "$d0" b0)" 65536
}

# --no-snapshot reads the live devices: no snapshot, no view, the same images.
test_no_snapshot() {
	local dir d0 d1 pid
	devs nosnap 1
	qio "$d0" "write -P 0x21 4M 64k"
	CBT_TEST_STOP_AT=copy cbtctl backup --sync=incremental --bitmap=b0 --no-snapshot \
		"$d0=$dir/inc0.qcow2,backing=$dir/full0.qcow2" >/dev/null &
	pid=$!
	wait_stopped $pid "phase copy"
	expect_eq "views" "$(views)" 0
	expect_eq "snapshot" "$(snap_state "$d0")" none
	kill -CONT $pid
	wait $pid || fail "incremental --no-snapshot"
	chain_matches "$dir/inc0.qcow2" "$d0"
	cbtctl backup --sync=full --no-snapshot "$d0=$dir/f0.qcow2" >/dev/null ||
		fail "full --no-snapshot without a bitmap"
	chain_matches "$dir/f0.qcow2" "$d0"
}

# cbtctl status, text and JSON, of a device with a snapshot held running and without.
test_status() {
	local dir d0 d1 pid out
	devs status 1
	expect_eq "idle" "$(cbtctl status "$d0" | grep '^snapshot:')" "snapshot: none"
	cbtctl status "$d0" --json | grep -q '"snapshot": null}$' || fail "idle JSON"
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync=full --bitmap=b0 "$d0=$dir/t0.qcow2" \
		>/dev/null &
	pid=$!
	wait_stopped $pid "phase snapshot"
	out=$(cbtctl status "$d0" | grep '^snapshot:')
	[[ $out == "snapshot: cbtctl.$pid."*", running, 4096 chunks of 4096 bytes needed, store 0 of 67108864 bytes used, 0 writes waited, 1 views" ]] ||
		fail "status while running: $out"
	out=$(cbtctl status "$d0" --json | sed 's/.*"snapshot": //')
	expect_eq "JSON state" "$(json_field state <<<"$out")" running
	expect_eq "JSON needed" "$(json_field needed <<<"$out")" 4096
	expect_eq "JSON limit" "$(json_field limit <<<"$out")" 67108864
	kill -CONT $pid
	wait $pid || fail "the backup failed"
	expect_eq "after" "$(cbtctl status "$d0" | grep '^snapshot:')" "snapshot: none"
}

# A snapshot viewed, a netlink extent dump of the device held open (cbtctl
# extents blocked on a full pipe), then the device reloaded without its cbt
# target: writes there are no longer copied, so the snapshot must stop at
# once and the view fail, never read what was written after the instant.
test_dump_held() {
	local dir loop name dev view pid n=0
	make_tmpdir dir
	cbt_over_file "$dir/disk" $((64 << 20)) dumpheld
	qio "$dev" "write -P 0x41 0 64M"
	dmsetup message "$name" 0 bitmap add b0 granularity=4096
	# Every other 4 KiB chunk dirty: 8192 extents, more text than a pipe holds.
	fio --name=holes --filename="$dev" --direct=1 --rw=write:4k --bs=4k --eta=never \
		--output=/dev/null || fail "fio"
	mkfifo "$dir/fifo"
	exec 3<>"$dir/fifo"
	cbtctl extents "$dev" b0 >"$dir/fifo" &
	pid=$!
	# Blocked once the pipe is full (64 KiB): the dump is half read. Where
	# the kernel does not name the wait, alive after 10 s is as good.
	until grep -qs pipe_write "/proc/$pid/stack" "/proc/$pid/wchan"; do
		n=$((n + 1))
		[ $n -lt 200 ] || break
		nap 0.05
	done
	kill -0 $pid || fail "cbtctl extents ended: the dump was not held"
	dmsetup message "$name" 0 snapshot prepare t1 memory=$((64 << 20))
	dmsetup suspend "$name"
	dmsetup message "$name" 0 snapshot start t1
	dmsetup resume "$name"
	view=$(dm_name dumpheld-view)
	dm_create "$view" "0 $((64 << 11)) cbt-snapshot $dev t1"
	dd if="$dev" of="$dir/instant" bs=64k count=1 iflag=direct status=none
	dd if="/dev/mapper/$view" of="$dir/v" bs=64k count=1 iflag=direct status=none ||
		fail "the view cannot be read"
	cmp -s "$dir/instant" "$dir/v" || fail "the view differs before the reload"
	dmsetup reload "$name" --table "0 $((64 << 11)) linear $loop 0"
	dmsetup resume "$name"
	qio "$dev" "write -P 0x43 0 64k"
	if dd if="/dev/mapper/$view" of="$dir/v" bs=64k count=1 iflag=direct status=none \
		2>/dev/null; then
		fail "the view still reads: $(od -An -tx1 -N4 "$dir/v")"
	fi
	kill $pid 2>/dev/null
	exec 3>&-
	wait $pid 2>/dev/null || true
}

# raw_loop: a new $dir and a loop device (in loop) over a $SIZE file in it
# whose first MiB is 0x41.
raw_loop() {
	make_tmpdir dir
	truncate -s $SIZE "$dir/d.raw"
	make_loop loop "$dir/d.raw"
	qio "$loop" "write -P 0x41 0 1M"
}

# viewed TAG "TABLE ARGS" PREPARE_ARGS...: a cbt device over TABLE ARGS with
# a running snapshot t1 (prepared with PREPARE_ARGS) and a view of it;
# sets name, dev and view.
viewed() {
	local tag=$1
	name=$(dm_name "$tag")
	dm_create "$name" "0 $((SIZE / 512)) cbt $2" || return 1
	dev=/dev/mapper/$name
	shift 2
	dmsetup message "$name" 0 snapshot prepare t1 "$@" || return 1
	dmsetup suspend "$name"
	dmsetup message "$name" 0 snapshot start t1 || return 1
	dmsetup resume "$name"
	view=$(dm_name "$tag-view")
	dm_create "$view" "0 $((SIZE / 512)) cbt-snapshot $dev t1"
}

# snap_wait DEV KEY=VALUE WHY: waits (5 s at most, then fails with WHY)
# until DEV's "snapshot info" says KEY=VALUE.
snap_wait() {
	local n
	for ((n = 0; n < 100; n++)); do
		[[ $(snap_info "$1") == *" $2 "* ]] && return 0
		nap 0.05
	done
	fail "$3: $(snap_info "$1")"
}

# A view discard of a chunk whose copy is in flight (the copy's read held
# 4 s by dm-delay under the cbt device), a view read waiting for that copy,
# then a second write to the chunk: the write waits for the copy, and the
# read returns the chunk as it was at the instant. (Before, the discard let
# the write go down at once, the copy read it, and the view read returned
# it with success.)
test_release_in_flight() {
	local dir loop slow name dev view rc
	raw_loop
	slow=$(dm_name slow)
	dm_create "$slow" "0 $((SIZE / 512)) delay $loop 0 4000 $loop 0 0" ||
		skip_test "dm-delay is not installed"
	viewed inflight "/dev/mapper/$slow" chunk=65536
	head -c 4096 /dev/zero | tr '\0' X >"$dir/x"
	head -c 4096 /dev/zero | tr '\0' B >"$dir/b"
	# The first write takes a slot for chunk 0; its copy waits in dm-delay.
	dd if="$dir/x" of="$dev" bs=4k oflag=direct status=none &
	snap_wait "$dev" used=65536 "no slot taken"
	dd if="/dev/mapper/$view" of="$dir/read" bs=64k count=1 iflag=direct status=none &
	rc=$!
	nap 1
	# -f: no probe for signatures, whose reads would each wait in dm-delay.
	blkdiscard -f -o 0 -l 65536 "/dev/mapper/$view" 2>/dev/null
	dd if="$dir/b" of="$dev" bs=4k seek=1 oflag=direct status=none
	wait $rc || fail "the view read failed"
	wait
	head -c 65536 /dev/zero | tr '\0' A | cmp - "$dir/read" ||
		fail "the view read returned data written after the instant"
	cmp -n 8192 <(cat "$dir/x" "$dir/b") "$dev" || fail "the device lacks the writes"
}

# A suspend of the cbt device (no injection rule on it) while a view read
# of the device below (held 4 s by a delay rule on a cbt device under it)
# holds back a write to a chunk whose copy is done: the suspend waits, and
# the read returns the instant's data. (Before, every suspend failed such
# reads with EIO, as it must only where views read through the cbt device.)
test_suspend_read() {
	local dir loop low name dev view rd wr
	raw_loop
	low=$(dm_name low)
	dm_create "$low" "0 $((SIZE / 512)) cbt $loop"
	cbtctl inject "/dev/mapper/$low" delay event=read offset=0 length=4096 usecs=4000000 \
		>/dev/null || fail "inject"
	viewed susp "/dev/mapper/$low" chunk=65536
	head -c 4096 /dev/zero | tr '\0' B >"$dir/b"
	# The read covers chunks 0-15 and waits 4 s below; the write to chunk
	# 5 is copied at once, then waits for the read.
	dd if="/dev/mapper/$view" of="$dir/read" bs=1M count=1 iflag=direct status=none &
	rd=$!
	nap 0.5
	dd if="$dir/b" of="$dev" bs=4k seek=80 oflag=direct status=none &
	wr=$!
	nap 0.5
	dmsetup suspend "$name"
	dmsetup resume "$name"
	wait $rd || fail "the view read failed"
	wait $wr || fail "the write failed"
	head -c $((1 << 20)) /dev/zero | tr '\0' A | cmp - "$dir/read" ||
		fail "the view read does not hold the instant"
	expect_eq "snapshot" "$(snap_info "$dev" | cut -d' ' -f2)" state=running
}

# A store of two chunks, both taken, a third write waiting for space, and
# a "bitmap add" on the device (with a metadata device), which waits for
# the writes mapped before it, that one included: the reader still gets
# "snapshot info" and "preserved" answered and a second view created, and
# its release lets the write and then the add go. (Before, those took the
# device's lock, which the add holds: the reader waited for the write that
# waited for it, until the snapshot's timeout broke the snapshot.)
test_drain_reader() {
	local dir loop mloop name dev view w add info
	raw_loop
	truncate -s 1M "$dir/m.raw"
	make_loop mloop "$dir/m.raw"
	viewed drain "$loop 2 metadata $mloop" memory=131072 chunk=65536 timeout=120
	head -c 4096 /dev/zero | tr '\0' W >"$dir/w"
	dd if="$dir/w" of="$dev" bs=4k seek=0 oflag=direct status=none
	dd if="$dir/w" of="$dev" bs=4k seek=16 oflag=direct status=none
	# The third chunk's write waits for space.
	dd if="$dir/w" of="$dev" bs=4k seek=32 oflag=direct status=none &
	w=$!
	snap_wait "$dev" waited=1 "no write waits"
	dmsetup message "$name" 0 bitmap add b1 &
	add=$!
	nap 1
	info=$(timeout 10 dmsetup message "$name" 0 snapshot info) ||
		fail "snapshot info did not answer while the add waits"
	[[ $info == *" state=running "* ]] || fail "info: $info"
	expect_eq "preserved" "$(timeout 10 dmsetup message "$name" 0 snapshot preserved)" \
		"0+131072"
	dm_create "$(dm_name drain-view2)" "0 $((SIZE / 512)) cbt-snapshot $dev t1" ||
		fail "no second view while the add waits"
	# The reader releases the first chunk: the write gets its slot.
	blkdiscard -f -o 0 -l 65536 "/dev/mapper/$view" 2>/dev/null
	wait $w || fail "the held write failed"
	wait $add || fail "bitmap add"
	dmsetup message "$name" 0 bitmap info b1 >/dev/null || fail "no bitmap b1"
	[[ $(snap_info "$dev") == *" state=running "* ]] || fail "snapshot: $(snap_info "$dev")"
}

run_test "full backup at the instant, every chunk overwritten meanwhile" test_point_in_time_full
run_test "incremental at the instant, every chunk overwritten meanwhile" \
	test_point_in_time_incremental
run_test "full backup at the instant through store devices (--cbw-store)" \
	test_point_in_time_store
run_test "a full store breaks the snapshot: clean failure, writes and bits kept" test_store_full
run_test "the copy releases what it has written: later writes need no store" test_release
run_test "the copy takes first what fills the store" test_urgent
run_test "freeze hook: freeze then thaw, a failing freeze aborts cleanly" test_freeze_hook
run_test "a run killed while frozen: recover resumes, then thaws the guest" test_hook_recover
run_test "--no-snapshot reads the live devices" test_no_snapshot
run_test "status shows a snapshot while it runs, none after" test_status
run_test "the last cbt table gone, a netlink dump held: the snapshot stops" test_dump_held
run_test "a discard while the chunk's copy is in flight: the view keeps the instant" \
	test_release_in_flight
run_test "a suspend while a view read holds a write back: the read succeeds" test_suspend_read
run_test "a bitmap message waiting for a write held for space: the reader goes on" \
	test_drain_reader
finish
