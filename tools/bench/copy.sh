#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench, the copy engine: every row of the table in
# Documentation/testing.rst ("Copy engine"), in one VM run. Meant for
# `vmrun --icount` (one vCPU whose clock counts instructions): times are
# read from the guest's clock, so each figure repeats from run to run and
# dm-delay's latency is exact. Images go to tmpfs.
#
# BENCH_COPY_MB (default 256) sizes the devices; BENCH_COPY_DELAY_MS
# (default 40) is the read latency dm-delay adds (TCG makes the CPU's
# share of a 1 MiB request about 40 times what it is on hardware, so 40 ms
# here stands for about 1 ms there); BENCH_COPY_BW_MBPS (default 400) and
# BENCH_COPY_BW_MB (default 1024) are the bandwidth and size of the
# null_blk device whose transfers, not the vCPU, set the pace;
# BENCH_COPY_PARTS (default "seq bw delay scatter rss compress") picks rows.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

size_mb=${BENCH_COPY_MB:-256}
delay_ms=${BENCH_COPY_DELAY_MS:-40}
bw_mbps=${BENCH_COPY_BW_MBPS:-400}
bw_mb=${BENCH_COPY_BW_MB:-1024}
parts=${BENCH_COPY_PARTS:-seq bw delay scatter rss compress}
dir=$(mktemp -d /tmp/bench-copy.XXXXXX)
devs=()

for t in cbtctl qemu-img dmsetup fio python3 nbdcopy qemu-nbd; do
	command -v "$t" >/dev/null || { echo "bench: $t is not installed" >&2; exit 4; }
done

