#!/usr/bin/env python3
"""One Markdown table: memaware's criterion benchmarks against the PyTorch CPU baselines.

memaware side: criterion's target/criterion/<benchmark id>/new/estimates.json, median point
estimate in ns per iteration (an iteration is one training step, one cross-entropy fwd+bwd, or one
GEMM), turned into steps/s. Benchmark ids are found through new/benchmark.json's "full_id" when
criterion wrote one, else by the id's path. PyTorch side: the JSON of benches/pytorch_reference.py.
Missing entries print as "–". Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MODEL_SHAPES = ["1000x1800x2", "1024x392x390", "1024x390x390", "20x31x300", "20x300x300"]

# (row label, criterion benchmark id, PyTorch workload name)
ROWS = [
    ("linear 1800→2, SGD, batch 1000", "train_step/linear_1800x2_sgd", "linear_1800x2_sgd"),
    ("MLP 392-390-390-2, Adam, batch 64", "train_step/mlp_392_390_390_2_adam_b64", "mlp_392_390_390_2_adam_b64"),
    ("MLP 392-390-390-2, Adam, batch 1024", "train_step/mlp_392_390_390_2_adam_b1024", "mlp_392_390_390_2_adam_b1024"),
    ("MLP 31-300-300-1 tanh, Adam, batch 20", "train_step/mlp_31_300_300_1_tanh_adam_b20", "mlp_31_300_300_1_tanh_adam_b20"),
    ("xent fwd+bwd N=65536 C=10, fused", "xent/fused/N65536_C10", "xent_fwd_bwd_N65536_C10"),
    ("xent fwd+bwd N=65536 C=10, composite", "xent/composite/N65536_C10", "xent_fwd_bwd_N65536_C10"),
    ("xent fwd+bwd N=8192 C=1000, fused", "xent/fused/N8192_C1000", "xent_fwd_bwd_N8192_C1000"),
    ("xent fwd+bwd N=8192 C=1000, composite", "xent/composite/N8192_C1000", "xent_fwd_bwd_N8192_C1000"),
    ("sgemm 1024³", "sgemm/1024", "sgemm_1024"),
    ("sgemm 2048³", "sgemm/2048", "sgemm_2048"),
] + [(f"sgemm {s} (m×k×n)", f"sgemm/{s}", f"sgemm_{s}") for s in MODEL_SHAPES]

MISSING = "–"


def median_ns(estimates_file: Path) -> float | None:
    try:
        value = json.loads(estimates_file.read_text())["median"]["point_estimate"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def criterion_medians(criterion_dir: Path) -> dict[str, float]:
    """Benchmark id -> median ns per iteration, for every benchmark criterion has recorded."""
    medians: dict[str, float] = {}
    if not criterion_dir.is_dir():
        return medians
    for estimates in criterion_dir.rglob("new/estimates.json"):
        bench_dir = estimates.parent.parent
        full_id = None
        try:
            full_id = json.loads((estimates.parent / "benchmark.json").read_text()).get("full_id")
        except (OSError, ValueError, AttributeError):
            pass
        if not isinstance(full_id, str):
            full_id = bench_dir.relative_to(criterion_dir).as_posix()
        ns = median_ns(estimates)
        if ns is not None:
            medians[full_id] = ns
    return medians


def pytorch_steps_per_s(pytorch_json: Path) -> tuple[dict[str, float], set[str], dict]:
    """Workload name -> steps/s, the names measured on a contended machine, and the meta block
    (torch version, CPU), from the PyTorch JSON."""
    try:
        data = json.loads(pytorch_json.read_text())
    except (OSError, ValueError):
        return {}, set(), {}
    if not isinstance(data, dict):
        return {}, set(), {}
    workloads = data.get("workloads", data)  # also accept a flat {name: {...}} file
    meta = data.get("meta", {}) if isinstance(data.get("meta"), dict) else {}
    rates, contended = {}, set()
    for name, entry in workloads.items() if isinstance(workloads, dict) else []:
        if isinstance(entry, dict):
            rate = entry.get("steps_per_s")
            if isinstance(rate, (int, float)) and rate > 0:
                rates[name] = float(rate)
            detail = entry.get("detail")
            if isinstance(detail, dict) and detail.get("contended") is True:
                contended.add(name)
    return rates, contended, meta


def format_rate(rate: float | None) -> str:
    if rate is None:
        return MISSING
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.3g}" if rate < 10 else f"{rate:.1f}"


def build_table(criterion_dir: Path, pytorch_json: Path) -> str:
    medians = criterion_medians(criterion_dir)
    torch_rates, contended, meta = pytorch_steps_per_s(pytorch_json)
    lines = [
        "| workload | memaware steps/s | PyTorch steps/s | ratio (memaware / PyTorch) |",
        "|---|---:|---:|---:|",
    ]
    for label, bench_id, torch_name in ROWS:
        ns = medians.get(bench_id)
        ours = 1e9 / ns if ns is not None else None
        theirs = torch_rates.get(torch_name)
        ratio = f"{ours / theirs:.2f}×" if ours is not None and theirs is not None else MISSING
        mark = " *" if torch_name in contended and theirs is not None else ""
        lines.append(f"| {label} | {format_rate(ours)} | {format_rate(theirs)}{mark} | {ratio} |")
    if meta:
        lines.append("")
        lines.append(
            f"PyTorch {meta.get('torch_version', '?')} on {meta.get('cpu_model', '?')}, "
            f"{meta.get('threads', '?')} threads. memaware: criterion median. "
            "For sgemm and xent a step is one call; ratios equal GFLOP/s and GB/s ratios."
        )
    if any(torch_name in contended for _, _, torch_name in ROWS):
        lines.append("")
        lines.append("\\* measured while other processes kept the CPUs busy: PyTorch's number is low.")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--criterion", type=Path, default=Path("target/criterion"),
                        help="criterion output directory (default target/criterion)")
    parser.add_argument("--pytorch", type=Path, default=Path("results/pytorch_reference.json"),
                        help="JSON written by benches/pytorch_reference.py")
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    args = parser.parse_args()

    table = build_table(args.criterion, args.pytorch)
    sys.stdout.write(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
