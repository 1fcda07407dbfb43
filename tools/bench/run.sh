#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench: 4 KiB random writes with fio on a brd ramdisk, through
# "linear" and through "cbt" with 0, 1 and 8 recording bitmaps. Prints
# IOPS (median of the rounds) and the ratio to linear. Run inside the test
# VM (vmrun); TCG distorts absolute numbers, the ratios are what we track.
# BENCH_RUNTIME (seconds per run, default 10) and BENCH_ROUNDS (default 4)
# tune it.
set -euo pipefail

runtime=${BENCH_RUNTIME:-10}
rounds=${BENCH_ROUNDS:-4}
size_mb=256
sectors=$((size_mb * 2048))
devs=()

for t in fio dmsetup python3; do
	command -v "$t" >/dev/null || { echo "bench: $t is not installed" >&2; exit 4; }
done

cleanup() {
	local d
	for d in "${devs[@]}"; do
		dmsetup remove --retry "$d" >/dev/null 2>&1 || true
	done
	rmmod brd 2>/dev/null || true
}
trap cleanup EXIT

modprobe brd rd_nr=1 rd_size=$((size_mb * 1024))
# Touch every page of the ramdisk once so no run pays for first allocation.
dd if=/dev/zero of=/dev/ram0 bs=1M count=$size_mb oflag=direct status=none

make_dev() {	# NAME TABLE
	dmsetup create "$1" --table "$2"
	devs+=("$1")
}

make_dev bench-linear "0 $sectors linear /dev/ram0 0"
make_dev bench-cbt0 "0 $sectors cbt /dev/ram0"

# One device per bitmap count would share brd; bitmaps are switched on one
# cbt device instead, between runs.
set_bitmaps() {	# N: exactly N recording bitmaps on bench-cbt0
	local i
	for i in $(seq 0 7); do
		dmsetup message bench-cbt0 0 bitmap remove "b$i" 2>/dev/null || true
	done
	for ((i = 0; i < $1; i++)); do
		dmsetup message bench-cbt0 0 bitmap add "b$i"
	done
}

iops() {	# DEV: write IOPS of one fio run
	fio --name=randwrite --filename="$1" --rw=randwrite --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=16 --numjobs=1 --time_based \
		--runtime="$runtime" --randrepeat=0 --norandommap --group_reporting \
		--output-format=json |
		python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}

median() {
	printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

configs=("linear:bench-linear:0" "cbt, 0 bitmaps:bench-cbt0:0" "cbt, 1 bitmap:bench-cbt0:1"
	 "cbt, 8 bitmaps:bench-cbt0:8")
declare -A results
# One unmeasured run warms up fio, brd and the page cache of the tools.
iops /dev/mapper/bench-linear >/dev/null
# Rounds interleave the configurations, each round starting one further
# on, so drift in the VM and the order of runs hit all of them alike.
nc=${#configs[@]}
for ((r = 0; r < rounds; r++)); do
	for ((k = 0; k < nc; k++)); do
		c=${configs[(r + k) % nc]}
		IFS=: read -r label dev nbm <<<"$c"
		[ "$dev" = bench-cbt0 ] && set_bitmaps "$nbm"
		results[$label]+="$(iops "/dev/mapper/$dev") "
		# The bitmaps really recorded: the last one added has dirty chunks.
		if [ "$nbm" -gt 0 ]; then
			count=$(dmsetup message bench-cbt0 0 bitmap info "b$((nbm - 1))" |
				sed -n 's/.* count=\([0-9]*\).*/\1/p')
			[ "${count:-0}" -gt 0 ] || { echo "bench: bitmaps recorded nothing" >&2; exit 1; }
		fi
	done
done

base=$(median ${results[linear]})
printf '%-16s %10s %8s   %s\n' "target" "IOPS" "ratio" "runs"
for c in "${configs[@]}"; do
	label=${c%%:*}
	m=$(median ${results[$label]})
	printf '%-16s %10d %8.3f   %s\n' "$label" "$m" \
		"$(python3 -c "print($m / $base)")" "${results[$label]}"
done
echo "(fio 4 KiB randwrite, libaio iodepth 16, ${runtime}s x $rounds rounds, brd ${size_mb} MiB, $(uname -r))"
