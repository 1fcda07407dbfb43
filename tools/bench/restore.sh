#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench, restore: cbtctl restore of a qcow2 chain onto a cbt device
# against dd writing the device sequentially (O_DIRECT, 1 MiB) and
# `qemu-img convert -n -O raw` of the same chain, then a quick rollback
# (--changed-only) after 1 % of the chunks were written, against the full
# restore; and cbtctl verify of the chain, on ext4 over a second such
# device (the page cache dropped), against reading the chain's files. Meant for `vmrun --icount`: times are the guest's clock, so each
# figure repeats from run to run. The device is a null_blk device that
# moves BENCH_RESTORE_MBPS (default 400) MiB/s, so the device sets the pace
# as a disk does; the chain (a full image, 3/4 random data and 1/4 zeros,
# and an incremental of 1 % of the chunks) is on tmpfs.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

size_mb=${BENCH_RESTORE_MB:-256}
mbps=${BENCH_RESTORE_MBPS:-400}
dir=$(mktemp -d /tmp/bench-restore.XXXXXX)
nb=/sys/kernel/config/nullb/bench-restore
name=bench-restore
dev=/dev/mapper/$name

for t in cbtctl qemu-img qemu-nbd dmsetup python3; do
	command -v "$t" >/dev/null || { echo "bench: $t is not installed" >&2; exit 4; }
done

