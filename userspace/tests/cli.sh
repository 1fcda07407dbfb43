#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# cbtctl's command line, on the host and without any device: --help and
# --version, usage errors (exit 2, nothing done), options as --opt=V and
# --opt V and after --, that the installed build has no test hooks, the bash
# completion and the man page against `cbtctl help`.
# usage: cli.sh TEST_CBTCTL RELEASE_CBTCTL [META_IMAGE] (run by `make unit`);
# META_IMAGE (tests/meta-image.c) writes a metadata device into a file for
# the metadata show/format tests.
# shellcheck disable=SC2015 # "check && ok || bad": ok never fails
set -u
cbtctl=$1
release=$2
meta_image=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
man=$top/Documentation/cbtctl.8
completion=$top/userspace/cbtctl/cbtctl.bash-completion
passed=0 failed=0
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cbt-cli.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# Journals and locks of a backup that gets past its parsing stay here.
export CBT_RUN_DIR=$tmp/run

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "cli.sh: FAIL: $*" >&2; }

# expect RC CMD...: runs cbtctl with CMD; its output is in $tmp/out, $tmp/err.
expect() {
	local want=$1 rc
	shift
	"$cbtctl" "$@" >"$tmp/out" 2>"$tmp/err" && rc=0 || rc=$?
	if [ "$rc" = "$want" ]; then ok; else bad "cbtctl $*: exit $rc, expected $want: $(cat "$tmp/err")"; fi
}

# has FILE TEXT: FILE contains TEXT (fixed string).
has() {
	if grep -qF -- "$2" "$1"; then ok; else bad "$1 lacks '$2': $(head -c 600 "$1")"; fi
}

# Device-free: a name no dm device has, and on a host without device-mapper
# every operation fails (exit 1) after the parsing succeeded.
dev=cbt-cli-test-no-such-device

mapfile -t commands < <("$cbtctl" help | sed -n 's/^  \([a-z]\+\) .*/\1/p')
[ "${#commands[@]}" -ge 9 ] && ok || bad "cbtctl help lists ${#commands[@]} commands"

# --help and -h on every command and bitmap subcommand, usage on stdout, exit 0.
for c in "${commands[@]}" "bitmap add" "bitmap remove" "bitmap clear" "bitmap enable" \
	"bitmap disable" "bitmap merge" "metadata size" "metadata show" "metadata format"; do
	for h in --help -h; do
		# shellcheck disable=SC2086
		expect 0 $c $h
		has "$tmp/out" "usage: cbtctl ${c%% *}"
	done
done
expect 0 --help
has "$tmp/out" "usage: cbtctl"
expect 0 help bitmap
has "$tmp/out" "cbtctl bitmap merge"
expect 2
expect 2 frobnicate

# The version, from dkms.conf.
version=$(sed -n 's/^PACKAGE_VERSION="\(.*\)"$/\1/p' "$top/dkms.conf")
for v in --version -V version; do
	expect 0 $v
	[ "$(cat "$tmp/out")" = "cbtctl $version" ] && ok || bad "cbtctl $v: $(cat "$tmp/out")"
done

# Unknown or malformed options: exit 2, the option named, nothing done.
for c in "${commands[@]}" "bitmap add" "bitmap remove" "bitmap merge" "metadata size" \
	"metadata show" "metadata format"; do
	# shellcheck disable=SC2086
	expect 2 $c --no-such-option
	has "$tmp/err" "'--no-such-option'"
done
expect 2 --no-such-option
expect 2 backup --sync=full -Z "$dev=$tmp/t.qcow2"
has "$tmp/err" "unknown option '-Z'"
expect 2 backup --sync=full --json=yes "$dev=$tmp/t.qcow2"
has "$tmp/err" "'--json=yes'"
expect 2 backup --sync
has "$tmp/err" "option '--sync' needs a value"
expect 2 backup --sync=sometimes "$dev=$tmp/t.qcow2"
expect 2 bitmap add "$dev" b0 --granularity
expect 2 bitmap add "$dev" b0 extra
expect 2 bitmap remove "$dev"
expect 2 status "$dev" "$dev"
expect 2 extents "$dev"
expect 2 list extra
expect 2 recover --force

# --retries only with --on-source-error=retry; -p and -q exclude each other.
expect 2 backup --sync=full --retries=2 "$dev=$tmp/t.qcow2"
has "$tmp/err" "--retries needs --on-source-error=retry"
expect 2 backup --sync=full --on-source-error=report --retries 2 "$dev=$tmp/t.qcow2"
expect 2 backup --sync=full -p -q "$dev=$tmp/t.qcow2"

