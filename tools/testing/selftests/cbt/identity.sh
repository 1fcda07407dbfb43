#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The identity a backup records (the dm-cbt qcow2 header extension): a chain
# of a full backup and two incrementals that reads as the device, then the
# incrementals cbtctl must refuse before it changes anything: a backing image
# older than the bitmap's last commit, a re-created bitmap, a backing image
# that is missing, not qcow2, made without an identity or without the
# bitmap, or of another device (also as one job of a transaction); the
# backing names QEMU must read (':' in a name, a full backup's backing file,
# a standalone incremental as a base) and incrementals in place; and
# --sync=auto, an incremental on an intact chain and a full backup with
# its reason after a missing or older backing or a re-created bitmap. Each
# refusal exits 1 with a message naming the mismatch and leaves the bitmaps
# (count, busy, generation), the snapshots and the files as they were.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img cbtctl
plan 11

SIZE=$((16 << 20))

# start TAG: a cbt device over $dir/TAG.raw with bitmap b0 and a full backup
# TAG-full.qcow2 of it; sets dir (once), name, dev.
start() {
	local loop
	[ -n "$dir" ] || make_tmpdir dir
	[ -n "$out" ] || make_tmpdir out
	cbt_over_file "$dir/$1.raw" $SIZE "$1"
	qio "$dev" "write -P 0x41 0 64k" "write -P 0x42 8M 64k"
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/$1-full.qcow2" || fail "full backup"
}

# info DEV: b0's line in DEV's "bitmap info".
info() {
	dmsetup message "${1#/dev/mapper/}" 0 bitmap info b0
}

# generation DEV: b0's generation (N of generation=UUID:N).
generation() {
	if [[ $(info "$1") =~ \ generation=[0-9a-f-]*:([0-9]*) ]]; then
		echo "${BASH_REMATCH[1]}"
	fi
}

# state DEV...: what a refusal must leave as it is: each device's bitmaps
# (every field, generation included) and snapshot, and the files (names,
# sizes, modification times).
state() {
	local d
	for d in "$@"; do
		dmsetup message "${d#/dev/mapper/}" 0 bitmap list
		snap_state "$d"
	done
	# Names, sizes and modification times (ns) of every file.
	find "$dir" -printf '%f %s %T@\n' | sort
}

# refused WHY DEVS CMD...: CMD exits 1 with an error that matches WHY, and
# the state of DEVS (a space-separated list) does not change.
refused() {
	local why=$1 devs=$2 before rc d
	shift 2
	# shellcheck disable=SC2086
	before=$(state $devs)
	"$@" >"$out/stdout" 2>"$out/err" && rc=0 || rc=$?
	expect_eq "exit status of '$*' ($(cat "$out/err"))" "$rc" 1
	grep -q -- "$why" "$out/err" || fail "the error does not say '$why': $(cat "$out/err")"
	# shellcheck disable=SC2086
	expect_eq "state after the refusal" "$(state $devs)" "$before"
	# One bitmap on each device, not busy (the same lines as before).
	expect_eq "bitmaps" "$(grep -c " granularity=" <<<"$before")" "$(wc -w <<<"$devs")"
	expect_eq "bitmaps not busy" "$(grep -c "^b0 .* busy=0 " <<<"$before")" "$(wc -w <<<"$devs")"
	expect_eq "views" "$(views)" 0
}

# incremental DEV IMAGE BACKING: an incremental through b0 that must succeed.
incremental() {
	cbtctl backup --sync=incremental --bitmap=b0 --json "$1=$2,backing=$3" >"$out/out.json" ||
		fail "incremental $2: $(cat "$out/out.json")"
}

