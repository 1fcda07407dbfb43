#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# cbtctl restore: a chain of a full backup and incrementals (with zeroed
# and discarded ranges) written back onto a device that held other data
# reads as the chain (qemu-img compare); through the cbt device the
# restored chunks are dirty, so the next incremental's chain equals the
# device; below the cbt device the restore is refused, and with --force
# marks the bitmaps inconsistent first, so the next incremental refuses.
# Refusals (an image larger than the device, a device in use or open, a
# chain of another disk, a standalone incremental, not a qcow2, not a block
# device) exit 1 with a message and leave the device as it was. A device of
# 4 KiB sectors keeps its bytes after an image's end inside its last one.
# A quick rollback (--changed-only) to the second of four backups writes
# exactly what the newer images and the bitmap hold, reads as that instant
# and is in the next incremental; refused when the bitmap was last
# committed at another image. cbtctl verify passes a chain of real
# backups (one compressed) and names the image and guest offset of a byte
# changed in the middle image's data; a mode=existing image has no digests.
# cbtctl prune cuts a chain of six real backups to three, each kept image
# as the device was at its backup and the chain verified; SIGKILL at each
# step of a fold leaves the chain reading as before, and recover finishes
# the fold.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img qemu-nbd cbtctl
plan 6

SIZE=$((16 << 20))

# setup: cbt device A (bitmap b0) with a full backup and two incrementals,
# $dir/at1.raw the device when inc1 was taken; sets dir, dev, loop.
setup() {
	local name
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE a
	qio "$dev" "write -P 0x41 0 4M" "write -P 0x42 12M 2M"
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/full.qcow2" || fail "full backup"
	# Zeroes over data, a discard, new data: the incremental holds zero clusters.
	qio "$dev" "write -z 1M 1M" "write -P 0x43 6M 192k" "write -P 0x44 $((SIZE - 4096)) 4k"
	blkdiscard -f -o $((12 << 20)) -l $((1 << 20)) "$dev" 2>/dev/null || fail "blkdiscard"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/inc1.qcow2,backing=full.qcow2" ||
		fail "incremental 1"
	dd if="$dev" of="$dir/at1.raw" bs=1M iflag=direct status=none
	qio "$dev" "write -P 0x45 0 8M"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/inc2.qcow2,backing=inc1.qcow2" ||
		fail "incremental 2"
}

# other VAR TAG: a loop device over $dir/TAG.raw of $SIZE bytes of 0xee.
other() {
	local d
	truncate -s $SIZE "$dir/$2.raw"
	qio "$dir/$2.raw" "write -P 0xee 0 $SIZE"
	make_loop d "$dir/$2.raw"
	printf -v "$1" '%s' "$d"
}

# unchanged FILE SUM: FILE's sha256 is SUM.
unchanged() {
	expect_eq "$1 after the refusal" "$(sha256sum <"$1")" "$2"
}

test_restore() {
	local dir dev loop blank out t4k
	setup
	# Onto a plain device holding other data: every byte as the chain has it.
	other blank blank
	cbtctl restore --json --parallel=2 "$dir/inc1.qcow2" "$blank" >"$dir/out" ||
		fail "restore onto a plain device: $(cat "$dir/out")"
	chain_matches "$dir/inc1.qcow2" "$blank"
	cmp "$dir/at1.raw" "$dir/blank.raw" || fail "the restored device differs from the instant"
	expect_eq "bytes restored" $(($(json_field data_bytes <"$dir/out") +
		$(json_field zero_bytes <"$dir/out"))) $SIZE
	# Data: 4M + 2M of the full, 1M zeroed and 1M discarded out of them, 192k and 4k.
	expect_eq "data bytes" "$(json_field data_bytes <"$dir/out")" $(((4 + 2 - 2) * 1048576 + 65536 * 4))
	# 4 KiB sectors, and an image whose disk ends inside the last one: the
	# device's bytes after the image's end stay as they were.
	qemu-img create -q -f qcow2 "$dir/tail.qcow2" $((SIZE + 512))
	qio "$dir/tail.qcow2" "write -P 0x77 $((SIZE - 4096)) 4608"
	truncate -s $((SIZE + 4096)) "$dir/t4k.raw"
	qio "$dir/t4k.raw" "write -P 0xee 0 $((SIZE + 4096))"
	t4k=$(losetup --find --show --sector-size 4096 "$dir/t4k.raw") || fail "losetup -b 4096"
	_loop_devs+=("$t4k")
	cbtctl restore -q --parallel=2 "$dir/tail.qcow2" "$t4k" || fail "restore onto 4K sectors"
	qio "$dir/t4k.raw" "read -P 0 0 $((SIZE - 4096))" "read -P 0x77 $((SIZE - 4096)) 4608" \
		"read -P 0xee $((SIZE + 512)) 3584"
	# Through the cbt device, now at inc2 and written since: back to inc1.
	qio "$dev" "write -P 0x46 2M 2M"
	cbtctl restore -q "$dir/inc1.qcow2" "$dev" || fail "restore through the cbt device"
	chain_matches "$dir/inc1.qcow2" "$dev"
	# What it wrote is dirty: the next incremental on inc2 reads as the device.
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/inc3.qcow2,backing=inc2.qcow2" ||
		fail "the incremental after the restore"
	chain_matches "$dir/inc3.qcow2" "$dev"
}

