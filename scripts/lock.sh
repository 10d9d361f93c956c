#!/usr/bin/env bash
# Refresh constraints.txt, the lock every install uses (README set-up, scripts/test.sh, CI).
#   scripts/lock.sh            resolve the newest versions, run the whole suite in a fresh
#                              venv against them, and only then replace constraints.txt
#   scripts/lock.sh --check    only show what a refresh would change (nothing is written)
# The lock is "universal": one file with environment markers for every Python from 3.10
# on and every platform, resolved by uv (pinned below) from pyproject.toml's extras.
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
EXTRAS=(gguf onnx tflite tflite-convert distill postgres dev)

tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools/venv"
"$tools/venv/bin/pip" install -q "uv==$UV_VERSION"
uv="$tools/venv/bin/uv"

# scripts/lock-notes.txt: constraints for the resolver itself (why each is there).

compile() {  # compile OUT [uv args...]
  local out=$1; shift
  local args=()
  for extra in "${EXTRAS[@]}"; do args+=(--extra "$extra"); done
  {
    echo "# The lock for every extra of edgeshrink: pip install -c constraints.txt -e '.[...]'"
    echo "# Made by scripts/lock.sh (uv $UV_VERSION, universal, Python >= 3.10); refresh it with"
    echo "# that script, which runs the whole test suite against the new versions first."
    "$uv" pip compile pyproject.toml "${args[@]}" --universal --python-version 3.10 \
      --no-header --quiet -c scripts/lock-notes.txt "$@"
  } > "$out"
}

if [ "${1:-}" = --check ]; then
  compile "$tools/now.txt"
  if diff -u constraints.txt "$tools/now.txt"; then echo "lock: constraints.txt is still the newest resolution"; fi
  exit 0
fi

compile "$tools/new.txt" --upgrade
if diff -q constraints.txt "$tools/new.txt" >/dev/null 2>&1; then
  echo "lock: nothing newer; constraints.txt unchanged"
  exit 0
fi
diff -u constraints.txt "$tools/new.txt" | grep '^[-+][a-z]' || true

# The suite must pass on the new versions before they become the lock.
trial=$(mktemp -d)
git worktree add -q --detach "$trial" HEAD
cp "$tools/new.txt" "$trial/constraints.txt"
if (cd "$trial" && scripts/test.sh -q); then
  cp "$tools/new.txt" constraints.txt
  echo "lock: the suite passed on the new versions; constraints.txt updated (commit it)"
  status=0
else
  echo "lock: the suite FAILED on the new versions; constraints.txt left as it was" >&2
  status=1
fi
git worktree remove --force "$trial"
exit $status