test_chain() {
	local dir out name dev uuid
	start chain
	[[ $(info "$dev") =~ \ generation=([0-9a-f-]*): ]] && uuid=${BASH_REMATCH[1]}
	expect_eq "generation after the full backup" "$(generation "$dev")" 2
	qio "$dev" "write -P 0x51 1M 64k" "write -P 0x52 15M 4k"
	incremental "$dev" "$dir/inc1.qcow2" "$dir/chain-full.qcow2"
	expect_eq "bitmap_uuid" "$(job_field "$out/out.json" 0 bitmap_uuid)" "$uuid"
	expect_eq "generation recorded" "$(job_field "$out/out.json" 0 generation)" 3
	expect_eq "generation after inc1" "$(generation "$dev")" 3
	qio "$dev" "write -P 0x53 2M 128k"
	# A relative backing name, resolved against the target's directory as QEMU does.
	incremental "$dev" "$dir/inc2.qcow2" inc1.qcow2
	expect_eq "generation recorded by inc2" "$(job_field "$out/out.json" 0 generation)" 4
	qemu-img check -q "$dir/inc1.qcow2" || fail "qemu-img check inc1"
	chain_matches "$dir/inc2.qcow2" "$dev"
}

test_generation() {
	local dir out name dev
	start gen
	qio "$dev" "write -P 0x51 1M 64k"
	incremental "$dev" "$dir/inc1.qcow2" "$dir/gen-full.qcow2"
	qio "$dev" "write -P 0x52 3M 64k"
	# The full backup is one commit behind: the bitmap has nothing of what inc1 took.
	refused "gen-full.qcow2 was taken at generation 2, bitmap b0 is at 3" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc2.qcow2,backing=$dir/gen-full.qcow2"
	# The same through a mode=existing target over the old image: left untouched.
	qemu-img create -q -f qcow2 -b "$dir/gen-full.qcow2" -F qcow2 "$dir/ex.qcow2"
	refused "generation 2, bitmap b0 is at 3" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/ex.qcow2,mode=existing"
	incremental "$dev" "$dir/inc2.qcow2" "$dir/inc1.qcow2"
	chain_matches "$dir/inc2.qcow2" "$dev"
}

test_recreated() {
	local dir out name dev
	start again
	# An in-memory bitmap lost and added again (as after a reboot) has a new uuid.
	cbtctl bitmap remove "$dev" b0 || fail "bitmap remove"
	cbtctl bitmap add "$dev" b0 || fail "bitmap add again"
	qio "$dev" "write -P 0x51 1M 64k"
	refused "bitmap b0 was re-created since $dir/again-full.qcow2" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,backing=$dir/again-full.qcow2"
}

test_bad_backing() {
	local dir out name dev
	start bad
	qio "$dev" "write -P 0x51 1M 64k"
	refused "the backing image $dir/none.qcow2 does not exist" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,backing=$dir/none.qcow2"
	truncate -s $SIZE "$dir/raw.img"
	refused "$dir/raw.img: not a qcow2 image" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,backing=$dir/raw.img"
	qemu-img create -q -f qcow2 "$dir/plain.qcow2" $SIZE
	refused "made without an identity: take a full backup" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,backing=$dir/plain.qcow2"
	# A full backup that committed no bitmap records none.
	cbtctl backup -q --sync=full "$dev=$dir/nobitmap.qcow2" || fail "full backup without a bitmap"
	refused "records no generation of bitmap b0" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc.qcow2,backing=$dir/nobitmap.qcow2"
}

test_other_device() {
	local dir out name dev d0 d1
	start one
	d0=$dev
	start two
	d1=$dev
	qio "$d0" "write -P 0x51 1M 64k"
	qio "$d1" "write -P 0x52 1M 64k"
	refused "one-full.qcow2 is a backup of device $(dm_name one), not of $(dm_name two)" "$d1" \
		cbtctl backup --sync=incremental --bitmap=b0 "$d1=$dir/inc1.qcow2,backing=$dir/one-full.qcow2"
	# In a transaction: the good job does not start either.
	refused "is a backup of device $(dm_name one), not of $(dm_name two)" "$d0 $d1" \
		cbtctl backup --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc0.qcow2,backing=$dir/one-full.qcow2" \
		"$d1=$dir/inc1.qcow2,backing=$dir/one-full.qcow2"
	cbtctl backup -q --sync=incremental --bitmap=b0 \
		"$d0=$dir/inc0.qcow2,backing=$dir/one-full.qcow2" \
		"$d1=$dir/inc1.qcow2,backing=$dir/two-full.qcow2" || fail "the transaction, put right"
	chain_matches "$dir/inc0.qcow2" "$d0"
	chain_matches "$dir/inc1.qcow2" "$d1"
}

