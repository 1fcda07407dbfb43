#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# make bench, part 3: what a point-in-time backup costs the guest, and
# itself. A cbt device over a brd ramdisk of random data; images go to
# tmpfs.
#
#  - Guest 4 KiB random-write IOPS (fio, iodepth 16, BENCH_SNAP_RUNTIME
#    seconds) alone, and while a full backup copies the device: with
#    --no-snapshot (what the copy alone costs a guest sharing the CPU),
#    through a snapshot with the default memory store, and through one
#    with a store device (a second brd). Each as a ratio to fio alone.
#  - A full backup of the idle device through a snapshot against
#    --no-snapshot (median of BENCH_ROUNDS each): the snapshot's own cost.
#
# The backup starts first; fio starts once the copy runs and must end
# before it (checked), so every measured write competes with the copy.
# With two CPUs or more, fio runs on CPU 0 and cbtctl on CPU 1, as a
# guest's vCPU and a host's backup would: what is measured is what the
# snapshot costs the writes, not a share of one CPU.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

rounds=${BENCH_ROUNDS:-4}
runtime=${BENCH_SNAP_RUNTIME:-2}
size_mb=${BENCH_SNAP_MB:-1024}
dir=$(mktemp -d /tmp/bench-snap.XXXXXX)
name=bench-snap

for t in cbtctl fio dmsetup python3 mount taskset nbdcopy qemu-nbd; do
	command -v "$t" >/dev/null || { echo "bench: $t is not installed" >&2; exit 4; }
done

