# SPDX-License-Identifier: GPL-2.0
# Helpers for the dm-cbt shell selftests: kselftest exit codes, TAP subtest
# lines, loop and dm devices that are removed on exit whatever happens.

KSFT_PASS=0
KSFT_FAIL=1
KSFT_SKIP=4

cbt_selftest_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cbt_top=$(cd "$cbt_selftest_dir/../../../.." && pwd)
_nr_tests=0
_nr_failed=0
_nr_planned=0
_dm_devs=()
_loop_devs=()
_tmp_dirs=()
# Each program's own records of temporaries (cbtctl's CBT_STATE_DIR), not
# the machine's: what one leaves cannot fail another, and its recover
# never acts on the machine's. A program may set another after this.
export CBT_STATE_DIR=${TMPDIR:-/tmp}/cbtctl-state.$$
_tmp_dirs+=("$CBT_STATE_DIR")

# nap SECONDS: a pause without a program: a read that times out on a pipe
# this shell holds both ends of (sleep(1) took 0.3 s and more to start on
# the debug kernel, where the polls below wait a tenth of a second).
exec {_nap_fd}<> <(:)
nap() {
	local __x
	read -rt "$1" -u "$_nap_fd" __x || true
}

# The guest writes of QEMU's incremental-backup test, in qemu-io syntax: the
# first round dirties 458752 bytes at 64 KiB granularity.
SEED_ROUND1=("write -P 0xab 0 512" "write -P 0xfe 16M 256k" "write -P 0x64 32736k 64k")
SEED_ROUND2=("write -P 0x9a 0 512" "write -P 0x55 8M 352k" "write -P 0x78 15872k 1M")

# plan N: the TAP plan line for this program's N subtests.
plan() {
	_nr_planned=$1
	echo "TAP version 13"
	echo "1..$1"
}

skip_all() {
	echo "1..0 # SKIP $*"
	exit $KSFT_SKIP
}

require_root() {
	[ "$(id -u)" = 0 ] || skip_all "must run as root"
}

# require_tools TOOL...: skip the whole program when a tool is missing.
require_tools() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || skip_all "$t is not installed"
	done
}