cleanup() {
	dmsetup remove --retry "$name" >/dev/null 2>&1 || true
	umount "$dir/v" 2>/dev/null || true
	rmdir "$nb" /sys/kernel/config/nullb/bench-verify 2>/dev/null || true
	rmmod brd 2>/dev/null || true
	umount "$dir" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

row() { printf '%-52s %10s   %s\n' "$@"; }

mount -t tmpfs -o size=$((size_mb * 3 + 256))m tmpfs "$dir"
read -ra cbtctl <<<"$(tmpfs_prog "$dir" cbtctl)"
read -ra qemu_img <<<"$(tmpfs_prog "$dir" qemu-img)"
read -ra dd <<<"$(tmpfs_prog "$dir" dd)"
# The programs restore and verify start, from tmpfs too (CBT_QEMU_NBD and
# CBT_QEMU_IMG take one path each).
for t in qemu-nbd qemu-img; do
	printf '#!/bin/sh\nexec %s "$@"\n' "$(tmpfs_prog "$dir" $t)" >"$dir/$t"
	chmod +x "$dir/$t"
done
export CBT_QEMU_NBD=$dir/qemu-nbd CBT_QEMU_IMG=$dir/qemu-img

# The chain's content: a brd device, 3/4 random and 1/4 zeros.
rmmod brd 2>/dev/null || true
modprobe brd rd_nr=1 rd_size=$((size_mb * 1024))
dd if=/dev/urandom of=/dev/ram0 bs=1M count=$((size_mb * 3 / 4)) oflag=direct status=none
dd if=/dev/zero of=/dev/ram0 bs=1M seek=$((size_mb * 3 / 4)) count=$((size_mb / 4)) \
	oflag=direct status=none

modprobe null_blk nr_devices=0
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
mkdir "$nb"
echo "$size_mb" >"$nb/size"
echo 1 >"$nb/memory_backed"
echo 4096 >"$nb/blocksize"
echo "$mbps" >"$nb/mbps"
echo 1 >"$nb/power"
dmsetup create "$name" --table "0 $((size_mb * 2048)) cbt /dev/bench-restore"
dmsetup message "$name" 0 bitmap add b0

# The chain: a full backup of the content, then 1 % of its 64 KiB chunks
# written and an incremental of them.
dd if=/dev/ram0 of="$dev" bs=1M oflag=direct status=none
cbtctl backup -q --sync=full --bitmap=b0 "$name=$dir/full.qcow2"
chunks=$((size_mb * 16)) n=$((size_mb * 16 / 100))
RANDOM=34
cmds=()
for ((i = 0; i < n; i++)); do
	cmds+=(-c "write -P $((i % 200 + 1)) $(((RANDOM * 32768 + RANDOM) % chunks * 65536)) 64k")
done
qemu-io -f raw -n "${cmds[@]}" "$dev" >/dev/null
cbtctl backup -q --sync=incremental --bitmap=b0 "$name=$dir/inc.qcow2,backing=full.qcow2"

echo "# restore: $size_mb MiB at $mbps MiB/s (null_blk under cbt), chain on tmpfs"
ddw=$(seconds dd if=/dev/ram0 of="$dev" bs=1M oflag=direct)
row "dd of the device's size, O_DIRECT, 1 MiB" "$ddw" ""
full=$(seconds cbtctl restore --json "$dir/inc.qcow2" "$dev")
qemu-img compare -q -F raw "$dir/inc.qcow2" "$dev"
row "cbtctl restore (8 threads)" "$full" "$(calc "$ddw / $full") of dd's throughput"
conv=$(seconds qemu-img convert -n -O raw "$dir/inc.qcow2" "$dev")
row "qemu-img convert -n -O raw" "$conv" "cbtctl $(calc "$conv / $full")x faster"
conv16=$(seconds qemu-img convert -n -m 16 -W -t none -O raw "$dir/inc.qcow2" "$dev")
row "qemu-img convert -n -m 16 -W -t none -O raw" "$conv16" "cbtctl $(calc "$conv16 / $full")x faster"
qemu-img compare -q -F raw "$dir/inc.qcow2" "$dev"

# Quick rollback: the device (as the incremental is) backed up, 1 % of the
# chunks written again, then back to that backup.
cbtctl backup -q --sync=incremental --bitmap=b0 "$name=$dir/inc2.qcow2,backing=inc.qcow2"
cmds=()
for ((i = 0; i < n; i++)); do
	cmds+=(-c "write -P 0xfe $(((RANDOM * 32768 + RANDOM) % chunks * 65536)) 64k")
done
read -ra qemu_io <<<"$(tmpfs_prog "$dir" qemu-io)"
# The floor: the same chunks written one after the other (O_DIRECT).
wr=$(seconds qemu-io -f raw -n "${cmds[@]}" "$dev")
quick=$(seconds cbtctl restore --json --changed-only --bitmap=b0 "$dir/inc2.qcow2" "$dev")
changed=$(python3 -c "import json; print(json.load(open('$dir/out'))['changed_bytes'])")
qemu-img compare -q -F raw "$dir/inc2.qcow2" "$dev"
row "qemu-io writing those chunks (O_DIRECT, 64 KiB)" "$wr" ""
row "cbtctl restore --changed-only ($((changed >> 10)) KiB changed)" "$quick" \
	"$(calc "$quick / $full") of the full restore's time"

# Verify: the chain's files on ext4 over a second null_blk device of the
# same speed, read from the device (the page cache dropped before each).
nb2=/sys/kernel/config/nullb/bench-verify
mkdir "$nb2"
echo $((size_mb * 2)) >"$nb2/size"
echo 1 >"$nb2/memory_backed"
echo 4096 >"$nb2/blocksize"
echo "$mbps" >"$nb2/mbps"
echo 1 >"$nb2/power"
mkfs.ext4 -q /dev/bench-verify
mkdir "$dir/v"
mount /dev/bench-verify "$dir/v"
cp "$dir/full.qcow2" "$dir/inc.qcow2" "$dir/inc2.qcow2" "$dir/v/"
sync
read -ra cat <<<"$(tmpfs_prog "$dir" cat)"
echo 3 >/proc/sys/vm/drop_caches
rd=$(seconds cat "$dir/v/full.qcow2" "$dir/v/inc.qcow2" "$dir/v/inc2.qcow2")
chain_mb=$(($(du -cm --apparent-size "$dir"/v/*.qcow2 | tail -1 | cut -f1)))
row "cat of the chain's files ($chain_mb MiB, ext4)" "$rd" ""
echo 3 >/proc/sys/vm/drop_caches
ver=$(seconds cbtctl verify --json "$dir/v/inc2.qcow2")
row "cbtctl verify (4 threads)" "$ver" "$(calc "$rd / $ver") of reading the files"
umount "$dir/v"
rmdir "$nb2"