test_below() {
	local dir dev loop sum
	setup
	sum=$(sha256sum <"$dir/a.raw")
	cbtctl restore "$dir/inc1.qcow2" "$loop" 2>"$dir/err" && fail "restore below a cbt device"
	has "$dir/err" "below the cbt device" || fail "the refusal: $(cat "$dir/err")"
	unchanged "$dir/a.raw" "$sum"
	expect_eq "b0 inconsistent after the refusal" "$(bitmap_field "$dev" b0 inconsistent)" false
	cbtctl restore --force --parallel=2 "$dir/inc1.qcow2" "$loop" >"$dir/out" || fail "restore --force below"
	has "$dir/out" "next backup must be full" || fail "the warning: $(cat "$dir/out")"
	cmp "$dir/at1.raw" "$dir/a.raw" || fail "the restored device differs from the instant"
	expect_eq "b0 inconsistent" "$(bitmap_field "$dev" b0 inconsistent)" true
	expect_eq "b0 recording" "$(bitmap_field "$dev" b0 recording)" true
	# The writes the bitmap missed: no incremental may follow.
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/inc3.qcow2,backing=inc2.qcow2" \
		2>"$dir/err" && fail "an incremental after a restore below the cbt device"
	[ -e "$dir/inc3.qcow2" ] && fail "the refused incremental left an image"
	cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/new.qcow2" || fail "the full backup"
	chain_matches "$dir/new.qcow2" "$dev"
}

test_refusals() {
	local dir dev loop name other_dev sum blank lin
	setup
	other blank blank
	sum=$(sha256sum <"$dir/blank.raw")
	# An image larger than the device.
	qemu-img create -q -f qcow2 "$dir/big.qcow2" $((SIZE + 65536))
	cbtctl restore "$dir/big.qcow2" "$blank" 2>"$dir/err" && fail "a larger image restored"
	has "$dir/err" "is larger than" || fail "the refusal: $(cat "$dir/err")"
	# Not a qcow2; not a block device.
	cbtctl restore "$dir/at1.raw" "$blank" 2>"$dir/err" && fail "a raw image restored"
	has "$dir/err" "qcow2" || fail "the refusal: $(cat "$dir/err")"
	cbtctl restore "$dir/inc1.qcow2" "$dir/at1.raw" 2>"$dir/err" && fail "restored into a file"
	has "$dir/err" "not a block device" || fail "the refusal: $(cat "$dir/err")"
	# A standalone incremental (no backing file: only what changed) restores nothing whole.
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/alone.qcow2" || fail "standalone"
	cbtctl restore --force "$dir/alone.qcow2" "$blank" 2>"$dir/err" &&
		fail "a standalone incremental restored"
	has "$dir/err" "standalone incremental" || fail "the refusal: $(cat "$dir/err")"
	# Held by a device above it (O_EXCL fails).
	lin=$(dm_name lin)
	dm_create "$lin" "0 $((SIZE / 512)) linear $blank 0"
	cbtctl restore "$dir/inc1.qcow2" "$blank" 2>"$dir/err" && fail "a held device restored"
	has "$dir/err" "in use" || fail "the refusal: $(cat "$dir/err")"
	dmsetup remove "$lin"
	unchanged "$dir/blank.raw" "$sum"
	# A cbt device open (a VM's disk) or tracking another disk.
	cbt_over_file "$dir/b.raw" $SIZE b
	cbtctl bitmap add "$dev" own || fail "bitmap add"
	qio "$dev" "write -P 0x51 0 1M"
	sum=$(sha256sum <"$dir/b.raw")
	exec 3<"$dev"
	cbtctl restore "$dir/inc1.qcow2" "$dev" 2>"$dir/err" && fail "an open device restored"
	exec 3<&-
	has "$dir/err" "is open" || fail "the refusal: $(cat "$dir/err")"
	cbtctl restore "$dir/inc1.qcow2" "$dev" 2>"$dir/err" && fail "another disk's chain restored"
	has "$dir/err" "not of the disk" || fail "the refusal: $(cat "$dir/err")"
	unchanged "$dir/b.raw" "$sum"
	expect_eq "the other disk's bitmap" "$(bitmap_field "$dev" own inconsistent)" false
	cbtctl restore -q --force --parallel=2 "$dir/inc1.qcow2" "$dev" || fail "restore --force"
	cmp "$dir/at1.raw" "$dir/b.raw" || fail "the forced restore differs from the instant"
}