# Well-formed command lines get past the parsing: they fail (1) on the
# missing device, not on their options (2). --opt V, --opt=V, short
# options, options after operands, and "--" ending the options.
expect 1 backup --sync full "$dev=$tmp/t.qcow2"
expect 1 backup --sync=full "$dev=$tmp/t.qcow2"
expect 1 backup -s full -b b0 -q "$dev=$tmp/t.qcow2"
expect 1 backup "$dev=$tmp/t.qcow2" --sync incremental --bitmap b0 --on-source-error retry --retries 2
expect 1 backup --sync=full --progress --cbw-memory 1M --cbw-timeout 5 --json -- "$dev=$tmp/t.qcow2"
[ ! -e "$tmp/t.qcow2" ] && ok || bad "a failed backup left its target"
expect 1 bitmap add "$dev" b0 --granularity 64K --disabled
expect 1 bitmap add -g 64K -d "$dev" b0
expect 1 bitmap add -- "$dev" b0
expect 1 bitmap merge "$dev" b0 b1
expect 1 status "$dev" --json
expect 1 status -- "$dev"
expect 1 extents "$dev" b0 -f
expect 1 list --json
# After "--" an operand that looks like an option is an operand.
expect 1 status -- --json
has "$tmp/err" "--json"

# Without a device-mapper driver, libdevmapper's ENOMEM is not what shows.
if ! grep -q device-mapper /proc/misc 2>/dev/null; then
	expect 1 status "$dev"
	has "$tmp/err" "no device-mapper driver (is dm_mod loaded?)"
	grep -q "Cannot allocate memory" "$tmp/err" && bad "ENOMEM shown: $(cat "$tmp/err")" || ok
fi

# metadata: on plain files, no device-mapper needed.
expect 0 metadata size --length 1T
[ "$(cat "$tmp/out")" = $(((4 + 512) * 4096)) ] && ok || bad "metadata size 1T: $(cat "$tmp/out")"
expect 0 metadata size -l 1G -g 512 -b 64
[ "$(cat "$tmp/out")" = $(((4 + 64 * 64) * 4096)) ] && ok || bad "metadata size -b 64: $(cat "$tmp/out")"
expect 0 metadata size --length=1000 --granularity=4K --bitmaps=0 --json
[ "$(cat "$tmp/out")" = '{"version": 1, "length": 1000, "granularity": 4096, "bitmaps": 0, "bytes": 16384}' ] &&
	ok || bad "metadata size --json: $(cat "$tmp/out")"
expect 2 metadata size
has "$tmp/err" "needs --length"
expect 2 metadata size -l 1G -g 3K
expect 2 metadata size -l 1G -g 2G
expect 2 metadata size -l 1G -b 65
expect 2 metadata size -l 1G extra
expect 2 metadata frobnicate
expect 2 metadata
expect 2 metadata show
expect 2 metadata format "$tmp/a" "$tmp/b"
expect 1 metadata show "$tmp/no-such-file"
has "$tmp/err" "$tmp/no-such-file: cannot open for reading: No such file or directory"
truncate -s 1M "$tmp/meta"
expect 0 metadata show "$tmp/meta"
has "$tmp/out" "unformatted"
expect 0 metadata show "$tmp/meta" --json
has "$tmp/out" '"formatted": false'
truncate -s 100 "$tmp/short"
expect 1 metadata show "$tmp/short"
has "$tmp/err" "smaller than the 16384 of the superblocks"
expect 1 metadata format "$tmp/short"
if [ -n "$meta_image" ]; then
	"$meta_image" "$tmp/meta" && ok || bad "meta-image failed"
	expect 0 metadata show "$tmp/meta"
	has "$tmp/out" "superblock: copy 1, seq 3"
	has "$tmp/out" "dm name: cbt-test"
	has "$tmp/out" "dm uuid: CBT-test-uuid"
	has "$tmp/out" "metadata uuid: a0a1a2a3-a4a5-a6a7-a8a9-aaabacadaeaf"
	has "$tmp/out" "data size: 1073793024"
	has "$tmp/out" "b0: granularity 65536, recording, generation 00010203-0405-0607-0809-0a0b0c0d0e0f:3, area 4+1 blocks, 3 of 16385 chunks dirty (182272 bytes)"
	has "$tmp/out" "b1: granularity 65536, disabled, INCONSISTENT, frozen, generation 20212223-2425-2627-2829-2a2b2c2d2e2f:1, area 5+1 blocks, 0 of 16385 chunks dirty (0 bytes)"
	expect 0 metadata show --json "$tmp/meta"
	if command -v python3 >/dev/null; then
		python3 -c 'import json, sys; o = json.load(sys.stdin); sys.exit(not (o["seq"] == 3 and o["bitmaps"][0]["dirty_bytes"] == 182272 and o["bitmaps"][1]["frozen"]))' \
			<"$tmp/out" && ok || bad "metadata show --json: $(cat "$tmp/out")"
	fi
	# A torn copy 1: copy 0 (seq 2) is current, copy 1's fault is shown.
	printf 'torn' | dd of="$tmp/meta" bs=1 seek=9000 conv=notrunc status=none
	expect 0 metadata show "$tmp/meta"
	has "$tmp/out" "superblock: copy 0, seq 2 (copy 1 invalid: bad checksum"
	# Neither copy valid: refused, exit 1, both reasons.
	printf 'torn' | dd of="$tmp/meta" bs=1 seek=0 conv=notrunc status=none
	expect 1 metadata show "$tmp/meta"
	has "$tmp/err" "no valid superblock (copy 0 at offset 0: bad magic"
	# format: refuses valid metadata without --force; damaged or forced, zeroes both copies.
	"$meta_image" "$tmp/meta"
	expect 1 metadata format "$tmp/meta"
	has "$tmp/err" "holds valid cbt metadata (seq 3, 2 bitmaps, dm name 'cbt-test'); use --force"
	expect 0 metadata show "$tmp/meta"
	has "$tmp/out" "seq 3"
	expect 0 metadata format --force "$tmp/meta"
	expect 0 metadata show "$tmp/meta"
	has "$tmp/out" "unformatted"
	[ "$(stat -c %s "$tmp/meta")" = 32768 ] && ok || bad "format changed the size"
	cmp -s -n 16384 "$tmp/meta" /dev/zero && ok || bad "format left non-zero superblocks"
	"$meta_image" "$tmp/meta"
	printf 'torn' | dd of="$tmp/meta" bs=1 seek=9000 conv=notrunc status=none
	printf 'torn' | dd of="$tmp/meta" bs=1 seek=0 conv=notrunc status=none
	expect 0 metadata format "$tmp/meta"
	expect 0 metadata show "$tmp/meta"
	has "$tmp/out" "unformatted"
	# The area beyond the superblocks is left alone.
	cmp -s -i 16384 -n 1 "$tmp/meta" /dev/zero && bad "format zeroed b0's area" || ok
