#!/usr/bin/env bash
# Install Debian packages with apt-get, as root; elsewhere say what to install and fail. The install step
# of tools/start_postgres.sh (PostgreSQL) and tools/install_chromium.sh (Chromium); output goes to stderr.
#
#   tools/apt_install.sh CALLER PACKAGE...     # CALLER starts each message, e.g. start_postgres.sh
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 CALLER PACKAGE..." >&2; exit 2; }
caller=$1
shift
if [ "$(id -u)" -ne 0 ]; then
    echo "$caller: $* missing and not root; install it (Debian: apt-get install $*)" >&2
    exit 1
fi
echo "$caller: installing Debian's $* (apt-get)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "$@" >&2