# Every dm device, loop device and directory made here goes on exit: one
# program for each kind (the newest dm device first, as devices stack), or
# one per device when a batch fails (a device held open), so that a busy
# device does not keep the others.
_cleanup() {
	local i rev=()
	for ((i = ${#_dm_devs[@]} - 1; i >= 0; i--)); do
		rev+=("${_dm_devs[i]}")
	done
	if [ ${#rev[@]} -gt 0 ] && ! dmsetup remove --retry "${rev[@]}" >/dev/null 2>&1; then
		for i in "${rev[@]}"; do
			[ -e "/dev/mapper/$i" ] && dmsetup remove --retry "$i" >/dev/null 2>&1
		done
	fi
	if [ ${#_loop_devs[@]} -gt 0 ] && ! losetup -d "${_loop_devs[@]}" 2>/dev/null; then
		for i in "${_loop_devs[@]}"; do
			losetup -d "$i" 2>/dev/null
		done
	fi
	[ ${#_tmp_dirs[@]} = 0 ] || rm -rf "${_tmp_dirs[@]}"
}
trap _cleanup EXIT

# make_tmpdir VAR: a scratch directory in VAR.
make_tmpdir() {
	local d
	d=$(mktemp -d "${TMPDIR:-/tmp}/cbt-test.XXXXXX") || return 1
	_tmp_dirs+=("$d")
	printf -v "$1" '%s' "$d"
}

# make_loop VAR FILE: attaches FILE (direct I/O) and puts its loop device in VAR.
make_loop() {
	local dev
	dev=$(losetup --find --show "$2") || return 1
	_loop_devs+=("$dev")
	printf -v "$1" '%s' "$dev"
}

# cbt_over_file FILE BYTES TAG: a sparse FILE of BYTES under a loop device
# under a cbt device, all removed on exit; sets the caller's loop, name, dev.
cbt_over_file() {
	truncate -s "$2" "$1" || return 1
	make_loop loop "$1" || return 1
	name=$(dm_name "$3")
	dm_create "$name" "0 $(($2 / 512)) cbt $loop" || return 1
	dev=/dev/mapper/$name
}

# pattern_dev VAR TAG PATTERN: a cbt device of $SIZE bytes over $dir/TAG.raw,
# written with PATTERN at 0, 1 MiB and 8 MiB before its end; its path in VAR.
pattern_dev() {
	local loop name dev
	cbt_over_file "$dir/$2.raw" "$SIZE" "$2" || return 1
	printf -v "$1" '%s' "$dev"
	qio "$dev" "write -P $3 0 512" "write -P $3 1M 32k" "write -P $3 $((SIZE - (8 << 20))) 124k"
}

# dm_create NAME TABLE: creates a dm device that is removed on exit.
dm_create() {
	dmsetup create "$1" --table "$2" || return 1
	_dm_devs+=("$1")
}

# A unique dm name per test program and call.
dm_name() {
	echo "cbt-test-$$-$1"
}

# qio [--buffered] TARGET CMD...: qemu-io commands on a raw device (with
# O_DIRECT unless --buffered, which allows writes unaligned to sectors), a
# raw file or a qcow2 image (a name ending in .qcow2, read through its chain).
# qemu-io exits 0 even when a command fails, or when a read's -P pattern does
# not match: its words are read.
qio() {
	local direct=-n target c args=() out
	[ "$1" = --buffered ] && { direct=; shift; }
	target=$1
	shift
	case $target in
	*.qcow2) args=(-f qcow2) ;;
	*) args=(-f raw) ;;
	esac
	[ -b "$target" ] && [ -n "$direct" ] && args+=("$direct")
	for c in "$@"; do
		args+=(-c "$c")
	done
	out=$(qemu-io "${args[@]}" "$target" 2>&1) || fail "qemu-io on $target: $out"
	if [[ ${out,,} =~ error|fail|invalid|cannot ]]; then
		fail "qemu-io on $target: $out"
	fi
}

# The helpers below parse with bash alone: in a TCG guest every program
# started costs a tenth of a second on Debian's kernels and up to a second
# on the debug kernel (sed, grep), and tests ask often.

# json_field FIELD: the value of FIELD (its last on a line) in each line of
# one-line JSON objects on standard input (strings without their quotes).
json_field() {
	local line str='^.*"'"$1"'": "(([^"\\]|\\.)*)"' val='^.*"'"$1"'": ([^,}]*)'
	while IFS= read -r line || [ -n "$line" ]; do
		if [[ $line =~ $str ]] || [[ $line =~ $val ]]; then
			printf '%s\n' "${BASH_REMATCH[1]}"
		fi
	done
}

# slurp VAR FILE: FILE's contents in VAR without their final newlines, as
# $(cat FILE) gives them.
slurp() {
	local __s=
	IFS= read -r -d '' __s <"$2" || :
	while [[ $__s == *$'\n' ]]; do
		__s=${__s%$'\n'}
	done
	printf -v "$1" '%s' "$__s"
}

# has FILE STRING: FILE contains STRING (grep -qF).
has() {
	local __c
	slurp __c "$1"
	[[ $__c == *"$2"* ]]
}

# has_line FILE LINE: one of FILE's lines is LINE (grep -qxF).
has_line() {
	local __c
	slurp __c "$1"
	[[ $'\n'$__c$'\n' == *$'\n'"$2"$'\n'* ]]
}

# entries VAR DIR: the names in DIR, dot files too (ls -A), in array VAR.
entries() {
	local -n __e=$1
	local __f
	__e=()
	for __f in "$2"/.[!.]* "$2"/..?* "$2"/*; do
		[ -e "$__f" ] || [ -L "$__f" ] || continue
		__e+=("${__f##*/}")
	done
}

# tmp_files DIR: the names in DIR ending in .tmp (a copy's temporaries).
tmp_files() {
	local __n __all
	entries __all "$1"
	for __n in "${__all[@]}"; do
		[[ $__n != *.tmp ]] || echo "$__n"
	done
}

# journals: what is in $CBT_RUN_DIR besides its locks directory, and the
# records of temporaries in $CBT_STATE_DIR.
journals() {
	local __n __all __rec=$CBT_STATE_DIR/temporaries
	if [ -d "$CBT_RUN_DIR" ]; then
		entries __all "$CBT_RUN_DIR"
		for __n in "${__all[@]}"; do
			[ "$__n" = locks ] || echo "$__n"
		done
	fi
	[ -d "$__rec" ] || return 0
	entries __all "$__rec"
	for __n in "${__all[@]}"; do
		echo "temporaries/$__n"
	done
}

# active DM_NAME: the dm device is not suspended.
active() {
	[[ $(dmsetup info "$1") =~ State:\ *ACTIVE ]]
}

# bitmap_field DEV BITMAP [FIELD]: a field (default count) of the bitmap in
# `cbtctl status --json`.
bitmap_field() {
	local out
	local seg
	out=$(cbtctl status "$1" --json) || return 1
	# Each object from one '{' to the next.
	while [[ $out == *'{'* ]]; do
		out=${out#*'{'}
		seg=${out%%'{'*}
		[[ $seg != *"\"name\": \"$2\","* ]] || json_field "${3:-count}" <<<"$seg"
	done
}

# bitmaps DEV: how many bitmaps `cbtctl status --json` lists on DEV.
bitmaps() {
	local out n=0
	out=$(cbtctl status "$1" --json) || return 1
	while [[ $out == *'{"name": '* ]]; do
		out=${out#*'{"name": '}
		n=$((n + 1))
	done
	echo $n
}

# inject_state DEV: the error-injection engine's state on DEV.
inject_state() {
	local out
	out=$(cbtctl status "$1" --json) || return 1
	[[ $out =~ \"inject\":\ \{\"state\":\ ([0-9]+) ]] && echo "${BASH_REMATCH[1]}"
}

# job_field JSON INDEX FIELD: a field of job INDEX in `cbtctl backup --json` output.
job_field() {
	local out lines
	out=$(<"$1")
	mapfile -t lines <<<"${out//'{"device"'/$'\n''{"device"'}"
	json_field "$3" <<<"${lines[$2 + 1]:-}"
}

# chain_matches IMAGE DEV: qemu-img check passes on IMAGE (a qcow2) and its
# chain reads exactly as DEV (a block device or a raw file) does. A device
# is read with O_DIRECT: what it returns, not its page cache, and a quarter
# cheaper than through the page cache (1.5 against 2.2 s for 64 MiB on the
# debug kernel, 0.54 against 0.72 s on 6.1).
chain_matches() {
	qemu-img check -q "$1" || fail "qemu-img check $1"
	if [ -b "$2" ]; then
		qemu-img compare -q --image-opts "driver=qcow2,file.filename=${1//,/,,}" \
			"driver=raw,file.driver=host_device,file.filename=${2//,/,,},file.cache.direct=on" ||
			fail "$1 does not match $2"
	else
		qemu-img compare -q -F raw "$1" "$2" || fail "$1 does not match $2"
	fi
}

# views: the number of snapshot views (cbt-snapshot devices) on the system.
views() {
	local line n=0
	while IFS= read -r line; do
		[[ $line != *' cbt-snapshot '* ]] || n=$((n + 1))
	done < <(dmsetup table)
	echo $n
}

# snap_info DEV: DEV's answer to "snapshot info".
snap_info() {
	dmsetup message "${1#/dev/mapper/}" 0 snapshot info
}

# snap_state DEV: the state= field of DEV's "snapshot info".
snap_state() {
	if [[ $(snap_info "$1") =~ ^.*state=([a-z]*) ]]; then
		echo "${BASH_REMATCH[1]}"
	fi
}

# wait_held DEV PID WHERE: waits until rule "hold" on DEV holds a read of
# the copy (cbtctl PID); after 30 s kills it and fails.
wait_held() {
	local n=0
	until [[ $(cbtctl inject "$1" list) == *"id=hold hits=1 "* ]]; do
		n=$((n + 1))
		[ $n -lt 300 ] || { kill -9 "$2"; fail "the copy never reached $3"; return 1; }
		nap 0.1
	done
}


# wait_stopped PID WHAT: waits (up to 60 s) until PID has stopped itself.
wait_stopped() {
	local n=0 stat
	until { read -r stat <"/proc/$1/stat"; } 2>/dev/null && stat=${stat##*) } &&
		[ "${stat%% *}" = T ]; do
		n=$((n + 1))
		[ $n -lt 600 ] || { kill -9 "$1"; fail "cbtctl never reached $2"; return 1; }
		nap 0.1
	done
}

# run_test NAME FUNCTION: one TAP subtest; the function fails by returning
# non-zero, or skips with skip_test.
run_test() {
	local name=$1 rc why start=$SECONDS
	shift
	_nr_tests=$((_nr_tests + 1))
	# CBT_SUBTEST (a grep -E pattern) runs only the subtests it names.
	if [ -n "${CBT_SUBTEST:-}" ] && ! [[ $name =~ $CBT_SUBTEST ]]; then
		echo "ok $_nr_tests $name # SKIP not selected by CBT_SUBTEST"
		return
	fi
	# skip_test's reason, in a file of the program's (no program started
	# here: each costs up to a second on the debug kernel).
	if [ -z "${_skip_why:-}" ]; then
		_skip_why=${TMPDIR:-/tmp}/cbt-skip.$$
		_tmp_dirs+=("$_skip_why")
	fi
	: >"$_skip_why"
	# A subshell does not inherit the EXIT trap: what the subtest makes
	# goes when it ends, not with the program.
	(
		_dm_devs=() _loop_devs=() _tmp_dirs=()
		trap "set +e; _cleanup" EXIT
		set -e
		"$@"
	)
	rc=$?
	why=
	read -r why <"$_skip_why"
	echo "# $name: $((SECONDS - start)) s"
	if [ $rc = 0 ]; then
		echo "ok $_nr_tests $name"
	elif [ $rc = $KSFT_SKIP ]; then
		echo "ok $_nr_tests $name # SKIP ${why:-no reason given}"
	else
		echo "not ok $_nr_tests $name"
		_nr_failed=$((_nr_failed + 1))
	fi
}

# skip_test REASON: skips the running subtest. run_tests.sh counts a skip as
# a failure unless REASON says a tool is "not installed".
skip_test() {
	echo "$*" >"$_skip_why"
	exit $KSFT_SKIP
}

# fail MESSAGE: reports why a subtest failed and fails it.
fail() {
	echo "# FAIL: $*" >&2
	return 1
}

# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
	[ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
}

# finish: the program's exit status from its subtests.
finish() {
	if [ "$_nr_tests" != "$_nr_planned" ]; then
		echo "# planned $_nr_planned subtests, ran $_nr_tests" >&2
		exit $KSFT_FAIL
	fi
	[ "$_nr_failed" = 0 ] && exit $KSFT_PASS
	exit $KSFT_FAIL
}