fi
# format refuses what blkid recognises, as mkfs and pvcreate do, and changes
# nothing; --force formats it.
if ! command -v mkfs.ext4 >/dev/null || ! command -v blkid >/dev/null; then
	bad "mkfs.ext4 and blkid are needed (e2fsprogs, util-linux: make deps)"
else
	truncate -s 8M "$tmp/ext.img"
	mkfs.ext4 -q -F "$tmp/ext.img" && ok || bad "mkfs.ext4"
	sum=$(md5sum <"$tmp/ext.img")
	expect 1 metadata format "$tmp/ext.img"
	has "$tmp/err" "$tmp/ext.img: holds a file system (ext4, found by blkid); use --force"
	[ "$(md5sum <"$tmp/ext.img")" = "$sum" ] && ok || bad "a refused format changed the file"
	[ "$(blkid -p -o value -s TYPE "$tmp/ext.img")" = ext4 ] && ok ||
		bad "no ext4 after the refusal"
	expect 0 metadata format --force "$tmp/ext.img"
	blkid -p "$tmp/ext.img" >/dev/null && bad "still a file system after --force" || ok
	expect 0 metadata show "$tmp/ext.img"
	has "$tmp/out" "unformatted"
	# Zeros, or a zeroed head: nothing to refuse.
	expect 0 metadata format "$tmp/ext.img"
fi

# CBT_TEST_STOP_AT is in the test build only; make install installs the other.
grep -qa CBT_TEST_STOP_AT "$cbtctl" && ok || bad "the test build has no CBT_TEST_STOP_AT"
grep -qa CBT_TEST_STOP_AT "$release" && bad "the release build has CBT_TEST_STOP_AT" || ok
make -s --no-print-directory -C "$top/userspace" install DESTDIR="$tmp/inst" PREFIX=/usr \
	BASH_COMPLETION_DIR=/usr/share/bash-completion/completions \
	SYSTEMD_UNIT_DIR=/lib/systemd/system >"$tmp/make.log" 2>&1 ||
	bad "make install: $(cat "$tmp/make.log")"
[ -x "$tmp/inst/usr/sbin/cbtctl" ] && ok || bad "make install installed no cbtctl"
grep -qa CBT_TEST_STOP_AT "$tmp/inst/usr/sbin/cbtctl" && bad "installed cbtctl has test hooks" || ok
grep -qa CBT_TEST_STOP_AT "$tmp/inst/usr/lib/libcbt.a" && bad "installed libcbt.a has test hooks" || ok
cmp -s "$completion" "$tmp/inst/usr/share/bash-completion/completions/cbtctl" && ok ||
	bad "make install did not install the bash completion"

