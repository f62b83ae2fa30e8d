#!/usr/bin/env bash
# Builds the GPU test and benchmark executables (release, --features cuda) for a GPU machine
# that has no Rust toolchain, and copies them to .gpu-bin/ (gitignored):
#
#   .gpu-bin/cuda-tests   tests/cuda.rs     (run with REQUIRE_CUDA=1 --test-threads=1)
#   .gpu-bin/cuda-bench   benches/cuda.rs   (run with --json PATH)
#   .gpu-bin/BUILD.txt    commit, date, rustc, sizes and sha256 of both
#
# The executables are found through cargo's --message-format=json "executable" fields, not
# by globbing hashed file names. They load libcuda.so at run time (cudarc's dynamic loading),
# so the build needs no CUDA installation; they need glibc no newer than this machine's.
# Then scripts/gpu-check.sh runs them on the GPU machine (carry .gpu-bin there).
set -euo pipefail
cd "$(dirname "$0")/.."

out=.gpu-bin
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Prints the executable of the artifact whose target is named $2 with kind $3, from cargo's
# JSON messages in $1.
executable() {
    python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
path, name, kind = sys.argv[1:4]
found = []
with open(path) as f:
    for line in f:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        target = msg.get("target") or {}
        if (msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and target.get("name") == name and kind in target.get("kind", [])):
            found.append(msg["executable"])
if len(found) != 1:
    sys.exit(f"expected one {kind} executable named {name}, found {found}")
print(found[0])
EOF
}

echo "== building the GPU tests (cargo test --release --features cuda --test cuda --no-run)"
cargo test --release --features cuda --test cuda --no-run --message-format=json-render-diagnostics \
    > "$tmp/tests.jsonl"
tests_exe=$(executable "$tmp/tests.jsonl" cuda test)

echo "== building the GPU benchmarks (cargo bench --features cuda --bench cuda --no-run)"
cargo bench --features cuda --bench cuda --no-run --message-format=json-render-diagnostics \
    > "$tmp/bench.jsonl"
bench_exe=$(executable "$tmp/bench.jsonl" cuda bench)

cp "$tests_exe" "$out/cuda-tests"
cp "$bench_exe" "$out/cuda-bench"
# Symbols only make the copies larger for the trip; panic messages keep file and line.
if command -v strip >/dev/null; then
    strip "$out/cuda-tests" "$out/cuda-bench"
fi
chmod +x "$out/cuda-tests" "$out/cuda-bench"

{
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(ldd --version 2>/dev/null | head -1)"
    echo "rustc: $(rustc --version)"
    for f in cuda-tests cuda-bench; do
        echo "$f: $(stat -c %s "$out/$f") bytes, sha256 $(sha256sum "$out/$f" | cut -d' ' -f1)"
    done
} > "$out/BUILD.txt"
cat "$out/BUILD.txt"
echo "copied to $out/: carry it to the GPU machine and run scripts/gpu-check.sh there"
