#!/usr/bin/env bash
# Assemble every kernels/ptx/*.ptx with ptxas for sm_80 (A100) and sm_90 (H100/H200) on a
# machine without a GPU, print a per-kernel register / stack / spill table, and fail on any
# ptxas error or warning, any spill store or load, or any stack frame (a local-memory array in
# a hot loop is a performance bug here: every kernel is meant to live in registers).
#   scripts/check-ptx.sh            (ARCHS="sm_80 sm_90" by default)
# ptxas comes from the PyPI wheel nvidia-cuda-nvcc-cu12 (it ships ptxas, not a usable nvcc),
# pinned to a 12.x release, which accepts PTX ISA 8.0; installed once into .venv-cuda/nvcc.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheel="nvidia-cuda-nvcc-cu12==12.4.131"
target="$root/.venv-cuda/nvcc"
stamp="$target/.installed-$wheel"
python="${PYTHON:-python3}"
archs="${ARCHS:-sm_80 sm_90}"

if [[ ! -f "$stamp" ]]; then
    rm -rf "$target"
    "$python" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
        --no-deps --no-compile --target "$target" "$wheel"
    touch "$stamp"
fi
ptxas="$(find "$target" -path '*/bin/ptxas' -type f -print -quit)"
if [[ -z "$ptxas" ]]; then
    echo "check-ptx.sh: bin/ptxas missing from $wheel under $target" >&2
    exit 1
fi
chmod +x "$ptxas"
shopt -s nullglob
files=("$root"/kernels/ptx/*.ptx)
if [[ ${#files[@]} -eq 0 ]]; then
    echo "check-ptx.sh: no kernels/ptx/*.ptx; run scripts/gen-ptx.sh first" >&2
    exit 1
fi

logdir="$(mktemp -d)"
trap 'rm -rf "$logdir"' EXIT
status=0
for arch in $archs; do
    for f in "${files[@]}"; do
        name="$(basename "$f" .ptx)"
        if ! "$ptxas" -arch="$arch" -v --warn-on-spills --warn-on-local-memory-usage "$f" -o /dev/null >"$logdir/$arch.$name.log" 2>&1; then
            echo "check-ptx.sh: ptxas -arch=$arch failed on kernels/ptx/$name.ptx:" >&2
            cat "$logdir/$arch.$name.log" >&2
            status=1
        fi
    done
done
"$ptxas" --version | tail -n 2

# Parse `ptxas -v` output into one row per (arch, kernel) and judge it.
"$python" - "$logdir" <<'EOF' || status=1
import os, re, sys
logdir = sys.argv[1]
rows, bad = [], []
for log in sorted(os.listdir(logdir)):
    arch, name, _ = log.split(".", 2)
    kernel = None
    for line in open(os.path.join(logdir, log)):
        if re.search(r"\bwarning\b|\berror\b", line, re.I):
            bad.append(f"{arch} {name}.ptx: {line.strip()}")
        m = re.search(r"Compiling entry function '(\w+)'", line)
        if m:
            kernel = m.group(1)
            rows.append({"arch": arch, "file": name, "kernel": kernel, "regs": 0, "stack": 0,
                         "spill_st": 0, "spill_ld": 0, "smem": 0})
            continue
        if kernel is None:
            continue
        r = rows[-1]
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            r["stack"], r["spill_st"], r["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            r["regs"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m:
            r["smem"] = int(m.group(1))
archs = sorted({r["arch"] for r in rows})
table = {}
for r in rows:
    t = table.setdefault((r["file"], r["kernel"]), {})
    t[r["arch"]] = r
    if r["spill_st"] or r["spill_ld"]:
        bad.append(f"{r['arch']} {r['kernel']}: spills {r['spill_st']} B stored, {r['spill_ld']} B loaded")
    if r["stack"]:
        bad.append(f"{r['arch']} {r['kernel']}: {r['stack']} B stack frame (local memory)")
head = f"{'file':12} {'kernel':28}" + "".join(f" {'regs ' + a:>12}" for a in archs) \
    + f" {'smem B':>7} {'stack B':>7} {'spill B':>7}"
print(head)
for (file, kernel), t in sorted(table.items()):
    any_r = next(iter(t.values()))
    regs = "".join(f" {t[a]['regs'] if a in t else '-':>12}" for a in archs)
    stack = max(r["stack"] for r in t.values())
    spill = max(r["spill_st"] + r["spill_ld"] for r in t.values())
    print(f"{file:12} {kernel:28}{regs} {any_r['smem']:7d} {stack:7d} {spill:7d}")
if not rows:
    bad.append("no entry functions found in ptxas output")
for b in bad:
    print("check-ptx.sh: FAIL " + b, file=sys.stderr)
print(f"check-ptx.sh: {len(table)} kernels x {len(archs)} archs ({', '.join(archs)}) assembled, "
      f"{len(bad)} problems")
sys.exit(1 if bad else 0)
EOF
exit "$status"
