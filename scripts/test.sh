#!/usr/bin/env bash
# Install what the test suite needs into .venv (once) and run it.
#   scripts/test.sh                 the whole suite (what CI runs)
#   scripts/test.sh -k deploy -x    any pytest arguments pass through
# On a Debian machine where we are root, the real OpenSSH server the SSH tests
# talk to is installed with apt-get; elsewhere those tests skip with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ ! -x /usr/sbin/sshd ]; then
  echo "test.sh: installing openssh-server (the SSH test device)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# Every version comes from constraints.txt (the lock; scripts/lock.sh refreshes it).
# llama-cpp-python compiles llama.cpp the first time (~7 min on 2 cores); pip
# caches the wheel, so later installs take seconds.  tensorflow-cpu (274 MB) is
# only for the Keras/SavedModel -> TFLite converter tests; torch (CPU build, the one
# on this machine's disk) and transformers only for the distillation tests.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,gguf,onnx,tflite,tflite-convert,distill,postgres]'
exec .venv/bin/python -m pytest "$@"
