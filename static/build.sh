#!/bin/sh
# Builds static/tracker.min.js (served by the relay at /s.js) from static/tracker.js.
# esbuild is pinned to an exact version so the same source always gives the same bytes;
# tests/test_tracker_build.py rebuilds with this script and compares with the committed file.
# Usage: static/build.sh [OUTFILE]   (default: static/tracker.min.js)
set -eu
ESBUILD_VERSION=0.28.2
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-"$here/tracker.min.js"}
exec npx --yes "esbuild@$ESBUILD_VERSION" "$here/tracker.js" \
    --minify --target=es2020 --charset=utf8 --legal-comments=none --log-level=warning \
    --outfile="$out"
