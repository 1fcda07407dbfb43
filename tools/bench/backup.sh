#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench, part 2: a full backup of an idle device by cbtctl against
# `qemu-img convert -O qcow2` of the same device, in the same VM. The device
# is a brd ramdisk under cbt, 3/4 of it random data and 1/4 zeros; both
# write to tmpfs. Prints the median seconds of BENCH_ROUNDS runs each and
# the ratio (cbtctl / qemu-img: below 1 is faster).
set -euo pipefail

rounds=${BENCH_ROUNDS:-4}
size_mb=${BENCH_BACKUP_MB:-512}
dir=$(mktemp -d /tmp/bench-backup.XXXXXX)
name=bench-backup

for t in cbtctl qemu-img dmsetup python3; do
	command -v "$t" >/dev/null || { echo "bench: $t is not installed" >&2; exit 4; }
done

cleanup() {
	dmsetup remove --retry "$name" >/dev/null 2>&1 || true
	rmmod brd 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

rmmod brd 2>/dev/null || true
modprobe brd rd_nr=1 rd_size=$((size_mb * 1024))
dd if=/dev/urandom of=/dev/ram0 bs=1M count=$((size_mb * 3 / 4)) oflag=direct status=none
dd if=/dev/zero of=/dev/ram0 bs=1M seek=$((size_mb * 3 / 4)) count=$((size_mb / 4)) \
	oflag=direct status=none
dmsetup create "$name" --table "0 $((size_mb * 2048)) cbt /dev/ram0"

seconds() {	# CMD...: wall time of one run
	local t0 t1
	t0=$(date +%s.%N)
	"$@" >/dev/null 2>"$dir/stderr" || { cat "$dir/stderr" >&2; return 1; }
	t1=$(date +%s.%N)
	python3 -c "print(f'{$t1 - $t0:.3f}')"
}

median() {
	printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

ours=() theirs=()
for ((r = 0; r < rounds; r++)); do
	rm -f "$dir"/*.qcow2
	# Alternate which goes first, so caches and drift favour neither.
	if ((r % 2)); then
		theirs+=("$(seconds qemu-img convert -O qcow2 -T none "/dev/mapper/$name" "$dir/q.qcow2")")
		ours+=("$(seconds cbtctl backup --sync=full "$name=$dir/c.qcow2")")
	else
		ours+=("$(seconds cbtctl backup --sync=full "$name=$dir/c.qcow2")")
		theirs+=("$(seconds qemu-img convert -O qcow2 -T none "/dev/mapper/$name" "$dir/q.qcow2")")
	fi
	# Both are backups of the same device.
	qemu-img compare -q "$dir/c.qcow2" "$dir/q.qcow2" || {
		echo "bench: the images differ" >&2
		exit 1
	}
done
a=$(median "${ours[@]}")
b=$(median "${theirs[@]}")
echo
printf '%-34s %8s   %s\n' "full backup of an idle device" "seconds" "runs"
printf '%-34s %8s   %s\n' "cbtctl backup --sync=full" "$a" "${ours[*]}"
printf '%-34s %8s   %s\n' "qemu-img convert -O qcow2" "$b" "${theirs[*]}"
printf '%-34s %8.3f\n' "ratio (cbtctl / qemu-img)" "$(python3 -c "print($a / $b)")"
echo "(${size_mb} MiB brd, 3/4 random data, to tmpfs, $rounds rounds, $(uname -r))"
