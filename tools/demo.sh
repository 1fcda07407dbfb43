#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The dm-cbt demo, run inside a test VM by `make demo`: a VM disk (a loop
# device) under a cbt device, a dirty bitmap, the QEMU incremental-backup
# test's writes, a full backup and two incrementals, each chain checked by
# qemu-img against the disk.
set -euo pipefail

say() { printf '\n== %s\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

dir=$(mktemp -d /tmp/cbt-demo.XXXXXX)
name=vm1-disk
loop=""
cleanup() {
	dmsetup remove --retry "$name" 2>/dev/null || true
	[ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

# writes PATTERN...: the guest's writes, through the cbt device.
writes() {
	local args=() w
	for w in "$@"; do
		echo "   guest writes: $w"
		args+=(-c "$w")
	done
	qemu-io -f raw -n "${args[@]}" -c flush "/dev/mapper/$name" >/dev/null
}

# verify IMAGE: the backup chain ending in IMAGE is sound and equals the disk now.
verify() {
	qemu-img check -q "$1"
	if qemu-img compare -q -F raw "$1" "/dev/mapper/$name"; then
		echo "   qemu-img compare: $(basename "$1") (and its backing chain) equals the disk"
	else
		echo "   qemu-img compare: $(basename "$1") DIFFERS from the disk" >&2
		exit 1
	fi
}

size=$((64 << 20))
say "a 64 MiB VM disk (a loop device over a sparse file), with a cbt device on top"
truncate -s $size "$dir/disk.raw"
loop=$(losetup --find --show "$dir/disk.raw")
run dmsetup create "$name" --table "0 $((size / 512)) cbt $loop"
writes "write -P 0x41 0 512" "write -P 0xd5 1M 32k" "write -P 0xdc 32M 124k"

say "a dirty bitmap, and a full backup that starts it afresh"
run cbtctl bitmap add "$name" daily
run cbtctl backup --sync=full --bitmap=daily "$name=$dir/vm1.0.qcow2"
verify "$dir/vm1.0.qcow2"

say "the guest writes; the bitmap sees it"
writes "write -P 0xab 0 512" "write -P 0xfe 16M 256k" "write -P 0x64 32736k 64k"
run cbtctl status "$name"

say "incremental backup 1 copies only the dirty chunks"
run cbtctl backup --sync=incremental --bitmap=daily \
	"$name=$dir/vm1.1.qcow2,backing=vm1.0.qcow2"
verify "$dir/vm1.1.qcow2"

say "more writes, incremental backup 2"
writes "write -P 0x9a 0 512" "write -P 0x55 8M 352k" "write -P 0x78 15872k 1M"
run cbtctl backup --sync=incremental --bitmap=daily \
	"$name=$dir/vm1.2.qcow2,backing=vm1.1.qcow2"
verify "$dir/vm1.2.qcow2"

say "summary"
qemu-img info --backing-chain "$dir/vm1.2.qcow2" | grep -E '^(image|virtual size|disk size|backing file):'
echo
for f in "$dir"/vm1.*.qcow2; do
	printf '   %-12s %8s KiB on disk\n' "$(basename "$f")" "$(($(stat -c %b "$f") / 2))"
done
cbtctl status "$name"
echo
echo "demo: ok: a full backup and two incrementals, each chain equal to the disk"
