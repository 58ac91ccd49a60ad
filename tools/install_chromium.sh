#!/usr/bin/env bash
# Debian's Chromium for the dashboard's browser test (tests/web/test_dashboard_browser.py), for CI and
# developers. Playwright drives it through executable_path: Playwright's own browser download is never used.
#
#   tools/install_chromium.sh        # prints the browser's path as its last line
#
# The browser is $IMMUNETWIN_CHROMIUM if set, else /usr/bin/chromium. When /usr/bin/chromium is missing,
# Debian's chromium package is installed (as root, with tools/apt_install.sh); elsewhere the script says
# what to do and fails. Example (.ci/run):
#   export IMMUNETWIN_CHROMIUM="$(bash tools/install_chromium.sh | tail -n 1)"
set -euo pipefail

default=/usr/bin/chromium
path=${IMMUNETWIN_CHROMIUM:-$default}

install_browser() {
    if [ "$path" != "$default" ]; then
        echo "install_chromium.sh: IMMUNETWIN_CHROMIUM=$path is not an executable file" >&2
        exit 1
    fi
    bash "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh" install_chromium.sh chromium
}

[ -x "$path" ] || install_browser
[ -x "$path" ] || { echo "install_chromium.sh: $path is still missing after the install" >&2; exit 1; }
echo "$path"