test_rollback() {
	local dir dev loop changed
	setup
	qio "$dev" "write -P 0x61 9M 128k"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/inc3.qcow2,backing=inc2.qcow2" ||
		fail "incremental 3"
	# Since: writes the bitmap holds, one inside what inc2 holds.
	qio "$dev" "write -P 0x62 10M 192k" "write -P 0x63 3M 64k"
	cbtctl restore --json --changed-only --bitmap=b0 --newest="$dir/inc3.qcow2" --parallel=2 \
		"$dir/inc1.qcow2" "$dev" >"$dir/out" || fail "the rollback: $(cat "$dir/out")"
	cmp "$dir/at1.raw" "$dir/a.raw" || fail "the rolled back device differs from inc1's instant"
	# What inc2 and inc3 hold and what the bitmap recorded since, nothing else.
	changed=$(((8 << 20) + (128 << 10) + (192 << 10)))
	expect_eq "changed bytes" "$(json_field changed_bytes <"$dir/out")" $changed
	expect_eq "bytes written" $(($(json_field data_bytes <"$dir/out") +
		$(json_field zero_bytes <"$dir/out"))) $changed
	# Written through the cbt device: the next incremental on inc3 holds it.
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/inc4.qcow2,backing=inc3.qcow2" ||
		fail "the incremental after the rollback"
	chain_matches "$dir/inc4.qcow2" "$dev"
	# The bitmap was last committed at inc4 now: what changed since inc3 is unknown.
	cbtctl restore --changed-only -b b0 --newest="$dir/inc3.qcow2" "$dir/inc1.qcow2" "$dev" \
		2>"$dir/err" && fail "a rollback from an image the bitmap was not committed at"
	has "$dir/err" "only a full restore is safe" || fail "the refusal: $(cat "$dir/err")"
	cbtctl restore --changed-only -b b0 --newest="$dir/inc4.qcow2" "$dir/at1.raw" "$dev" \
		2>"$dir/err" && fail "a rollback to an image outside the chain"
	chain_matches "$dir/inc4.qcow2" "$dev"
}

# host_offset IMAGE GUEST: the file offset where IMAGE itself holds guest offset GUEST.
host_offset() {
	local line re='"start": '"$2"', "length": [0-9]+, "depth": 0, .*"offset": ([0-9]+)'
	while IFS= read -r line; do
		[[ $line =~ $re ]] && { echo "${BASH_REMATCH[1]}"; return; }
	done < <(qemu-img map --output=json -f qcow2 "$1")
	fail "$1 holds no data at $2 itself"
}

test_verify() {
	local dir dev loop off blank
	setup
	qio "$dev" "write -P 0x46 9M 1M"
	cbtctl backup -q -c --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc3.qcow2,backing=inc2.qcow2" || fail "a compressed incremental"
	cbtctl verify --json --parallel=2 "$dir/inc3.qcow2" >"$dir/out" 2>"$dir/err" ||
		fail "verify of a clean chain: $(cat "$dir/err")"
	expect_eq "verify's ok" "$(json_field ok <"$dir/out")" true
	expect_eq "images with digests" "$(grep -o '"digests": true' "$dir/out" | wc -l)" 4
	# Its compressed clusters come through qemu-nbd, the rest from the files.
	other blank blank
	cbtctl restore --json "$dir/inc3.qcow2" "$blank" >"$dir/out" ||
		fail "restore of a compressed chain: $(cat "$dir/out")"
	chain_matches "$dir/inc3.qcow2" "$blank"
	[ "$(json_field connections <"$dir/out")" -ge 1 ] ||
		fail "no qemu-nbd read the compressed clusters: $(cat "$dir/out")"
	# A byte of inc1's own data at 6M (0x43) changed.
	off=$(host_offset "$dir/inc1.qcow2" 6291456)
	printf 'x' | dd of="$dir/inc1.qcow2" bs=1 seek=$((off + 4097)) conv=notrunc status=none
	cbtctl verify "$dir/inc3.qcow2" 2>"$dir/err" && fail "verify passed a changed byte"
	has "$dir/err" "inc1.qcow2: guest offset 6291456: the cluster's data differs" ||
		fail "the changed byte's report: $(cat "$dir/err")"
	has "$dir/err" "inc2.qcow2:" && fail "a clean image reported: $(cat "$dir/err")"
	# mode=existing: no digests, and verify says its data cannot be checked.
	qemu-img create -q -f qcow2 -b inc3.qcow2 -F qcow2 "$dir/ex.qcow2"
	qio "$dev" "write -P 0x47 3M 64k"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/ex.qcow2,mode=existing" ||
		fail "an incremental into an existing image"
	cbtctl verify "$dir/ex.qcow2" 2>"$dir/err" && fail "verify passed an image without digests"
	has "$dir/err" "ex.qcow2: no digests at the end of the file" ||
		fail "the report of no digests: $(cat "$dir/err")"
}