cleanup() {
	local d
	for ((d = ${#devs[@]} - 1; d >= 0; d--)); do
		dmsetup remove --retry "${devs[d]}" >/dev/null 2>&1 || true
	done
	rmmod brd 2>/dev/null || true
	rmdir /sys/kernel/config/nullb/bench 2>/dev/null || true
	umount "$dir" 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

make_dev() {	# NAME TABLE
	dmsetup create "$1" --table "$2"
	devs+=("$1")
}

# Peak RSS in KiB of CMD... (the largest child's, by getrusage).
peak_rss() {
	python3 -c '
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)
if r.returncode:
    sys.exit(r.returncode)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "$@"
}

# fio_seconds DEV MB: the seconds fio's sequential read of MB MiB of DEV
# takes at its throughput (1 MiB reads, 8 in flight).
fio_seconds() {
	fio --name=seq --filename="$1" --rw=read --bs=1M --direct=1 --ioengine=libaio \
		--iodepth=8 --output-format=json >"$dir/fio.json"
	python3 -c "import json
bw = json.load(open('$dir/fio.json'))['jobs'][0]['read']['bw_bytes']
print(f'{$2 * 1048576 / bw:.3f}')"
}

row() { printf '%-58s %10s   %s\n' "$@"; }

tmpfs_mb=$((size_mb * 4 + 256))
[[ " $parts " != *" bw "* ]] || tmpfs_mb=$((tmpfs_mb + bw_mb * 2))
mount -t tmpfs -o size=${tmpfs_mb}m tmpfs "$dir"
read -ra cbtctl <<<"$(tmpfs_prog "$dir" cbtctl)"
read -ra qemu_img <<<"$(tmpfs_prog "$dir" qemu-img)"
read -ra dd <<<"$(tmpfs_prog "$dir" dd)"
read -ra nbdcopy <<<"$(tmpfs_prog "$dir" nbdcopy)"
"${cbtctl[@]}" --help >/dev/null 2>&1 || { echo "bench: the tmpfs cbtctl does not run" >&2; exit 1; }
"${qemu_img[@]}" --version >/dev/null 2>&1 || { echo "bench: the tmpfs qemu-img does not run" >&2; exit 1; }

sectors=$((size_mb * 2048))
rmmod brd 2>/dev/null || true
modprobe brd rd_nr=1 rd_size=$((size_mb * 2 * 1024))
# The first half: 3/4 random data, 1/4 zeros, as tools/bench/backup.sh.
dd if=/dev/urandom of=/dev/ram0 bs=1M count=$((size_mb * 3 / 4)) oflag=direct status=none
dd if=/dev/zero of=/dev/ram0 bs=1M seek=$((size_mb * 3 / 4)) count=$((size_mb / 4)) \
	oflag=direct status=none
# The second half: text-like data that compresses (base64 of random bytes).
# (base64 dies of SIGPIPE once dd has enough: not a failure.)
(set +o pipefail; base64 -w 0 /dev/urandom | dd of=/dev/ram0 bs=1M seek=$size_mb count=$size_mb \
	iflag=fullblock oflag=direct status=none)
make_dev bench-copy "0 $sectors cbt /dev/ram0"
dev=/dev/mapper/bench-copy

echo
row "copy engine ($size_mb MiB brd, $(uname -r))" "seconds" "ratio"

if [[ " $parts " == *" seq "* ]]; then
	fio_s=$(fio_seconds $dev $size_mb)
	row "fio sequential read, 1M, iodepth 8" "$fio_s" ""
	# The least any copy into a file on tmpfs costs here: no format, no zeros skipped.
	t=$(seconds dd if=$dev of="$dir/raw" bs=1M iflag=direct)
	row "dd of the device into a file on tmpfs, 1M" "$t" "$(calc "$fio_s / $t") of fio's throughput"
	rm -f "$dir/raw"
	ours=$(seconds cbtctl backup --sync=full "bench-copy=$dir/c.qcow2")
	row "cbtctl backup --sync=full" "$ours" "$(calc "$fio_s / $ours") of fio's throughput"
	ns=$(seconds cbtctl backup --sync=full --no-snapshot "bench-copy=$dir/n.qcow2")
	row "cbtctl backup --sync=full --no-snapshot" "$ns" "$(calc "$fio_s / $ns") of fio's throughput"
	rm -f "$dir/n.qcow2"
	for p in 1 4 16; do
		t=$(seconds cbtctl backup --sync=full --parallel=$p "bench-copy=$dir/p$p.qcow2")
		row "cbtctl backup --sync=full --parallel=$p" "$t" "$(calc "$fio_s / $t") of fio's throughput"
		rm -f "$dir/p$p.qcow2"
	done
	ours_w=$(seconds cbtctl backup --sync=full -W "bench-copy=$dir/w.qcow2")
	row "cbtctl backup --sync=full -W" "$ours_w" "$(calc "$fio_s / $ours_w") of fio's throughput"
	qemu=$(seconds qemu-img convert -m 16 -W -O qcow2 -T none "$dev" "$dir/q.qcow2")
	row "qemu-img convert -m 16 -W -O qcow2" "$qemu" "cbtctl $(calc "$qemu / $ours")x faster"
	qemu-img compare -q "$dir/c.qcow2" "$dir/q.qcow2"
	rm -f "$dir/c.qcow2"
	qemu1=$(seconds qemu-img convert -O qcow2 -T none "$dev" "$dir/q1.qcow2")
	row "qemu-img convert -O qcow2" "$qemu1" "cbtctl $(calc "$qemu1 / $ours")x faster"
	qemu-img compare -q "$dir/w.qcow2" "$dir/q1.qcow2"
	rm -f "$dir"/*.qcow2
fi

if [[ " $parts " == *" bw "* ]]; then
	# A device that moves bw_mbps MiB/s (null_blk's throttle, on the
	# guest's clock) and costs the vCPU little: the device sets the pace,
	# as an SSD or a SAN link does on hardware, and a copy keeps up if it
	# overlaps its own work (two copies of each byte, the image's pages)
	# with the device's transfers. Filled with the brd's first half (3/4
	# random, 1/4 zeros) over and over.
	modprobe null_blk nr_devices=0
	mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
	nb=/sys/kernel/config/nullb/bench
	mkdir "$nb"
	echo $bw_mb >"$nb/size"
	echo 1 >"$nb/memory_backed"
	echo 4096 >"$nb/blocksize"
	echo $bw_mbps >"$nb/mbps"
	echo 1 >"$nb/power"
	for ((i = 0; i < bw_mb; i += size_mb)); do
		dd if=/dev/ram0 of=/dev/bench bs=1M seek=$i \
			count=$((bw_mb - i < size_mb ? bw_mb - i : size_mb)) \
			iflag=direct oflag=direct status=none
	done
	make_dev bench-bw "0 $((bw_mb * 2048)) cbt /dev/bench"
	fio_s=$(fio_seconds /dev/mapper/bench-bw $bw_mb)
	row "$bw_mb MiB at $bw_mbps MiB/s: fio sequential read" "$fio_s" ""
	ours=$(seconds cbtctl backup --sync=full "bench-bw=$dir/c.qcow2")
	row "$bw_mb MiB at $bw_mbps MiB/s: cbtctl backup --sync=full" "$ours" \
		"$(calc "$fio_s / $ours") of fio's throughput"
	rm -f "$dir/c.qcow2"
	ns=$(seconds cbtctl backup --sync=full --no-snapshot "bench-bw=$dir/n.qcow2")
	row "$bw_mb MiB at $bw_mbps MiB/s: the same, --no-snapshot" "$ns" \
		"$(calc "$fio_s / $ns") of fio's throughput"
	qemu=$(seconds qemu-img convert -m 16 -W -O qcow2 -T none /dev/mapper/bench-bw \
		"$dir/q.qcow2")
	row "$bw_mb MiB at $bw_mbps MiB/s: qemu-img convert -m 16 -W" "$qemu" \
		"cbtctl $(calc "$qemu / $ours")x faster"
	qemu-img compare -q "$dir/n.qcow2" "$dir/q.qcow2"
	rm -f "$dir"/*.qcow2
	# Pull mode: a backup server's nbdcopy reads the export (qemu-nbd over
	# the snapshot's view) through its Unix socket; the bytes go nowhere,
	# as fio's do.
	"${cbtctl[@]}" export start --json "bench-bw" >"$dir/export.json"
	tok=$(python3 -c "import json; print(json.load(open('$dir/export.json'))['token'])")
	uri=$(python3 -c "import json; print(json.load(open('$dir/export.json'))['exports'][0]['uri'])")
	pull=$(seconds nbdcopy "$uri" null:)
	"${cbtctl[@]}" export stop --abort "$tok" >/dev/null
	row "$bw_mb MiB at $bw_mbps MiB/s: nbdcopy of cbtctl export (pull)" "$pull" \
		"$(calc "$fio_s / $pull") of fio's throughput"
fi

if [[ " $parts " == *" delay "* ]]; then
	# Reads wait delay_ms in dm-delay: queue depth, not bandwidth, decides.
	dmb=$((64 * 2048))
	make_dev bench-delay "0 $dmb delay /dev/ram0 0 $delay_ms /dev/ram0 0 0"
	make_dev bench-delay-cbt "0 $dmb cbt /dev/mapper/bench-delay"
	qd1=$(seconds cbtctl backup --sync=full --parallel=1 "bench-delay-cbt=$dir/d1.qcow2")
	row "64 MiB, ${delay_ms} ms reads: cbtctl --parallel=1" "$qd1" ""
	for p in 8 16 32 64; do
		t=$(seconds cbtctl backup --sync=full --parallel=$p "bench-delay-cbt=$dir/d$p.qcow2")
		[ $p != 32 ] || p32=$t
		row "64 MiB, ${delay_ms} ms reads: cbtctl --parallel=$p" "$t" \
			"$(calc "$qd1 / $t")x the queue-depth-1 copy"
		qemu-img compare -q "$dir/d1.qcow2" "$dir/d$p.qcow2"
	done
	qemu=$(seconds qemu-img convert -m 16 -W -O qcow2 -T none /dev/mapper/bench-delay-cbt \
		"$dir/q.qcow2")
	row "64 MiB, ${delay_ms} ms reads: qemu-img convert -m 16 -W" "$qemu" \
		"cbtctl (--parallel=32) $(calc "$qemu / $p32")x faster"
	qemu-img compare -q "$dir/d1.qcow2" "$dir/q.qcow2"
	rm -f "$dir"/*.qcow2
fi

if [[ " $parts " == *" scatter "* ]]; then
	# Every other 64K chunk of the whole device dirty, against a full
	# copy of a device of half its size: the same bytes, sequential.
	half=$((sectors / 2))
	make_dev bench-half "0 $half cbt /dev/ram0"
	cbtctl bitmap add bench-copy b0 >/dev/null
	cbtctl backup -q --sync=full -b b0 "bench-copy=$dir/base.qcow2" >/dev/null
	fio --name=scatter --filename=$dev --rw=write:64k --bs=64k --direct=1 \
		--ioengine=psync --size=${size_mb}M --output-format=json >/dev/null
	full=$(seconds cbtctl backup --sync=full "bench-half=$dir/half.qcow2")
	row "full copy of $((size_mb / 2)) MiB" "$full" ""
	inc=$(seconds cbtctl backup --sync=incremental -b b0 --json \
		"bench-copy=$dir/inc.qcow2,backing=$dir/base.qcow2")
	dirty=$(python3 -c "import json; print(json.load(open('$dir/out'))['jobs'][0]['dirty_bytes'])")
	[ "$dirty" = $((size_mb * 1048576 / 2)) ] || { echo "bench: dirty $dirty" >&2; exit 1; }
	row "incremental, every other 64K chunk ($((size_mb / 2)) MiB)" "$inc" \
		"$(calc "$full / $inc") of the full copy's speed"
	qemu-img compare -q "$dir/inc.qcow2" "$dev"
	# The same without a snapshot: the 64K gaps are read with their neighbours.
	fio --name=scatter --filename=$dev --rw=write:64k --bs=64k --direct=1 \
		--ioengine=psync --size=${size_mb}M --output-format=json >/dev/null
	inc=$(seconds cbtctl backup --sync=incremental -b b0 --no-snapshot \
		"bench-copy=$dir/inc-ns.qcow2,backing=$dir/inc.qcow2")
	row "the same, --no-snapshot (gaps merged)" "$inc" \
		"$(calc "$full / $inc") of the full copy's speed"
	qemu-img compare -q "$dir/inc-ns.qcow2" "$dev"
	cbtctl bitmap remove bench-copy b0 >/dev/null
	rm -f "$dir"/*.qcow2
fi

if [[ " $parts " == *" rss "* ]]; then
	# Peak RSS against the number of extents: every other 4K chunk dirty
	# on 1/16 of the device, then on all of it (16 times the extents),
	# with one read in flight (two buffers). Then the second with the
	# default 32 (36 buffers of 1 MiB): how many of them a copy touches
	# depends on how far its reads run ahead, not on the extents.
	for frac in 16 1; do
		mb=$((size_mb / frac))
		make_dev bench-rss$frac "0 $((mb * 2048)) cbt /dev/ram0"
		cbtctl bitmap add bench-rss$frac b4k --granularity=4K >/dev/null
		cbtctl backup -q --sync=full -b b4k "bench-rss$frac=$dir/base$frac.qcow2" >/dev/null
		fio --name=rss --filename=/dev/mapper/bench-rss$frac --rw=write:4k --bs=4k \
			--direct=1 --ioengine=psync --size=${mb}M --output-format=json >/dev/null
		kib=$(peak_rss "${cbtctl[@]}" backup -q --sync=incremental -b b4k --parallel=1 \
			"bench-rss$frac=$dir/inc$frac.qcow2,backing=$dir/base$frac.qcow2,cluster-size=4K")
		row "peak RSS, $((mb * 128)) extents of 4K, --parallel=1 (KiB)" "$kib" ""
	done
	fio --name=rss --filename=/dev/mapper/bench-rss1 --rw=write:4k --bs=4k \
		--direct=1 --ioengine=psync --size=${size_mb}M --output-format=json >/dev/null
	kib=$(peak_rss "${cbtctl[@]}" backup -q --sync=incremental -b b4k \
		"bench-rss1=$dir/inc2.qcow2,backing=$dir/inc1.qcow2,cluster-size=4K")
	row "the same, 32 reads in flight (the default; KiB)" "$kib" ""
	rm -f "$dir"/*.qcow2
fi

if [[ " $parts " == *" compress "* ]] && cbtctl backup --help 2>&1 | grep -q -- --compress; then
	make_dev bench-text-lin "0 $sectors linear /dev/ram0 $sectors"
	make_dev bench-text "0 $sectors cbt /dev/mapper/bench-text-lin"
	ours=$(seconds cbtctl backup --sync=full --compress "bench-text=$dir/c.qcow2")
	qemu=$(seconds qemu-img convert -c -o compression_type=zstd -m 16 -W -O qcow2 -T none \
		/dev/mapper/bench-text "$dir/q.qcow2")
	cs=$(stat -c %s "$dir/c.qcow2")
	qs=$(stat -c %s "$dir/q.qcow2")
	row "cbtctl backup --compress (text-like data)" "$ours" \
		"$((cs / 1048576)) MiB, $(calc "$cs / ($size_mb * 1048576)") of the data"
	row "qemu-img convert -c -o compression_type=zstd -m 16 -W" "$qemu" \
		"$((qs / 1048576)) MiB; cbtctl $(calc "$qemu / $ours")x faster"
	qemu-img compare -q "$dir/c.qcow2" "$dir/q.qcow2"
	qemu-img check -q "$dir/c.qcow2"
fi
