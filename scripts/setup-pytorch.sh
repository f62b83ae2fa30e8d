#!/usr/bin/env bash
# Creates the Python environment for the PyTorch comparison benchmarks
# (benches/pytorch_reference.py, benches/pytorch_gpu.py) at .venv in the repository root.
# Idempotent: an environment that already imports torch and numpy is left as it is.
#
# Environment overrides:
#   VENV        where the environment lives (default: <repo>/.venv, gitignored)
#   PYTHON      interpreter that creates it (default: python3)
#   TORCH_SPEC  pip requirement for torch (default: torch, the PyPI wheel; on Linux x86_64 it
#               pulls the CUDA libraries, a few GB, which also serve pytorch_gpu.py)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo_root/.venv}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating virtual environment at $venv"
    "$python" -m venv "$venv"
fi

if "$venv/bin/python" -c 'import torch, numpy' 2>/dev/null; then
    echo "torch and numpy already installed in $venv"
else
    echo "installing $torch_spec and numpy into $venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$torch_spec" numpy
fi

"$venv/bin/python" -c 'import torch, numpy; print(f"torch {torch.__version__}, numpy {numpy.__version__}, cuda build {torch.version.cuda}")'
