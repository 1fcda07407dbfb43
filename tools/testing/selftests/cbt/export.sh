#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# Pull mode (cbtctl export), read by real NBD clients with no cbtctl in the
# data path: nbdinfo --map and qemu-img map list exactly the extents of the
# frozen bitmaps; nbdcopy pulls the instant while the guest overwrites the
# device; an incremental pulled extent by extent into a qcow2 overlay (as
# libvirt's clients do) makes a chain equal to the instant; two devices at
# one instant; abort, a killed export or server and recover lose no bit; a
# non-owner cannot connect; a broken snapshot fails reads.
. "$(dirname "$0")/lib.sh"

require_root
require_tools dmsetup losetup qemu-io qemu-img qemu-nbd nbdinfo nbdcopy setpriv openssl mkfs.ext4 cbtctl
plan 8

export CBT_RUN_DIR=/tmp/cbtctl-run.$$
_tmp_dirs+=("$CBT_RUN_DIR")

# Not a multiple of any granularity used here.
SIZE=$(((64 << 20) + (12 << 10)))

# start_export OUT ARGS...: cbtctl export start --json ARGS into OUT; sets tok, pid, uri, sock.
start_export() {
	local out=$1
	shift
	cbtctl export start --json "$@" >"$out" || { fail "export start $*: $(cat "$out")"; return 1; }
	tok=$(json_field token <"$out")
	pid=$(json_field pid <"$out")
	uri=$(job_field "$out" 0 uri)
	sock=$(job_field "$out" 0 socket)
}

# bitmap_dirty OUT BITMAP: the dirty bytes `export start --json` OUT gives BITMAP (first device).
bitmap_dirty() {
	local out re='"name": "'"$2"'", "context": "[^"]*", "granularity": [0-9]+, "dirty_bytes": ([0-9]+)'
	out=$(<"$1")
	[[ $out =~ $re ]] && echo "${BASH_REMATCH[1]}"
}

# stop_exports: aborts every export a subtest left running (one that failed half way).
stop_exports() {
	local j
	for j in "$CBT_RUN_DIR"/cbtctl.*; do
		[[ $j =~ /cbtctl\.[0-9]+\.[0-9]+(\.[0-9a-f]{8}\.[0-9a-f]{8})?$ ]] || continue
		cbtctl export stop --abort "${j##*/}" >/dev/null 2>&1
	done
	return 0
}

# with_exports FUNCTION: runs a subtest whose exports go before its devices.
with_exports() {
	trap 'set +e; stop_exports; _cleanup' EXIT
	"$@"
}

# dirty_map URI BITMAP: the dirty runs nbdinfo reads, "offset length" a line.
dirty_map() {
	local off len type rest
	nbdinfo --map="qemu:dirty-bitmap:$2" "$1" >"$dir/map" || { fail "nbdinfo --map $2"; return 1; }
	while read -r off len type rest; do
		[ "$type" != 1 ] || echo "$off $len"
	done <"$dir/map"
}

# qemu_img_dirty SOCKET NAME BITMAP: the same from qemu-img map's x-dirty-bitmap
# (where "data": false marks a dirty run, as libvirt's clients read it).
qemu_img_dirty() {
	local line re='"start": ([0-9]+), "length": ([0-9]+),.*"data": false'
	qemu-img map --output=json --image-opts \
		"driver=nbd,server.type=unix,server.path=$1,export=$2,x-dirty-bitmap=qemu:dirty-bitmap:$3" \
		>"$dir/qmap" || { fail "qemu-img map $3"; return 1; }
	while IFS= read -r line; do
		[[ ! $line =~ $re ]] || echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
	done <"$dir/qmap"
}

# pull_extents URI-SOCKET NAME BITMAP TARGET: copies each dirty run from the
# export into qcow2 TARGET with qemu-img convert (raw offset/size windows).
pull_extents() {
	local off len n=0
	while read -r off len; do
		qemu-img convert -n --image-opts --target-image-opts \
			"driver=raw,offset=$off,size=$len,file.driver=nbd,file.server.type=unix,file.server.path=$1,file.export=$2" \
			"driver=raw,offset=$off,size=$len,file.driver=qcow2,file.file.filename=$4" ||
			{ fail "pull of $off+$len"; return 1; }
		n=$((n + 1))
	done < <(dirty_map "nbd+unix:///$2?socket=$1" "$3")
	echo "$n"
}

