#!/usr/bin/env bash
# Finds or fetches the ONNX backend node test suite (the 1,288 folders of
# onnx 1.17.0's onnx/backend/test/data/node: model.onnx + test_data_set_*/*.pb)
# and prints its path on the last line of stdout. Progress goes to stderr.
#
# 1. If ../shared/onnx-backend-node exists beside the repository (the
#    project's machines and CI), that folder is used as it is.
# 2. Otherwise (a fresh clone elsewhere) the suite is taken out of the
#    onnx 1.17.0 wheel from PyPI, downloaded with `pip download --no-deps`
#    (only the wheel file: onnx is not installed, nor imported), into
#    ${KILN_CACHE:-$HOME/.cache/kiln}/onnx-backend-node.
#    This runs once: a later call finds the completed cache and skips it.
#
# Needs: bash, python3 with pip (override with PYTHON=...), network access
# to PyPI on the first run only.
#
# Usage: suite="$(bash tests/fetch-node-suite.sh | tail -n1)"
set -euo pipefail

ONNX_VERSION=1.17.0
EXPECTED_TESTS=1288
PYTHON="${PYTHON:-python3}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shared="$repo_root/../shared/onnx-backend-node"
if [ -d "$shared" ]; then
  cd "$shared" && pwd
  exit 0
fi

cache_root="${KILN_CACHE:-$HOME/.cache/kiln}"
dest="$cache_root/onnx-backend-node"
stamp="$dest/.kiln-fetched-onnx-$ONNX_VERSION"

if [ -f "$stamp" ]; then
  echo "fetch-node-suite: using cached $dest" >&2
  echo "$dest"
  exit 0
fi

# Test processes start this script many at a time (nextest runs every test
# in its own process). One fetches; the others wait for it and then find
# the completed cache. Without the lock, a late fetcher's `rm -rf` pulled
# the folder from under tests that were already reading it.
mkdir -p "$cache_root"
lock="$cache_root/.fetch-node-suite.lock"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$lock"
  flock 9
else
  # No flock (macOS): a directory is created atomically, so it is a lock.
  until mkdir "$lock.d" 2>/dev/null; do sleep 1; done
  trap 'rmdir "$lock.d" 2>/dev/null || true' EXIT
fi
if [ -f "$stamp" ]; then
  echo "fetch-node-suite: using $dest, fetched meanwhile" >&2
  echo "$dest"
  exit 0
fi

work="$(mktemp -d "$cache_root/.fetch-node-suite.XXXXXX")"
trap 'rm -rf "$work"; rmdir "$lock.d" 2>/dev/null || true' EXIT

echo "fetch-node-suite: downloading the onnx $ONNX_VERSION wheel from PyPI ..." >&2
# Any platform's wheel carries the same test data; pin one so that pip picks
# a wheel (never an sdist) whatever the local Python is.
"$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check \
  --only-binary=:all: --platform manylinux_2_17_x86_64 --python-version 3.11 \
  --dest "$work/wheel" "onnx==$ONNX_VERSION" >&2

wheel="$(ls "$work"/wheel/onnx-"$ONNX_VERSION"-*.whl | head -n1)"
echo "fetch-node-suite: extracting node tests from $(basename "$wheel") ..." >&2

"$PYTHON" - "$wheel" "$work/node" "$EXPECTED_TESTS" <<'PY'
import os, sys, zipfile

wheel, out, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
prefix = "onnx/backend/test/data/node/"
tests = set()
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or info.is_dir():
            continue
        rel = name[len(prefix):]
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            sys.exit(f"unexpected path in wheel: {name}")
        if len(parts) > 1:
            tests.add(parts[0])
        target = os.path.join(out, *parts)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as dst:
            dst.write(src.read())
if len(tests) != expected:
    sys.exit(f"expected {expected} node test folders in the wheel, found {len(tests)}")
print(f"fetch-node-suite: extracted {len(tests)} node test folders", file=sys.stderr)
PY

touch "$work/node/.kiln-fetched-onnx-$ONNX_VERSION"
# Replace any partial or older copy (no reader uses one: readers wait for
# the lock or found the stamp), then move the complete one into place.
rm -rf "$dest"
mv "$work/node" "$dest"
echo "$dest"
