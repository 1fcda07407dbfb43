#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# cbtctl activate and deactivate over a cbttab (cbttab(5)): the devices it
# lists are created with the table it implies, a second run leaves them (and
# their bitmaps) alone, a changed table is refused with both tables shown, a
# missing device or a bad line fails its entry only, --wait waits for a
# device that appears late, a data device that grew while no table was on
# it is grown (the new range dirty), one that shrank or a metadata device of
# another dm device is refused, deactivate removes what it lists and refuses
# a device in use. Also the libvirt freeze hook shipped beside them, through
# a backup, with a virsh that records its calls. reboot-test's "activate"
# pair of boots checks that the bitmaps come back after a power loss.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup cbtctl jq qemu-img
plan 6

SIZE=$((16 << 20))

# setup: two data devices (A with a metadata device, B without) and the
# cbttab $dir/cbttab listing them and a noauto entry C over a third; sets
# dir, A B C (dm names), a_loop b_loop c_loop m_loop.
setup() {
	make_tmpdir dir
	truncate -s $SIZE "$dir/a.raw" "$dir/b.raw" "$dir/c.raw"
	truncate -s 1M "$dir/m.raw"
	make_loop a_loop "$dir/a.raw"
	make_loop b_loop "$dir/b.raw"
	make_loop c_loop "$dir/c.raw"
	make_loop m_loop "$dir/m.raw"
	A=$(dm_name A) B=$(dm_name B) C=$(dm_name C)
	# Removed on exit, whatever made them.
	_dm_devs+=("$A" "$B" "$C")
	cat >"$dir/cbttab" <<-EOF
	# a comment, then an empty line

	$A	$a_loop	$m_loop   # the one with a metadata device
	$B $b_loop - defaults
	$C $c_loop - noauto,uuid=CBT-test-$$-C
	# a last line without an entry, then an empty one

	EOF
}

# results FILE: "name=result" of each entry of an activate --json output.
results() {
	jq -r '.devices[] | "\(.name)=\(.result)"' "$1" | sed "s/cbt-test-$$-//" | tr '\n' ' '
}

# number PATH: MAJOR:MINOR of a block device.
number() {
	echo "$((0x$(stat -c %t "$1"))):$((0x$(stat -c %T "$1")))"
}

test_activate() {
	setup
	cbtctl activate --cbttab="$dir/cbttab" --json >"$dir/out" || fail "activate: $(cat "$dir/out")"
	expect_eq "results" "$(results "$dir/out")" "A=created B=created "
	expect_eq "A's table" "$(dmsetup table "$A")" \
		"0 $((SIZE / 512)) cbt $(number "$a_loop") 2 metadata $(number "$m_loop")"
	expect_eq "B's table" "$(dmsetup table "$B")" "0 $((SIZE / 512)) cbt $(number "$b_loop")"
	[ ! -e "/dev/mapper/$C" ] || fail "the noauto entry was activated"
	# Again, with a bitmap and a dirty chunk on A: nothing changes.
	cbtctl bitmap add "$A" b0 || fail "bitmap add"
	qio "/dev/mapper/$A" "write -P 1 1M 4k"
	cbtctl activate --cbttab="$dir/cbttab" >"$dir/out" || fail "activate again: $(cat "$dir/out")"
	expect_eq "again" "$(sed "s/cbt-test-$$-//" "$dir/out" | tr '\n' ' ')" \
		"A: unchanged B: unchanged "
	expect_eq "A's bitmap" "$(bitmap_field "/dev/mapper/$A" b0 count)" 65536
	# The noauto entry by its name, with its uuid.
	cbtctl activate --cbttab="$dir/cbttab" "$C" >"$dir/out" || fail "activate C"
	expect_eq "C's uuid" "$(dmsetup info -c --noheadings -o uuid "$C")" "CBT-test-$$-C"
}

