#!/bin/sh
# Installs the Debian packages of scripts/packages.list (the one list) when
# missing: all of them, or with --lab only those tagged lab (what `make lab`
# needs). Extra arguments name more packages; --print only prints the
# selection. Quiet when everything is already present. Needs root to install; without root it only reports what
# is missing (the tests that need it then skip with a message saying so).
set -eu

list="$(dirname "$0")/packages.list"
tag=""
print=""
while [ $# -gt 0 ]; do
	case "$1" in
	--lab) tag=lab ;;
	--print) print=yes ;;
	*) break ;;
	esac
	shift
done
# Package names (first field), without comments; with a tag, only the
# lines carrying it.
PKGS=$(sed 's/#.*//' "$list" | awk -v tag="$tag" 'NF { if (tag == "") { print $1; next } for (i = 2; i <= NF; i++) if ($i == tag) { print $1; break } }')
PKGS="$PKGS $*"
if [ -n "$print" ]; then
	echo $PKGS
	exit 0
fi

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