# A failed commit: the image records the generation the commit would have
# made; the next incremental must go on from the image before it.
test_failed_commit() {
	local dir out name dev pid rc
	start commit
	qio "$dev" "write -P 0x51 1M 64k"
	CBT_TEST_STOP_AT=renamed cbtctl backup -q --sync=incremental --bitmap=b0 \
		"$dev=$dir/inc1.qcow2,backing=$dir/commit-full.qcow2" 2>"$out/err" &
	pid=$!
	wait_stopped $pid "phase renamed"
	dmsetup message "$name" 0 bitmap abort b0 force || fail "abort force"
	kill -CONT $pid
	wait $pid && rc=0 || rc=$?
	expect_eq "exit status of the refused commit" "$rc" 1
	refused "inc1.qcow2 was taken at generation 3, bitmap b0 is at 2" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc2.qcow2,backing=$dir/inc1.qcow2"
	incremental "$dev" "$dir/inc2.qcow2" "$dir/commit-full.qcow2"
	chain_matches "$dir/inc2.qcow2" "$dev"
}

test_disabled() {
	local dir out name dev
	start disabled
	qio "$dev" "write -P 0x51 1M 64k"
	incremental "$dev" "$dir/inc1.qcow2" "$dir/disabled-full.qcow2"
	# Disabled, it misses writes: inconsistent at once, and after enable.
	cbtctl bitmap disable "$dev" b0 || fail "disable"
	[[ $(info "$dev") == *" inconsistent=1 "* ]] || fail "disabled but consistent: $(info "$dev")"
	qio "$dev" "write -P 0x52 3M 64k"
	refused "inconsistent" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc2.qcow2,backing=$dir/inc1.qcow2"
	cbtctl bitmap enable "$dev" b0 || fail "enable"
	qio "$dev" "write -P 0x53 5M 64k"
	# The generation alone would have matched: the incremental must not miss 3M.
	refused "inconsistent" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc2.qcow2,backing=$dir/inc1.qcow2"
	# A clear while disabled does not make it complete; a full backup while it records does.
	cbtctl bitmap disable "$dev" b0 && cbtctl bitmap clear "$dev" b0 || fail "disable, clear"
	[[ $(info "$dev") == *" inconsistent=1 "* ]] || fail "cleared while disabled: $(info "$dev")"
	cbtctl bitmap enable "$dev" b0 || fail "enable again"
	cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/full2.qcow2" || fail "full backup"
	[[ $(info "$dev") == *" inconsistent=0 "* ]] || fail "after a full backup: $(info "$dev")"
	qio "$dev" "write -P 0x54 7M 64k"
	incremental "$dev" "$dir/inc3.qcow2" "$dir/full2.qcow2"
	chain_matches "$dir/inc3.qcow2" "$dev"
}