# next_backup N: backup N of a chain on $dev (full at 0) in $dir/cN.qcow2, the device then in state-N.raw.
next_backup() {
	local n=$1
	qio "$dev" "write -P $((0x50 + n)) $((n * 1024 * 1024 + n * 4096)) 300k" "write -z $((n * 512 * 1024)) 64k"
	if [ "$n" = 0 ]; then
		cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/c0.qcow2" || fail "full"
	else
		cbtctl backup -q --sync=incremental --bitmap=b0 \
			"$dev=$dir/c$n.qcow2,backing=c$((n - 1)).qcow2" || fail "incremental $n"
	fi
	dd if="$dev" of="$dir/state-$n.raw" bs=1M iflag=direct status=none
}

# kept TOP FULL N...: the chain at TOP is c0 (as state FULL), then cN..., each as its state.
kept() {
	local top=$1 full=$2 n want=("$dir/c0.qcow2") got=() line
	shift 2
	qemu-img compare -q -F raw "$dir/c0.qcow2" "$dir/state-$full.raw" ||
		fail "the full differs from the device at backup $full"
	for n in "$@"; do
		want+=("$dir/c$n.qcow2")
		qemu-img compare -q -F raw "$dir/c$n.qcow2" "$dir/state-$n.raw" ||
			fail "c$n.qcow2 differs from the device at its backup"
	done
	while IFS= read -r line; do
		[[ $line == image:* ]] && got=("$dir/${line#image: }" "${got[@]}")
	done < <(cd "$dir" && qemu-img info --backing-chain "$top")
	expect_eq "the chain of $top" "${got[*]}" "${want[*]}"
}

test_prune() {
	local dir dev loop n phase pid
	make_tmpdir dir
	cbt_over_file "$dir/a.raw" $SIZE a
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	for n in 0 1 2 3 4 5; do next_backup $n; done
	cbtctl prune --json --keep=3 "$dir/c5.qcow2" >"$dir/out" || fail "prune: $(cat "$dir/out")"
	expect_eq "images folded" "$(json_field folded <"$dir/out")" 3
	expect_eq "the full's digests" "$(json_field digests <"$dir/out")" true
	kept c5.qcow2 3 4 5
	cbtctl verify -q "$dir/c5.qcow2" || fail "verify after the prune"
	# One fold killed at each step: the chain reads as before; recover finishes it.
	n=5
	for phase in prune-commit prune-retag prune-rebase prune-unlink; do
		next_backup $((++n))
		CBT_TEST_STOP_AT=$phase cbtctl prune -q --keep=3 "$dir/c$n.qcow2" &
		pid=$!
		wait_stopped $pid $phase || return 1
		kill -9 $pid
		wait $pid 2>/dev/null || true
		qemu-img compare -q -F raw "$dir/c$n.qcow2" "$dir/state-$n.raw" ||
			fail "killed at $phase: the chain differs from its state"
		cbtctl recover >"$dir/rec" || fail "recover after $phase: $(cat "$dir/rec")"
		has "$dir/rec" " 1 prunes finished" || fail "recover after $phase said: $(cat "$dir/rec")"
		kept "c$n.qcow2" $((n - 2)) $((n - 1)) $n
		[ ! -e "$dir/c$((n - 2)).qcow2" ] || fail "killed at $phase: the folded image is left"
		cbtctl verify -q "$dir/c$n.qcow2" || fail "verify after a prune killed at $phase"
	done
}

run_test "a chain restored onto a plain device and through the cbt device; the next incremental" \
	test_restore
run_test "below the cbt device: refused; --force makes the bitmaps inconsistent first" test_below
run_test "refusals change nothing: larger image, in use, open, another disk's, not qcow2" \
	test_refusals
run_test "quick rollback: only what the bitmap and the newer images hold" test_rollback
run_test "verify: a clean chain passes, a changed byte is named, no digests is said" test_verify
run_test "prune: six backups to three, each kept image its state; killed at each step, recovered" \
	test_prune
finish
