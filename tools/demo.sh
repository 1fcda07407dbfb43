#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# The dm-cbt demo, run inside a test VM by `make demo`: a cbt device stacked
# over a loop device, written with the QEMU incremental-backup test's
# patterns, its data checked on the device below and its status shown.
set -euo pipefail

say() { printf '\n== %s\n' "$*"; }

dir=$(mktemp -d /tmp/cbt-demo.XXXXXX)
name=cbt-demo
loop=""
cleanup() {
	dmsetup remove --retry "$name" 2>/dev/null || true
	[ -n "$loop" ] && losetup -d "$loop" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT

size=$((64 << 20))
say "a 64 MiB disk: a loop device over a sparse file"
truncate -s $size "$dir/disk.raw"
loop=$(losetup --find --show "$dir/disk.raw")
echo "$loop -> $dir/disk.raw"

say "stack the cbt target on it"
table="0 $((size / 512)) cbt $loop"
echo "dmsetup create $name --table '$table'"
dmsetup create "$name" --table "$table"
dmsetup table "$name"

say "write the QEMU test's patterns through /dev/mapper/$name"
writes=("write -P 0x49 0 512" "write -P 0x6c 0x1000000 256k" "write -P 0x6f 0x1ff0000 64k")
args=()
for w in "${writes[@]}"; do
	echo "  qemu-io: $w"
	args+=(-c "$w")
done
qemu-io -f raw -n "${args[@]}" "/dev/mapper/$name" >/dev/null

say "the same data is on the device below"
qemu-img create -q -f raw "$dir/reference.raw" $size
qemu-io -f raw "${args[@]}" "$dir/reference.raw" >/dev/null
if qemu-img compare -q -f raw -F raw "$dir/reference.raw" "$loop"; then
	echo "qemu-img compare: the loop device matches the reference image"
else
	echo "qemu-img compare: MISMATCH" >&2
	exit 1
fi

say "status"
cbtctl status "$name"
dmsetup remove "$name"
echo
echo "demo: ok"
