#!/usr/bin/env bash
# Checks systemd/previewd.service with `systemd-analyze verify`, for CI and by hand.
#
# verify insists that ExecStart's binary exists, so the unit is checked as a temp copy whose
# /usr/local/bin/previewd is replaced by a real binary: $PREVIEWD if set, else the release
# build under $CARGO_TARGET_DIR (default target/), else whatever `previewd` is on PATH.
# Fails when verify fails or prints any line about previewd.service; lines about other
# units (docker.service missing on a build host, say) are shown but not fatal.
#
# Usage: systemd/verify.sh [path/to/previewd]
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
unit="$here/previewd.service"

binary=${1:-${PREVIEWD:-}}
if [[ -z $binary ]]; then
    for candidate in "${CARGO_TARGET_DIR:-$root/target}/release/previewd" "$(command -v previewd || true)"; do
        if [[ -n $candidate && -x $candidate ]]; then
            binary=$candidate
            break
        fi
    done
fi
if [[ -z $binary || ! -x $binary ]]; then
    echo "verify.sh: no previewd binary: build it (cargo build --release -p previewd)," \
        "or pass its path as \$1 or \$PREVIEWD" >&2
    exit 2
fi
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")
if ! command -v systemd-analyze >/dev/null; then
    echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2
    exit 2
fi
grep -q '^ExecStart=/usr/local/bin/previewd ' "$unit" || {
    echo "verify.sh: $unit: ExecStart no longer starts with /usr/local/bin/previewd; update this script" >&2
    exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The copy keeps the unit's name: verify derives the unit name from the file name.
sed -E "s|^(ExecStart(Pre)?=)/usr/local/bin/previewd |\1$binary |" "$unit" >"$tmp/previewd.service"

status=0
output=$(cd "$tmp" && systemd-analyze verify "$tmp/previewd.service" 2>&1) || status=$?
[[ -n $output ]] && printf '%s\n' "$output"
if (( status != 0 )); then
    echo "verify.sh: systemd-analyze verify exited $status" >&2
    exit 1
fi
if grep -q 'previewd\.service' <<<"$output"; then
    echo "verify.sh: systemd-analyze verify reported problems in previewd.service" >&2
    exit 1
fi
echo "verify.sh: previewd.service OK (checked with ExecStart=$binary)"
