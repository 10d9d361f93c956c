#!/usr/bin/env bash
# The emulated Raspberry Pi (arm64 Debian under qemu-user, own sshd): build | up | down | status.
#   scripts/arm64-device.sh build [--with-llama] [--with-tflite-runtime]
#   scripts/arm64-device.sh up --cpu cortex-a76 --mem 4G --port 2222
#   scripts/arm64-device.sh status | down
# Global options (--rootfs DIR, --state-dir DIR) go before the command. See scripts/arm64_device.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python=${PYTHON:-python3}
[ -x "$here/../.venv/bin/python" ] && python="$here/../.venv/bin/python"
exec "$python" "$here/arm64_device.py" "$@"