# The names QEMU reads: a backing name with ':' before any '/' is stored
# as ./NAME (QEMU would read "t:0.qcow2" as protocol "t"); a full backup's
# backing file must exist; a standalone incremental (no backing image) is
# no base for the next until it is rebased onto its predecessor.
test_backing_names() {
	local dir out name dev chain
	start names
	cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/t:0.qcow2" || fail "full backup t:0"
	qio "$dev" "write -P 0x51 1M 64k"
	incremental "$dev" "$dir/t:1.qcow2" t:0.qcow2
	qio "$dev" "write -P 0x52 3M 64k"
	incremental "$dev" "$dir/t:2.qcow2" t:1.qcow2
	chain=$(qemu-img info --backing-chain "$dir/t:2.qcow2" 2>&1) ||
		fail "qemu-img cannot open the chain: $chain"
	grep -q "^backing file: ./t:1.qcow2 " <<<"$chain" || fail "backing name stored as: $chain"
	chain_matches "$dir/t:2.qcow2" "$dev"

	refused "$dir/typo.qcow2: cannot open image" "$dev" \
		cbtctl backup --sync=full --bitmap=b0 "$dev=$dir/full2.qcow2,backing=$dir/typo.qcow2"
	qemu-img create -q -f qcow2 -u -b "t:9.qcow2" -F qcow2 "$dir/ex.qcow2" $SIZE
	refused "is read by QEMU as a protocol" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/ex.qcow2,mode=existing"

	qio "$dev" "write -P 0x53 5M 64k"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/alone.qcow2" ||
		fail "standalone incremental"
	qio "$dev" "write -P 0x54 7M 64k"
	refused "rests on a standalone incremental" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/next.qcow2,backing=alone.qcow2"
	qemu-img rebase -u -b ./t:2.qcow2 -F qcow2 "$dir/alone.qcow2" || fail "rebase"
	incremental "$dev" "$dir/next.qcow2" alone.qcow2
	chain_matches "$dir/next.qcow2" "$dev"
}

# mode=existing: a target without a backing file that has an identity is
# brought forward in place, checked as a backing image is; one with a
# backing file must not hold a backup already; one with data and no
# identity is refused.
test_in_place() {
	local dir out name dev
	start place
	qio "$dev" "write -P 0x51 1M 64k"
	incremental "$dev" "$dir/inc1.qcow2" "$dir/place-full.qcow2"
	qio "$dev" "write -P 0x52 3M 64k"
	refused "place-full.qcow2 was taken at generation 2, bitmap b0 is at 3" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/place-full.qcow2,mode=existing"
	refused "inc1.qcow2 holds a backup already" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/inc1.qcow2,mode=existing"
	qemu-img create -q -f qcow2 "$dir/data.qcow2" $SIZE
	qio "$dir/data.qcow2" "write -P 0x61 0 64k"
	refused "holds data but neither a backing file nor an identity" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 "$dev=$dir/data.qcow2,mode=existing"
	# One image kept current: a full backup, then incrementals in place.
	cbtctl backup -q --sync=full --bitmap=b0 "$dev=$dir/cur.qcow2" || fail "full into cur"
	qio "$dev" "write -P 0x53 5M 64k" "write -P 0x54 0 4k"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/cur.qcow2,mode=existing" ||
		fail "incremental in place"
	chain_matches "$dir/cur.qcow2" "$dev"
	qemu-img check -q "$dir/cur.qcow2" || fail "qemu-img check cur"
	qio "$dev" "write -P 0x55 9M 64k"
	cbtctl backup -q --sync=incremental --bitmap=b0 "$dev=$dir/cur.qcow2,mode=existing" ||
		fail "second incremental in place"
	chain_matches "$dir/cur.qcow2" "$dev"
}

# 512-byte clusters, a 356-byte backing name: no room for the identity in
# the first cluster. Refused at prepare, before the freeze hook or any
# freeze, with the advice to take larger clusters (before: after them).
test_identity_room() {
	local dir out name dev long
	start room
	long=$(printf 'd%.0s' $(seq 100))/$(printf 'b%.0s' $(seq 249)).qcow2
	mkdir "$dir/${long%/*}"
	cp "$dir/room-full.qcow2" "$dir/$long"
	printf '#!/bin/sh\necho "$1" >>"%s"\n' "$dir/hook.log" >"$dir/hook"
	chmod +x "$dir/hook"
	qio "$dev" "write -P 0x51 1M 64k"
	refused "use a larger cluster-size" "$dev" \
		cbtctl backup --sync=incremental --bitmap=b0 --freeze-hook="$dir/hook" \
		"$dev=$dir/inc.qcow2,backing=$long,cluster-size=512"
	[ ! -e "$dir/hook.log" ] || fail "the hook ran: $(cat "$dir/hook.log")"
	incremental "$dev" "$dir/inc.qcow2" "$long"
	chain_matches "$dir/inc.qcow2" "$dev"
}