# nothing_left: no journal, export directory, view or NBD server remains.
nothing_left() {
	expect_eq "journals and export directories" "$(journals)" ""
	expect_eq "views" "$(views)" 0
	pgrep -x qemu-nbd >/dev/null && fail "an NBD server is still running"
	return 0
}

setup() {
	make_tmpdir dir
	cbt_over_file "$dir/disk" $SIZE "$1"
}

test_maps() {
	local dir loop name dev tok pid uri sock b want g4
	setup maps
	cbtctl bitmap add "$dev" g64 --granularity=64K
	cbtctl bitmap add "$dev" g4 --granularity=4K
	cbtctl bitmap add "$dev" g1m --granularity=1M
	qio "$dev" "${SEED_ROUND1[@]}" "write -P 0x11 $((SIZE - 4096)) 4096" "write -P 0x12 40M 4k"
	cbtctl bitmap add "$dev" empty
	g4=$(bitmap_field "$dev" g4)
	start_export "$dir/out" -b g64 -b g4 -b g1m -b empty "$dev"
	expect_eq "export name in the URI" "$uri" "nbd+unix:///$name?socket=$sock"
	# The seed's round, 64 KiB at 40 MiB and the last, partial granule (12 KiB).
	expect_eq "dirty bytes of g64" "$(bitmap_dirty "$dir/out" g64)" $((458752 + (76 << 10)))
	for b in g64 g4 g1m empty; do
		cbtctl extents "$dev" $b --frozen >"$dir/want.$b"
		slurp want "$dir/want.$b"
		# Into files: a client that fails (no such context) fails the test.
		dirty_map "$uri" $b >"$dir/got" || fail "nbdinfo --map of $b"
		expect_eq "nbdinfo's dirty runs of $b" "$(<"$dir/got")" "$want"
		qemu_img_dirty "$sock" "$name" $b >"$dir/got" || fail "qemu-img map of $b"
		expect_eq "qemu-img map's dirty runs of $b" "$(<"$dir/got")" "$want"
	done
	expect_eq "the socket's mode" "$(stat -c %a "$sock")" 600
	# The map ends at the device's end, past the last whole granule.
	expect_eq "g1m's last run ends at the end" "$(dirty_map "$uri" g1m | tail -n1)" \
		"$((64 << 20)) $((12 << 10))"
	dirty_map "$uri" empty >"$dir/got" || fail "nbdinfo --map of empty"
	expect_eq "the empty bitmap has no dirty run" "$(<"$dir/got")" ""
	# A non-owner cannot connect.
	setpriv --reuid=65534 --regid=65534 --clear-groups nbdinfo --size "$uri" \
		>/dev/null 2>&1 && fail "user nobody read the export"
	cbtctl export stop --abort "$tok" >"$dir/stop" || fail "stop --abort: $(cat "$dir/stop")"
	nothing_left
	expect_eq "g64 after the abort" "$(bitmap_field "$dev" g64)" $((458752 + (76 << 10)))
	expect_eq "g4 after the abort" "$(bitmap_field "$dev" g4)" "$g4"
	expect_eq "g64 not busy" "$(bitmap_field "$dev" g64 busy)" false
}

test_pulls() {
	local dir loop name dev tok pid uri sock n back=full.qcow2
	setup pulls
	cbtctl bitmap add "$dev" b0
	qio "$dev" "write -P 0x41 0 512" "write -P 0xd5 1M 32k" "write -P 0xdc 32M 124k"
	dd if="$dev" of="$dir/t0.raw" bs=1M iflag=direct status=none
	start_export "$dir/out" -b b0 "$dev"
	# The guest overwrites what the pull has not read yet.
	qio "$dev" "write -P 0x99 0 1M" "write -P 0x98 32M 64k"
	nbdcopy "$uri" "$dir/full.raw" || fail "nbdcopy"
	cmp "$dir/full.raw" "$dir/t0.raw" || fail "the full pull differs from the instant"
	cbtctl export stop --commit "$tok" >/dev/null || fail "stop --commit"
	nothing_left
	expect_eq "b0 holds the writes made during the pull" "$(bitmap_field "$dev" b0)" $((17 << 16))
	qemu-img convert -f raw -O qcow2 "$dir/full.raw" "$dir/full.qcow2"
	# Two incrementals pulled extent by extent into overlays, each over the last.
	for n in 1 2; do
		qio "$dev" "write -P 0x5$n $((n << 20)) 8k" "write -P 0x6$n $((n * 17 << 20)) 192k"
		dd if="$dev" of="$dir/t$n.raw" bs=1M iflag=direct status=none
		start_export "$dir/out" -b b0 --dirty-only "$dev"
		qio "$dev" "write -P 0x7$n 0 2M" "write -P 0x7$n $((n * 17 << 20)) 64k"
		qemu-img create -q -f qcow2 -b "$back" -F qcow2 "$dir/inc$n.qcow2" "$SIZE"
		back=inc$n.qcow2
		pull_extents "$sock" "$name" b0 "$dir/inc$n.qcow2" >"$dir/runs" || true
		cbtctl export stop --commit "$tok" >/dev/null || fail "stop --commit $n"
		chain_matches "$dir/inc$n.qcow2" "$dir/t$n.raw"
	done
	nothing_left
}

