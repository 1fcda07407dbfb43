# SPDX-License-Identifier: GPL-2.0
# Shared by the VM harness scripts: where the test kernels live.

cbt_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cbt_cache=${CBT_CACHE:-$cbt_top/.cache}
cbt_kernels=(6.1 6.12 sid debug)

# The Debian suite each test kernel comes from; "host" is this machine's own
# apt configuration (bookworm with its security updates). The debug kernel
# is built by deps from sid's linux-source.
kernel_suite() {
	case $1 in
	6.1) echo host ;;
	6.12) echo bookworm-backports ;;
	sid|debug) echo sid ;;
	*) echo "unknown test kernel '$1' (known: ${cbt_kernels[*]})" >&2; return 1 ;;
	esac
}

# Loads KREL, KROOT, VMLINUZ, KDIR and KCHROOT for one test kernel.
kernel_env() {
	local env=$cbt_cache/kernels/$1/env
	kernel_suite "$1" >/dev/null || return 1
	if [ ! -f "$env" ]; then
		echo "test kernel $1 is not installed: run 'make deps'" >&2
		return 1
	fi
	. "$env"
}