cleanup() {
	[ -n "${bpid:-}" ] && kill "$bpid" 2>/dev/null && wait "$bpid" 2>/dev/null
	cbtctl recover >/dev/null 2>&1 || true
	dmsetup remove --retry "$name" >/dev/null 2>&1 || true
	umount "$dir" 2>/dev/null || true
	rmmod brd 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT

rmmod brd 2>/dev/null || true
modprobe brd rd_nr=2 rd_size=$((size_mb * 1024))
dd if=/dev/urandom of=/dev/ram0 bs=1M count="$size_mb" oflag=direct status=none
# The store device: touched once, so no run pays for its first allocation.
dd if=/dev/zero of=/dev/ram1 bs=1M count="$size_mb" oflag=direct status=none
dmsetup create "$name" --table "0 $((size_mb * 2048)) cbt /dev/ram0"
mount -t tmpfs -o size=$((size_mb * 2 + 64))m tmpfs "$dir"

guest=() ctl=()
if [ "$(nproc)" -ge 2 ]; then
	guest=(taskset -c 0) ctl=(taskset -c 1)
fi

iops() {	# fio on the cbt device: write IOPS
	"${guest[@]}" fio --name=randwrite --filename="/dev/mapper/$name" --rw=randwrite --bs=4k --direct=1 \
		--ioengine=libaio --iodepth=16 --numjobs=1 --time_based --runtime="$runtime" \
		--randrepeat=0 --norandommap --output-format=json |
		python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}

snapshot_state() {	# the 7th status field: -, prepared, running, broken
	dmsetup status "$name" | awk '{ print $10 }'
}

# IOPS while `cbtctl backup --sync=full ARGS...` copies.
iops_during() {
	local img=$dir/during.qcow2 i n
	rm -f "$img"
	"${ctl[@]}" cbtctl backup --sync=full "$@" "$name=$img" >"$dir/backup.log" 2>&1 &
	bpid=$!
	# The copy runs once the snapshot does (or, without one, the image exists).
	for ((i = 0; i < 500; i++)); do
		if [ "${1:-}" = --no-snapshot ]; then
			ls "$dir"/.during* >/dev/null 2>&1 && break
		else
			[ "$(snapshot_state)" = running ] && break
		fi
		sleep 0.01
	done
	iops_beside "the backup ($*)" "$dir/backup.log"
}

# iops_beside WHAT LOG: fio's IOPS while $bpid (WHAT, its output in LOG) runs; it must outlast fio.
iops_beside() {
	local n
	n=$(iops)
	if ! kill -0 "$bpid" 2>/dev/null; then
		echo "bench: $1 ended before fio did: raise BENCH_SNAP_MB" >&2
		exit 1
	fi
	wait "$bpid" || { cat "$2" >&2; exit 1; }
	bpid=
	echo "$n"
}

# IOPS while a backup server pulls the whole device over NBD (cbtctl
# export, nbdcopy to nowhere). A pull releases nothing, so the store holds
# every chunk fio overwrites: memory for the whole device.
iops_during_pull() {
	local out=$dir/export.json tok uri n
	"${ctl[@]}" cbtctl export start --json --cbw-memory=${size_mb}M "$name" >"$out"
	tok=$(python3 -c "import json; print(json.load(open('$out'))['token'])")
	uri=$(python3 -c "import json; print(json.load(open('$out'))['exports'][0]['uri'])")
	"${ctl[@]}" nbdcopy "$uri" null: >"$dir/pull.log" 2>&1 &
	bpid=$!
	n=$(iops_beside "the pull" "$dir/pull.log")
	cbtctl export stop --abort "$tok" >/dev/null
	echo "$n"
}

# The clock is read without starting a program (EPOCHREALTIME), and the
# timed runs start a copy of cbtctl and its libraries on tmpfs: under
# --icount the guest's clock jumps to its next timer whenever it waits for
# the host, as a 9p lookup of a program or library does, by up to seconds
# on a busy host.
seconds() {	# CMD...: wall time of one run
	local t0 t1
	t0=$EPOCHREALTIME
	"$@" >/dev/null 2>"$dir/stderr" || { cat "$dir/stderr" >&2; return 1; }
	t1=$EPOCHREALTIME
	python3 -c "print(f'{$t1 - $t0:.3f}')"
}

tmpfs_cbtctl() {	# prints the command that runs the copy
	tmpfs_prog "$dir" cbtctl
}

median() {
	printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

parts=${BENCH_SNAP_PARTS:-iops idle}

if [[ " $parts " == *" iops "* ]]; then
iops >/dev/null	# the first run after the fill is slower: not counted
alone=$(iops)
no_snap=$(iops_during --no-snapshot)
memory=$(iops_during)
store=$(iops_during --cbw-store=/dev/ram1)
pull=$(iops_during_pull)
alone2=$(iops)
base=$(((alone + alone2) / 2))

echo
printf '%-44s %8s %7s\n' "guest 4 KiB random writes during a full backup" "IOPS" "ratio"
printf '%-44s %8s %7s\n' "no backup (before, after)" "$alone" "$alone2"
ratio() { python3 -c "print(f'{$1 / $base:.3f}')"; }	# to the mean of the two
printf '%-44s %8s %7s\n' "backup --no-snapshot" "$no_snap" "$(ratio "$no_snap")"
printf '%-44s %8s %7s\n' "backup, snapshot, memory store (default)" "$memory" "$(ratio "$memory")"
printf '%-44s %8s %7s\n' "backup, snapshot, store device (brd)" "$store" "$(ratio "$store")"
printf '%-44s %8s %7s\n' "pull: export, nbdcopy, memory store" "$pull" "$(ratio "$pull")"
fi

if [[ " $parts " == *" idle "* ]]; then

read -ra cbtctl <<<"$(tmpfs_cbtctl)"
"${cbtctl[@]}" --help >/dev/null 2>&1 || { echo "bench: the tmpfs copy of cbtctl does not run" >&2; exit 1; }
snap=() plain=()
for ((r = 0; r < rounds; r++)); do
	rm -f "$dir"/*.qcow2
	if ((r % 2)); then
		plain+=("$(seconds "${ctl[@]}" "${cbtctl[@]}" backup --sync=full --no-snapshot "$name=$dir/p.qcow2")")
		snap+=("$(seconds "${ctl[@]}" "${cbtctl[@]}" backup --sync=full "$name=$dir/s.qcow2")")
	else
		snap+=("$(seconds "${ctl[@]}" "${cbtctl[@]}" backup --sync=full "$name=$dir/s.qcow2")")
		plain+=("$(seconds "${ctl[@]}" "${cbtctl[@]}" backup --sync=full --no-snapshot "$name=$dir/p.qcow2")")
	fi
done
a=$(median "${snap[@]}")
b=$(median "${plain[@]}")
echo
printf '%-44s %8s   %s\n' "full backup of the idle device" "seconds" "runs"
printf '%-44s %8s   %s\n' "through a snapshot (default)" "$a" "${snap[*]}"
printf '%-44s %8s   %s\n' "--no-snapshot" "$b" "${plain[*]}"
printf '%-44s %8.3f\n' "ratio (snapshot / --no-snapshot)" "$(python3 -c "print($a / $b)")"
fi
echo "(${size_mb} MiB brd, fio ${runtime} s, $rounds rounds, $(nproc) CPUs, $(uname -r))"