test_dirty_only_reads() {
	local dir loop name dev tok pid uri sock
	setup dirty
	cbtctl bitmap add "$dev" b0
	qio "$dev" "write -P 0x31 4M 64k"
	start_export "$dir/out" -b b0 --dirty-only "$dev"
	qemu-io -r -f raw -c "read -P 0x31 4M 64k" "$uri" >"$dir/io" 2>&1 || :
	has "$dir/io" "read 65536/65536" || fail "dirty chunk: $(cat "$dir/io")"
	# Elsewhere the snapshot keeps nothing: a read fails, never returns today's data.
	qemu-io -r -f raw -c "read 8M 64k" "$uri" >"$dir/io" 2>&1 || :
	has "$dir/io" "Input/output error" || fail "a clean chunk read: $(cat "$dir/io")"
	cbtctl export stop "$tok" >/dev/null || fail "stop (abort by default)"
	expect_eq "b0 after the abort" "$(bitmap_field "$dev" b0)" 65536
	nothing_left
}

test_two_devices() {
	local dir loop name dev tok pid uri sock d0 d1 u1
	make_tmpdir dir
	SIZE=$((32 << 20)) pattern_dev d0 two0 0x10
	SIZE=$((32 << 20)) pattern_dev d1 two1 0x20
	cbtctl bitmap add "$d0" b0
	cbtctl bitmap add "$d1" b0
	dd if="$d0" of="$dir/t0.raw" bs=1M iflag=direct status=none
	dd if="$d1" of="$dir/t1.raw" bs=1M iflag=direct status=none
	start_export "$dir/out" -b b0 "$d0" "$d1"
	u1=$(job_field "$dir/out" 1 uri)
	[[ $u1 == "nbd+unix:///${d1#/dev/mapper/}?socket="* ]] || fail "second URI: $u1"
	qio "$d0" "write -P 0x11 0 1M"
	qio "$d1" "write -P 0x21 0 1M"
	nbdcopy "$uri" "$dir/p0.raw" && nbdcopy "$u1" "$dir/p1.raw" || fail "nbdcopy"
	cmp "$dir/p0.raw" "$dir/t0.raw" || fail "device 0 differs from the instant"
	cmp "$dir/p1.raw" "$dir/t1.raw" || fail "device 1 differs from the instant"
	cbtctl export stop --commit "$tok" >/dev/null || fail "stop --commit"
	expect_eq "d0's bitmap" "$(bitmap_field "$d0" b0)" $((1 << 20))
	expect_eq "d1's bitmap" "$(bitmap_field "$d1" b0)" $((1 << 20))
	nothing_left
}

