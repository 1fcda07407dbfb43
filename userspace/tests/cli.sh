#!/bin/bash
# SPDX-License-Identifier: GPL-2.0
#
# cbtctl's command line, on the host and without any device: --help and
# --version, usage errors (exit 2, nothing done), options as --opt=V and
# --opt V and after --, that the installed build has no test hooks, the bash
# completion and the man page against `cbtctl help`.
# usage: cli.sh TEST_CBTCTL RELEASE_CBTCTL (run by `make unit`).
# shellcheck disable=SC2015 # "check && ok || bad": ok never fails
set -u
cbtctl=$1
release=$2
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
	"bitmap disable" "bitmap merge"; do
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
for c in "${commands[@]}" "bitmap add" "bitmap remove" "bitmap merge"; do
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