# A changed table is refused, with both tables shown, and changes nothing;
# the other entries go on.
test_changed() {
	setup
	cbtctl activate --cbttab="$dir/cbttab" >/dev/null || fail "activate"
	sed -i "s|^$A\t.*|$A $a_loop $m_loop write_cache|" "$dir/cbttab"
	before=$(dmsetup table "$A")
	cbtctl activate --cbttab="$dir/cbttab" >"$dir/out" 2>"$dir/err" && rc=0 || rc=$?
	expect_eq "exit status" "$rc" 1
	grep -q "$A: exists with another table: '$before', the cbttab's is '0 $((SIZE / 512)) cbt $(number "$a_loop") 3 write_cache metadata $(number "$m_loop")'" "$dir/err" ||
		fail "the error does not show both tables: $(cat "$dir/err")"
	expect_eq "A's table after" "$(dmsetup table "$A")" "$before"
	grep -q "$B: unchanged" "$dir/out" || fail "B was not looked at: $(cat "$dir/out")"
}

# A missing device, and a bad line, fail their entry only; --wait waits
# for a device that appears late.
test_missing() {
	setup
	cat >"$dir/cbttab" <<-EOF
	$A $dir/late $m_loop
	$B $b_loop
	$C $c_loop - bogus
	EOF
	cbtctl activate --cbttab="$dir/cbttab" --json >"$dir/out" 2>"$dir/err" && rc=0 || rc=$?
	expect_eq "exit status" "$rc" 1
	expect_eq "results" "$(results "$dir/out")" "A=failed B=created C=failed "
	jq -r '.devices[0].error' "$dir/out" | grep -q "the data device $dir/late: No such file" ||
		fail "A's error: $(cat "$dir/out")"
	jq -r '.devices[2].error' "$dir/out" | grep -q "unknown option 'bogus'" ||
		fail "C's error: $(cat "$dir/out")"
	# The device appears a second after activate starts to wait for it.
	(nap 1; ln -s "$a_loop" "$dir/late") &
	cbtctl activate --cbttab="$dir/cbttab" --wait=30 "$A" >"$dir/out" ||
		fail "activate --wait: $(cat "$dir/out")"
	wait
	expect_eq "A after the wait" "$(cat "$dir/out")" "$A: created"
}

# A data device that grew while no table was on it: created at the length
# its metadata device records, then grown, the new range dirty. One that
# shrank, or a metadata device of another dm device, is refused.
test_resized() {
	local s_loop
	setup
	cbtctl activate --cbttab="$dir/cbttab" "$A" >/dev/null || fail "activate"
	cbtctl bitmap add "$A" b0 || fail "bitmap add"
	cbtctl deactivate --cbttab="$dir/cbttab" "$A" >/dev/null || fail "deactivate"
	truncate -s $((SIZE + (1 << 20))) "$dir/a.raw"
	losetup -c "$a_loop"
	cbtctl activate --cbttab="$dir/cbttab" --json "$A" >"$dir/out" || fail "activate grown"
	expect_eq "result" "$(results "$dir/out")" "A=grown "
	expect_eq "length" "$(dmsetup table "$A" | cut -d' ' -f2)" $(((SIZE + (1 << 20)) / 512))
	expect_eq "dirty after the growth" "$(bitmap_field "/dev/mapper/$A" b0 count)" $((1 << 20))
	cbtctl deactivate --cbttab="$dir/cbttab" "$A" >/dev/null || fail "deactivate"
	truncate -s $((SIZE - (1 << 20))) "$dir/a.raw"
	losetup -c "$a_loop"
	cbtctl activate --cbttab="$dir/cbttab" "$A" 2>"$dir/err" && fail "a shrunk device activated"
	grep -q "fewer than the $(((SIZE + (1 << 20)) / 512)) its metadata device" "$dir/err" ||
		fail "the error: $(cat "$dir/err")"
	[ ! -e "/dev/mapper/$A" ] || fail "the refused device exists"
	# A's metadata device under another name.
	echo "$C $c_loop $m_loop" >"$dir/other"
	cbtctl activate --cbttab="$dir/other" 2>"$dir/err" && fail "another device's metadata taken"
	grep -q "holds the bitmaps of dm device '$A'" "$dir/err" || fail "the error: $(cat "$dir/err")"
	[ ! -e "/dev/mapper/$C" ] || fail "the refused device exists"
	# A growth the metadata device has no room for (20 KiB: the
	# superblocks and one block of 4 KiB chunks, 128 MiB of them): the
	# device created at the recorded length is removed again.
	truncate -s 20K "$dir/small.raw"
	make_loop s_loop "$dir/small.raw"
	echo "$B $b_loop $s_loop" >"$dir/small"
	cbtctl activate --cbttab="$dir/small" >/dev/null || fail "activate with a small metadata device"
	cbtctl bitmap add "$B" b0 --granularity=4K || fail "bitmap add"
	cbtctl deactivate --cbttab="$dir/small" >/dev/null || fail "deactivate"
	truncate -s 160M "$dir/b.raw"
	losetup -c "$b_loop"
	cbtctl activate --cbttab="$dir/small" 2>"$dir/err" && fail "grown without room"
	grep -q "growing it to $((160 << 11)) failed: .*; removed again" "$dir/err" ||
		fail "the error: $(cat "$dir/err")"
	[ ! -e "/dev/mapper/$B" ] || fail "the device is left at its old length"
}

