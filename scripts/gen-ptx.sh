#!/usr/bin/env bash
# Regenerate kernels/ptx/*.ptx and MANIFEST.json from kernels/*.cu with NVRTC; no GPU needed.
#   scripts/gen-ptx.sh           write the PTX
#   scripts/gen-ptx.sh --check   fail (exit 1) if the committed PTX is stale
# NVRTC comes from the PyPI wheel nvidia-cuda-nvrtc-cu12==12.0.140, installed once with
# `pip install --target` into .venv-cuda/nvrtc (kept out of git).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheel="nvidia-cuda-nvrtc-cu12==12.0.140"
target="$root/.venv-cuda/nvrtc"
stamp="$target/.installed-$wheel"
python="${PYTHON:-python3}"

if [[ ! -f "$stamp" ]]; then
    rm -rf "$target"
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --no-compile \
        --target "$target" "$wheel"
    touch "$stamp"
fi
lib="$(find "$target" -name 'libnvrtc.so.12' -print -quit)"
if [[ -z "$lib" ]]; then
    echo "gen-ptx.sh: libnvrtc.so.12 missing from $wheel under $target" >&2
    exit 1
fi
exec "$python" "$root/scripts/gen-ptx.py" --nvrtc "$lib" "$@"