test_kills() {
	local dir loop name dev tok pid uri sock before server n
	setup kills
	cbtctl bitmap add "$dev" b0
	qio "$dev" "write -P 0x41 1M 64k"
	# The export's own process killed: its servers go with it; recover aborts.
	start_export "$dir/out" -b b0 "$dev"
	qio "$dev" "write -P 0x42 2M 64k"
	kill -9 "$pid"
	cbtctl recover >"$dir/rec" || fail "recover: $(cat "$dir/rec")"
	nothing_left
	expect_eq "b0 after the kill and recover" "$(bitmap_field "$dev" b0)" $((2 << 16))
	expect_eq "b0 busy" "$(bitmap_field "$dev" b0 busy)" false
	expect_eq "snapshot" "$(snap_state "$dev")" none
	# The server killed: the export aborts itself; a commit then fails.
	start_export "$dir/out" -b b0 "$dev"
	server=$(pgrep -x qemu-nbd) || fail "no qemu-nbd"
	kill -9 "$server"
	qio "$dev" "write -P 0x43 3M 64k"
	cbtctl export stop --commit "$tok" >"$dir/stop" 2>&1 && fail "a commit after the server died"
	has "$dir/stop" "NBD server" || fail "the refusal does not say why: $(cat "$dir/stop")"
	nothing_left
	expect_eq "b0 after the server died" "$(bitmap_field "$dev" b0)" $((3 << 16))
	# Refusals change nothing.
	cbtctl export stop --commit "$tok" 2>/dev/null && fail "a second stop"
	cbtctl export start -b nosuch "$dev" >"$dir/err" 2>&1 && fail "an unknown bitmap"
	has "$dir/err" nosuch || fail "the refusal does not name the bitmap: $(cat "$dir/err")"
	cbtctl export start --dirty-only "$dev" 2>/dev/null && fail "--dirty-only without a bitmap"
	CBT_QEMU_NBD=/bin/false cbtctl export start -b b0 "$dev" 2>"$dir/err" &&
		fail "a server that does not start"
	has "$dir/err" "NBD server" || fail "the server's failure: $(cat "$dir/err")"
	nothing_left
	# The start command killed before it could print the token: the export aborts.
	printf '#!/bin/sh\nsleep 2\nexec qemu-nbd "$@"\n' >"$dir/slow-nbd"
	chmod +x "$dir/slow-nbd"
	CBT_QEMU_NBD=$dir/slow-nbd cbtctl export start -b b0 "$dev" >/dev/null 2>&1 &
	pid=$!
	nap 1
	kill -TERM $pid
	wait $pid 2>/dev/null || :
	for ((n = 0; n < 100; n++)); do
		[ -z "$(journals)" ] && break
		nap 0.1
	done
	nothing_left
	expect_eq "b0 after the start was killed" "$(bitmap_field "$dev" b0)" $((3 << 16))
	expect_eq "snapshot after the refusals" "$(snap_state "$dev")" none
}

test_broken() {
	local dir loop name dev tok pid uri sock
	setup broken
	cbtctl bitmap add "$dev" b0
	start_export "$dir/out" -b b0 --cbw-memory=64K --cbw-timeout=1 "$dev"
	# 256 KiB of overwrites do not fit into 64 KiB: a write waits 1 s, the snapshot breaks.
	qio "$dev" "write -P 0x55 0 256k"
	expect_eq "snapshot" "$(snap_state "$dev")" broken
	qemu-io -r -f raw -c "read 0 64k" "$uri" >"$dir/io" 2>&1 || :
	has "$dir/io" "Input/output error" || fail "a read of a broken snapshot: $(cat "$dir/io")"
	cbtctl export stop --abort "$tok" >/dev/null || fail "stop --abort"
	expect_eq "b0 after the abort" "$(bitmap_field "$dev" b0)" $((256 << 10))
	nothing_left
}

# make_certs DIR: a CA, and certificates of it for a server at 127.0.0.1
# (DIR/server) and a client (DIR/client), as qemu-nbd and libnbd read them.
make_certs() {
	local who d=$1
	mkdir -p "$d/server" "$d/client"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
		-keyout "$d/ca-key.pem" -out "$d/ca-cert.pem" -days 2 -subj /CN=cbt-test-ca 2>/dev/null
	for who in server client; do
		openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
			-keyout "$d/$who/$who-key.pem" -out "$d/$who.csr" -subj "/CN=$who" 2>/dev/null
		printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=%sAuth\n' "$who" >"$d/$who.ext"
		openssl x509 -req -in "$d/$who.csr" -CA "$d/ca-cert.pem" -CAkey "$d/ca-key.pem" \
			-CAcreateserial -out "$d/$who/$who-cert.pem" -days 2 -extfile "$d/$who.ext" \
			2>/dev/null
		cp "$d/ca-cert.pem" "$d/$who/"
	done
}

