#!/usr/bin/env bash
# apt-deb-src.sh: let `apt-get source` fetch Debian source packages (lwIP for the httpd example):
# add deb-src entries mirroring the deb ones already configured, once. Needs root; prints
# whether it changed anything, so that the caller knows to run `apt-get update`.
set -euo pipefail
if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb-src: already configured"
    exit 0
fi
out=/etc/apt/sources.list.d/ukvm-deb-src
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > "$out.sources"
elif grep -qs '^deb ' /etc/apt/sources.list; then
    grep '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' > "$out.list"
else
    echo "apt-deb-src.sh: no Debian apt sources found to mirror" >&2
    exit 1
fi
echo "deb-src: added $out"
