#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench, part 4: what a metadata device costs a write. A cbt device
# over a brd ramdisk with one bitmap at 4 KiB granularity, 4 KiB random
# writes (fio, iodepth 16) that each touch a chunk no write touched before
# (fio's random map: every block once), then the same on chunks that are
# all dirty already; each without a metadata device and with one (a second
# brd). Prints IOPS and completion latency (median, p99) of each and the
# ratios with/without. Run under vmrun --icount: the guest clock counts
# instructions, so a run is repeatable and the ratios are what we track.
set -euo pipefail

size_mb=${BENCH_META_MB:-256}
sectors=$((size_mb * 2048))
name=bench-meta

for t in fio dmsetup python3; do
	command -v "$t" >/dev/null || { echo "bench: $t is not installed" >&2; exit 4; }
done

cleanup() {
	dmsetup remove --retry "$name" >/dev/null 2>&1 || true
	rmmod brd 2>/dev/null || true
}
trap cleanup EXIT

rmmod brd 2>/dev/null || true
modprobe brd rd_nr=2 rd_size=$((size_mb * 1024))
# Every page of the data ramdisk touched once: no run pays for its allocation.
dd if=/dev/zero of=/dev/ram0 bs=1M count="$size_mb" oflag=direct status=none

# run: one fio pass over the whole device, "IOPS p50_us p99_us".
run() {
	fio --name=w --filename="/dev/mapper/$name" --rw=randwrite --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=16 --randrepeat=0 --output-format=json |
		python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
p = w["clat_ns"]["percentile"]
print(int(w["iops"]), round(p["50.000000"] / 1000, 1), round(p["99.000000"] / 1000, 1))'
}

# measure FEATURES: "fresh_iops p50 p99 dirty_iops p50 p99" on a new device.
measure() {
	dmsetup create "$name" --table "0 $sectors cbt /dev/ram0 $*"
	dmsetup message "$name" 0 bitmap add b0 granularity=4096
	echo "$(run) $(run)"
	dmsetup remove "$name"
}

dd if=/dev/zero of=/dev/ram1 bs=1M count=16 oflag=direct status=none
read -r m_fresh m_f50 m_f99 m_dirty m_d50 m_d99 <<<"$(measure 2 metadata /dev/ram1)"
read -r p_fresh p_f50 p_f99 p_dirty p_d50 p_d99 <<<"$(measure)"

ratio() { python3 -c "print(f'{$1 / $2:.3f}')"; }
echo
printf '%-38s %9s %9s %9s\n' "4 KiB random writes, 4 KiB chunks" "IOPS" "p50 us" "p99 us"
printf '%-38s %9s %9s %9s\n' "fresh chunks, memory only" "$p_fresh" "$p_f50" "$p_f99"
printf '%-38s %9s %9s %9s\n' "fresh chunks, metadata device" "$m_fresh" "$m_f50" "$m_f99"
printf '%-38s %9s %9s %9s\n' "dirty chunks, memory only" "$p_dirty" "$p_d50" "$p_d99"
printf '%-38s %9s %9s %9s\n' "dirty chunks, metadata device" "$m_dirty" "$m_d50" "$m_d99"
echo
printf '%-38s %9s\n' "IOPS ratio, fresh chunks" "$(ratio "$m_fresh" "$p_fresh")"
printf '%-38s %9s\n' "IOPS ratio, dirty chunks" "$(ratio "$m_dirty" "$p_dirty")"
printf '%-38s %9s\n' "first-write latency added, p50 us" \
	"$(python3 -c "print(round($m_f50 - $p_f50, 1))")"
printf '%-38s %9s\n' "first-write latency added, p99 us" \
	"$(python3 -c "print(round($m_f99 - $p_f99, 1))")"
echo "(${size_mb} MiB brd, metadata on a second brd, $(nproc) CPU, $(uname -r))"