test_tcp() {
	local dir loop name dev tok pid uri sock
	setup tcp
	cbtctl bitmap add "$dev" b0
	qio "$dev" "write -P 0x41 1M 64k"
	start_export "$dir/out" -b b0 --tcp=127.0.0.1:10809 "$dev"
	expect_eq "URI" "$uri" "nbd://127.0.0.1:10809/$name"
	expect_eq "size over TCP" "$(nbdinfo --size "$uri")" "$SIZE"
	expect_eq "dirty runs over TCP" "$(dirty_map "$uri" b0)" "$((1 << 20)) 65536"
	cbtctl export stop "$tok" >/dev/null || fail "stop"
	# Off loopback only with TLS; refused before anything is done.
	cbtctl export start -b b0 --tcp=0.0.0.0:10809 "$dev" 2>"$dir/err" &&
		fail "a TCP export off loopback without TLS"
	has "$dir/err" "TLS" || fail "the refusal does not say TLS: $(cat "$dir/err")"
	nothing_left
	make_certs "$dir/pki"
	start_export "$dir/out" -b b0 --tcp=127.0.0.1:10810 --tls-creds="$dir/pki/server" "$dev"
	expect_eq "TLS URI" "$uri" "nbds://127.0.0.1:10810/$name"
	expect_eq "size over TLS" \
		"$(nbdinfo --size "$uri?tls-certificates=$dir/pki/client")" "$SIZE"
	expect_eq "dirty runs over TLS" "$(dirty_map "$uri?tls-certificates=$dir/pki/client" b0)" \
		"$((1 << 20)) 65536"
	nbdinfo --size "nbd://127.0.0.1:10810/$name" >/dev/null 2>&1 &&
		fail "a client without TLS was served"
	# TLS without a client certificate of the CA: refused too.
	mkdir "$dir/pki/nocert"
	cp "$dir/pki/ca-cert.pem" "$dir/pki/nocert/"
	nbdinfo --size "$uri?tls-certificates=$dir/pki/nocert" >/dev/null 2>&1 &&
		fail "a client without a certificate was served"
	# A port some other server holds is refused, not taken for ours.
	cbtctl export start -b b0 --tcp=127.0.0.1:10810 "$dev" 2>"$dir/err" &&
		fail "a port in use was taken"
	has "$dir/err" "in use" || fail "the refusal: $(cat "$dir/err")"
	cbtctl export stop --commit "$tok" >/dev/null || fail "stop --commit"
	expect_eq "b0 after the commit" "$(bitmap_field "$dev" b0)" 0
	nothing_left
}

# loops: the number of loop devices attached.
loops() {
	local n=0 f
	for f in /sys/block/loop*/loop/backing_file; do
		[ -e "$f" ] && n=$((n + 1))
	done
	echo $n
}

