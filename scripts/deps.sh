#!/usr/bin/env bash
# The Debian packages flushvm's targets need (make run, make test and the
# nested harness behind them). Run as root, it installs what is missing with
# one apt-get line, said on stdout; otherwise it stops with the command to
# run. It also makes sure apt has package lists: the guest kernel comes from
# `apt-get download`.
#
# qemu-system-x86: the plain-QEMU reference boots, the vhost-user peers and
#   the libraries of the L1 guest's newer QEMU (below); qemu-utils: image tools; busybox-static: the guests'
#   shell and applets; fio: I/O workloads; e2fsprogs: mkfs.ext4 for fresh
#   disks; xfsprogs, btrfs-progs: the crash tests' other file systems, carried
#   into the guest; sqlite3: the SQLite crash-test workloads' shell, carried into the
#   guest; xz-utils/zstd: compressed kernel modules; make, git,
#   ca-certificates.
#
# On Debian 12 it also adds bookworm-backports to apt's sources
# (/etc/apt/sources.list.d/flushvm-bookworm-backports.sources): the nested
# harness runs its L1 guest on QEMU 10 from there, which host/l1qemu fetches
# with apt-get download and unpacks into the artifact cache, installing
# nothing (QEMU 7.2's emulated nested SVM fails too often; docs/nested.md).
# Backports have pin priority 100, so apt installs or upgrades nothing from
# that suite unless asked by name.
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

backports=/etc/apt/sources.list.d/flushvm-bookworm-backports.sources
need_backports=0
if [[ "$(. /etc/os-release && echo "${VERSION_CODENAME:-}")" == bookworm ]] &&
	! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
	need_backports=1
fi

if ((${#missing[@]} == 0 && need_backports == 0)) && have_lists && [[ "${FLUSHVM_APT_UPDATE:-}" != 1 ]]; then
	exit 0
fi
if ((EUID != 0)); then
	if ((need_backports)); then
		echo "deps: note: nested L1 guests run on QEMU from bookworm-backports, which apt's sources lack; without it they run on the system's older QEMU. To add it (as root):" >&2
		printf '  printf "Types: deb\\nURIs: http://deb.debian.org/debian\\nSuites: bookworm-backports\\nComponents: main\\n" > %s && apt-get update\n' "$backports" >&2
	fi
	if ((${#missing[@]})); then
		echo "flushvm needs these Debian packages: ${missing[*]}. Install them (as root) with:" >&2
		echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
		exit 1
	fi
	if ! have_lists; then
		echo "flushvm fetches the guest kernel with apt-get download, and apt has no package lists. Run (as root):" >&2
		echo "  apt-get update" >&2
		exit 1
	fi
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ((need_backports)); then
	echo "deps: adding bookworm-backports to apt's sources ($backports), for the L1 guest's QEMU"
	printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' >"$backports"
fi
if ((${#missing[@]})); then
	echo "deps: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
	echo "deps: apt-get update (package lists for the guest kernel's apt-get download)"
	apt-get update -qq
fi
