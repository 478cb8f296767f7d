#!/usr/bin/env bash
# The Debian packages flushvm's targets need (make run, make test and the
# nested harness behind them). Run as root, it installs what is missing with
# one apt-get line, said on stdout; otherwise it stops with the command to
# run. It also makes sure apt has package lists: the guest kernel comes from
# `apt-get download`.
#
# qemu-system-x86: the QEMU TCG L1 guest (nested KVM) and the plain-QEMU
#   reference boots; qemu-utils: image tools; busybox-static: the guests'
#   shell and applets; fio: I/O workloads; e2fsprogs: mkfs.ext4 for fresh
#   disks; xfsprogs, btrfs-progs: the crash tests' other file systems, carried
#   into the guest; sqlite3: the SQLite crash-test workloads' shell, carried into the
#   guest; xz-utils/zstd: compressed kernel modules; make, git,
#   ca-certificates.
#
# With the argument "slurm" it also installs Slurm and munge (slurmctld,
# slurmd, slurm-client, munge): the Slurm crash-test path and its test
# (make test-slurm; .ci/run installs them).
set -euo pipefail

packages=(qemu-system-x86 qemu-utils busybox-static fio e2fsprogs xfsprogs btrfs-progs sqlite3 xz-utils zstd make git ca-certificates)
if [[ "${1:-}" == slurm ]]; then
	packages+=(slurmctld slurmd slurm-client munge)
fi

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
have_lists() { compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; }

if ((${#missing[@]} == 0)) && have_lists && [[ "${FLUSHVM_APT_UPDATE:-}" != 1 ]]; then
	exit 0
fi
if ((EUID != 0)); then
	if ((${#missing[@]})); then
		echo "flushvm needs these Debian packages: ${missing[*]}. Install them (as root) with:" >&2
		echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
	else
		echo "flushvm fetches the guest kernel with apt-get download, and apt has no package lists. Run (as root):" >&2
		echo "  apt-get update" >&2
	fi
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ((${#missing[@]})); then
	echo "deps: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
	echo "deps: apt-get update (package lists for the guest kernel's apt-get download)"
	apt-get update -qq
fi