# deactivate removes the entries' devices, leaves the absent ones, refuses
# one in use (the others still go) and one that is not a cbt device.
test_deactivate() {
	setup
	cbtctl activate --cbttab="$dir/cbttab" >/dev/null || fail "activate"
	exec 3<"/dev/mapper/$B"
	cbtctl deactivate --cbttab="$dir/cbttab" --json >"$dir/out" 2>"$dir/err" && rc=0 || rc=$?
	exec 3<&-
	expect_eq "exit status" "$rc" 1
	expect_eq "results" "$(results "$dir/out")" "C=absent B=failed A=removed "
	jq -r '.devices[1].error' "$dir/out" | grep -q "in use" || fail "B's error: $(cat "$dir/out")"
	cbtctl deactivate --cbttab="$dir/cbttab" >"$dir/out" || fail "deactivate again"
	expect_eq "again" "$(sed "s/cbt-test-$$-//" "$dir/out" | tr '\n' ' ')" \
		"C: absent B: removed A: absent "
	dmsetup create "$A" --table "0 8 zero"
	cbtctl deactivate --cbttab="$dir/cbttab" "$A" 2>"$dir/err" && fail "removed a zero target"
	grep -q "not one cbt target" "$dir/err" || fail "the error: $(cat "$dir/err")"
	dmsetup remove "$A"
}

# The libvirt freeze hook, as cbtctl runs it: virsh domfsfreeze before the
# instant, domfsthaw after.
test_freeze_hook() {
	local loop name dev
	make_tmpdir dir
	mkdir "$dir/bin"
	printf '#!/bin/sh\necho "$*" >>%s/calls\n' "$dir" >"$dir/bin/virsh"
	chmod +x "$dir/bin/virsh"
	cbt_over_file "$dir/d.raw" $SIZE hook
	cbtctl bitmap add "$dev" b0 || fail "bitmap add"
	PATH=$dir/bin:$PATH cbtctl backup -q --sync=full --bitmap=b0 \
		--freeze-hook="$cbt_top/userspace/share/libvirt-freeze-hook vm-1" \
		"$dev=$dir/full.qcow2" || fail "backup with the hook"
	expect_eq "virsh calls" "$(tr '\n' ' ' <"$dir/calls")" "domfsfreeze vm-1 domfsthaw vm-1 "
	qemu-img compare -q -F raw "$dir/full.qcow2" "$dev" || fail "the backup differs"
}

run_test "activate: creates the entries, then leaves them and their bitmaps" test_activate
run_test "activate: a changed table refused, both shown, the others go on" test_changed
run_test "activate: a missing device or a bad line fails its entry; --wait" test_missing
run_test "activate: a grown device grown, a shrunk one or another's metadata refused" test_resized
run_test "deactivate: removes, leaves the absent, refuses a device in use" test_deactivate
run_test "libvirt-freeze-hook: virsh domfsfreeze, then domfsthaw" test_freeze_hook
finish
