#!/bin/sh
# Installs the Debian packages the tests and the lab need, when missing.
# Quiet when everything is already present. Needs root to install; without
# root it only reports what is missing (the tests that need it then skip
# with a message saying so).
set -eu

PKGS="strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins strongswan-pki tshark tcpdump iproute2 iputils-ping nftables iperf3 procps netbase qemu-system-x86 linux-image-amd64 busybox-static kmod cpio xz-utils binutils frr ethtool clang-14 llvm-14 libbpf-dev"
# --lab: only what `make lab` needs (namespaces, ping, the NAT router's nft,
# strongSwan's charon with kernel-libipsec for IPsec on every node).
if [ "${1:-}" = "--lab" ]; then
	shift
	PKGS="iproute2 iputils-ping nftables procps strongswan-charon libcharon-extra-plugins libstrongswan-extra-plugins libstrongswan-standard-plugins"
fi
PKGS="$PKGS $*"

missing=""
for p in $PKGS; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "install-deps: not root, cannot install:$missing (tests needing them will skip)" >&2
	exit 0
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