# auto OUT IMAGE BACKING: a --sync=auto backup of $dev into $dir/IMAGE with
# backing=BACKING, its JSON in OUT; then its chain reads as the device.
auto() {
	cbtctl backup --json --sync=auto --bitmap=b0 "$dev=$dir/$2,backing=$3" >"$1" 2>"$1.err" ||
		fail "--sync=auto into $2: $(cat "$1" "$1.err")"
	chain_matches "$dir/$2" "$dev"
}

# auto_full OUT IMAGE WHY: the job of OUT was a full backup because of WHY
# (a part of its reason), and IMAGE has no backing file.
auto_full() {
	local reason
	reason=$(job_field "$1" 0 reason)
	expect_eq "mode of $2 (reason: $reason)" "$(job_field "$1" 0 mode)" full
	[[ $reason == *"$3"* ]] || fail "the reason for the full $2: '$reason', not '$3'"
	[[ $(qemu-img info "$dir/$2") != *"backing file:"* ]] || fail "$2 has a backing file"
}

test_auto() {
	local dir="" out="" name dev loop
	start auto
	# An intact chain: an incremental, no reason.
	qio "$dev" "write -P 0x51 4M 64k"
	auto "$dir/o1" a1.qcow2 auto-full.qcow2
	expect_eq "mode of a1" "$(job_field "$dir/o1" 0 mode)" incremental
	expect_eq "reason for a1" "$(job_field "$dir/o1" 0 reason)" null
	expect_eq "dirty bytes of a1" "$(job_field "$dir/o1" 0 dirty_bytes)" 65536
	# A missing backing, an older one, a re-created bitmap: full backups.
	qio "$dev" "write -P 0x52 5M 64k"
	auto "$dir/o2" a2.qcow2 missing.qcow2
	auto_full "$dir/o2" a2.qcow2 "does not exist"
	qio "$dev" "write -P 0x53 6M 64k"
	auto "$dir/o3" a3.qcow2 a1.qcow2
	auto_full "$dir/o3" a3.qcow2 "a backup in between"
	cbtctl bitmap remove "$dev" b0 && cbtctl bitmap add "$dev" b0 || fail "re-adding b0"
	auto "$dir/o4" a4.qcow2 a3.qcow2
	auto_full "$dir/o4" a4.qcow2 "re-created"
	# The new chain goes on; the text output says what each job took.
	qio "$dev" "write -P 0x54 7M 64k"
	cbtctl backup --sync=auto --bitmap=b0 "$dev=$dir/a5.qcow2,backing=a4.qcow2" >"$dir/o5" 2>&1 ||
		fail "--sync=auto into a5: $(cat "$dir/o5")"
	has "$dir/o5" "; incremental" || fail "the text output: $(cat "$dir/o5")"
	chain_matches "$dir/a5.qcow2" "$dev"
}

run_test "full and two incrementals chain, identity in --json" test_chain
run_test "a backing image older than the last commit is refused" test_generation
run_test "a re-created bitmap is refused" test_recreated
run_test "a missing, raw, plain or bitmap-less backing is refused" test_bad_backing
run_test "a backing image of another device is refused, also in a transaction" test_other_device
run_test "after a failed commit only the image before it is a backing" test_failed_commit
run_test "a bitmap disabled since its last commit is refused until a full backup" test_disabled
run_test "backing names QEMU reads: ':' stored as ./, typo refused, standalone no base" test_backing_names
run_test "an incremental in place is checked; a used or unknown target refused" test_in_place
run_test "no room for the identity: refused before the freeze" test_identity_room
run_test "--sync=auto: an incremental on an intact chain, else a full with the reason" test_auto
finish