test_file_store() {
	local dir loop name dev tok pid uri sock n0 bpid rc n
	make_tmpdir dir
	# Larger than the 64 MiB memory store: an export gets a file store by default.
	cbt_over_file "$dir/disk" $((68 << 20)) store
	cbtctl bitmap add "$dev" b0
	qio "$dev" "write -P 0x21 0 68M"
	dd if="$dev" of="$dir/t0.raw" bs=1M iflag=direct status=none
	mkdir "$dir/store"
	n0=$(loops)
	CBT_STORE_DIR=$dir/store start_export "$dir/out" -b b0 "$dev"
	[[ $(snap_info "$dev") == *" store=7:"* ]] || fail "not on a loop device: $(snap_info "$dev")"
	expect_eq "loop devices while exporting" "$(loops)" $((n0 + 1))
	entries n "$dir/store"
	expect_eq "names in the store directory" "${#n[@]}" 0
	# Room for every chunk of the device (memory would have held 64 MiB), as
	# the kernel counts it: filling it to show that cost the debug kernel 39 s.
	# Overwrites at both ends land in the file.
	[[ $(snap_info "$dev") =~ \ limit=([0-9]+) ]] || fail "no limit: $(snap_info "$dev")"
	[ "${BASH_REMATCH[1]}" -ge $((68 << 20)) ] ||
		fail "the file store holds ${BASH_REMATCH[1]} bytes, not the device's $((68 << 20))"
	qio "$dev" "write -P 0x22 0 3M" "write -P 0x22 65M 3M"
	[[ $(snap_info "$dev") =~ \ used=([0-9]+) ]] && [ "${BASH_REMATCH[1]}" -ge $((6 << 20)) ] ||
		fail "the overwrites are not in the store: $(snap_info "$dev")"
	expect_eq "snapshot" "$(snap_state "$dev")" running
	nbdcopy "$uri" "$dir/p.raw" || fail "nbdcopy"
	cmp "$dir/p.raw" "$dir/t0.raw" || fail "the pull differs from the instant"
	rm -f "$dir/p.raw" "$dir/t0.raw"
	cbtctl export stop --commit "$tok" >/dev/null || fail "stop --commit"
	nothing_left
	expect_eq "loop devices after the export" "$(loops)" "$n0"
	# --cbw-memory keeps a pull in memory.
	start_export "$dir/out" -b b0 --cbw-memory=32M "$dev"
	[[ $(snap_info "$dev") != *" store=7:"* ]] || fail "--cbw-memory took a file store"
	cbtctl export stop "$tok" >/dev/null
	# A backup into a file store it names, killed while its snapshot runs: recover
	# stops the snapshot, and the loop device and the file go with it.
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync=full --cbw-store="$dir/store/f" \
		"$dev=$dir/full.qcow2" >"$dir/bout" 2>&1 &
	bpid=$!
	wait_stopped $bpid "phase snapshot"
	[[ $(snap_info "$dev") == *" store=7:"* ]] || fail "the backup's store: $(snap_info "$dev")"
	[ -e "$dir/store/f" ] && fail "the store file still has its name"
	kill -9 $bpid
	wait $bpid 2>/dev/null || :
	cbtctl recover >/dev/null || fail "recover"
	nothing_left
	expect_eq "loop devices after recover" "$(loops)" "$n0"
	# The same backup to the end, the guest overwriting at its instant.
	dd if="$dev" of="$dir/t1.raw" bs=1M iflag=direct status=none
	CBT_TEST_STOP_AT=snapshot cbtctl backup --sync=full --cbw-store="$dir/store/f" \
		"$dev=$dir/full.qcow2" >"$dir/bout" 2>&1 &
	bpid=$!
	wait_stopped $bpid "phase snapshot"
	qio "$dev" "write -P 0x23 8M 8M"
	kill -CONT $bpid
	wait $bpid && rc=0 || rc=$?
	expect_eq "backup exit status ($(<"$dir/bout"))" "$rc" 0
	chain_matches "$dir/full.qcow2" "$dir/t1.raw"
	expect_eq "loop devices after the backup" "$(loops)" "$n0"
	[ -e "$dir/store/f" ] && fail "the store file is left"
	cbtctl backup --sync=full --cbw-store="$dir/t1.raw" "$dev=$dir/x.qcow2" 2>"$dir/err" &&
		fail "an existing file taken as a store"
	has "$dir/err" "exists" || fail "the refusal: $(cat "$dir/err")"
	[ -s "$dir/t1.raw" ] || fail "the existing file was harmed"
	nothing_left
	# A store on a file system of the exported device itself is refused
	# (where the kernel has ext4: the debug kernel has no block file system).
	mkfs.ext4 -q "$dev" && mkdir "$dir/mnt" || fail "mkfs"
	if mount -t ext4 "$dev" "$dir/mnt" 2>"$dir/err"; then
		CBT_STORE_DIR=$dir/mnt cbtctl export start -b b0 "$dev" 2>"$dir/err" &&
			fail "a store on the device it preserves"
		umount "$dir/mnt"
		has "$dir/err" "a device it preserves" || fail "the refusal: $(cat "$dir/err")"
	elif has "$dir/err" "unknown filesystem type"; then
		echo "# no ext4 in $(uname -r): a store on the exported device is not tried"
	else
		fail "mount: $(cat "$dir/err")"
	fi
	nothing_left
}

run_test "nbdinfo and qemu-img map list the frozen extents; nobody else connects" with_exports test_maps
run_test "full pull with nbdcopy under overwrite, incrementals pulled extent by extent" with_exports test_pulls
run_test "--dirty-only: dirty chunks read, others fail" with_exports test_dirty_only_reads
run_test "two devices exported at one instant" with_exports test_two_devices
run_test "killed export, killed server, refusals: no bit lost" with_exports test_kills
run_test "a broken snapshot fails reads" with_exports test_broken
run_test "TCP on loopback, TLS with x509 credentials" with_exports test_tcp
run_test "file stores: an export's default past memory, a backup's, killed" with_exports test_file_store
finish