# libcbt's API: every header but the instant's under include/cbt, each one
# compiling alone; a program built with the installed libcbt.pc links.
for h in "$top"/userspace/lib/*.h; do
	n=${h##*/}
	[ "$n" != instant.h ] || continue
	cmp -s "$h" "$tmp/inst/usr/include/cbt/$n" || { bad "make install did not install cbt/$n"; continue; }
	printf '#include <cbt/%s>\n' "$n" | cc -fsyntax-only -Wall -Wextra -Werror \
		-I"$tmp/inst/usr/include" -x c - 2>"$tmp/cc.log" && ok ||
		bad "cbt/$n does not compile alone: $(cat "$tmp/cc.log")"
done
[ ! -e "$tmp/inst/usr/include/cbt/instant.h" ] && ok || bad "make install installed instant.h"
cat >"$tmp/api.c" <<'EOF'
#include <stdio.h>
#include <cbt/backup.h>
#include <cbt/qcow2.h>

int main(void)
{
	struct cbt_err e = { 0 };
	uint64_t n = 0;

	if (cbt_parse_size("64K", &n) || n != 65536)
		return 1;
	/* Only taken, not called: the backup and the qcow2 writer link in. */
	int (*volatile run)(struct cbt_backup *, struct cbt_err *) = cbt_backup_run;
	int (*volatile create)(const char *, uint64_t, uint32_t, const char *, const char *,
			       struct qcow2_image **, struct cbt_err *) = qcow2_create;

	printf("%d %d\n", cbt_fail(&e, 5, "x") == -5, !!run + !!create);
	return 0;
}
EOF
pc() {
	PKG_CONFIG_PATH=$tmp/inst/usr/lib/pkgconfig PKG_CONFIG_SYSROOT_DIR=$tmp/inst pkg-config "$@"
}
# shellcheck disable=SC2046 # pkg-config's flags are words
if cc -Wall -Werror -o "$tmp/api" "$tmp/api.c" $(pc --cflags --static --libs libcbt) \
	>"$tmp/cc.log" 2>&1; then
	[ "$("$tmp/api")" = "1 2" ] && ok || bad "a program on the installed libcbt ran wrong"
else
	bad "a program on the installed libcbt.pc does not build: $(cat "$tmp/cc.log")"
fi

# The recovery unit: installed, running the installed cbtctl; systemd-analyze
# verify accepts it (pointed at the release build, which exists here).
unit=$tmp/inst/lib/systemd/system/cbtctl-recover.service
grep -qx "ExecStart=/usr/sbin/cbtctl recover" "$unit" && ok ||
	bad "make install installed no cbtctl-recover.service running /usr/sbin/cbtctl recover"
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$tmp/unit"
	sed "s|^ExecStart=/usr/sbin/cbtctl |ExecStart=$release |" "$unit" \
		>"$tmp/unit/cbtctl-recover.service"
	SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no \
		"$tmp/unit/cbtctl-recover.service" >"$tmp/verify" 2>&1 && ! [ -s "$tmp/verify" ] &&
		ok || bad "systemd-analyze verify cbtctl-recover.service: $(cat "$tmp/verify")"
else
	echo "cli.sh: systemd-analyze is not installed: cbtctl-recover.service not verified"
fi

# The bash completion: every command, and options as the man page has them.
# shellcheck source=/dev/null
source "$completion"
complete_line() {
	COMP_LINE=$1 COMP_POINT=${#1}
	_cbtctl
	printf '%s\n' "${COMPREPLY[@]}"
}
[ "$(complete_line "cbtctl " | sort)" = "$(printf '%s\n' "${commands[@]}" | sort)" ] && ok ||
	bad "completion of commands: $(complete_line "cbtctl " | tr '\n' ' ')"
[ "$(complete_line "cbtctl backup --sync=inc")" = incremental ] && ok ||
	bad "completion of --sync=inc: $(complete_line "cbtctl backup --sync=inc")"
[ "$(complete_line "cbtctl backup --sync f")" = full ] && ok || bad "completion of --sync f"
[ "$(complete_line "cbtctl bitmap a")" = add ] && ok || bad "completion of bitmap a"

# Every command in the man page's synopsis, and every long option of each
# command's --help in the man page and the completion.
for c in "${commands[@]}"; do
	grep -q "^\.B cbtctl $c\b" "$man" && ok || bad "cbtctl.8's synopsis lacks $c"
	for o in $("$cbtctl" "$c" --help | grep -o -- '--[a-z][a-z-]*' | sort -u); do
		grep -qF -- "${o//-/\\-}" "$man" && ok || bad "cbtctl.8 lacks $c $o"
		grep -qE -- "(^|[ \"])$o(=|[ \"]|$)" "$completion" && ok || bad "the completion lacks $c $o"
	done
done

echo "cli.sh: $passed passed, $failed failed"
[ "$failed" = 0 ]
