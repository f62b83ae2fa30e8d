#!/usr/bin/env python3
"""Merges the GPU check's outputs into one JSON file and prints a short table.

Reads, from the output folder of scripts/gpu-check.sh (each may be missing):
  nvidia-smi.txt   the csv line of `nvidia-smi --query-gpu=name,driver_version,memory.total,
                   compute_cap --format=csv,noheader`, then nvidia-smi's banner ("CUDA Version")
  tests.log        the test binary's standard output ("test NAME ... ok|FAILED|ignored" lines,
                   the "failures:" and "successes:" sections with each test's output)
  bench.json       benches/cuda.rs --json
  pytorch.json     benches/pytorch_gpu.py --out
and --build-file (scripts/gpu-build.sh's record of the executables, .gpu-bin/BUILD.txt), and writes gpu-check.json there: the card, driver and CUDA version, each test's status (with
the panic message of a failure and the lines a test printed), every benchmark, memaware's
ratios to PyTorch and to the copy bandwidth, and the issue's speed targets met or not.

  python3 scripts/gpu-report.py --dir gpu-out [--build-file F] [--tests-rc N] [--bench-rc N]
                                [--pytorch-rc N] [--elapsed S]
  python3 scripts/gpu-report.py --self-test   (checks the parser on scripts/testdata/gpu-report)

Standard library only. Exit status 0 unless the inputs could not be read at all.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

# The issue's speed targets.
PCT_OF_COPY_TARGET = 80.0  # fused CE fwd+bwd at N*C >= 2^26, % of device copy bandwidth
SPEEDUP_TARGET = 2.5  # fused CE vs PyTorch's F.cross_entropy(z + s, y) fwd+bwd
SMALL_US_TARGET = 10.0  # one fused call at N <= 256, C <= 10
BIG = 1 << 26

TEST_LINE = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b")
SECTION = re.compile(r"^---- (\S+) stdout ----$")
RESULT_LINE = re.compile(
    r"^test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored"
)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def read_json(path: Path) -> dict:
    text = read_text(path)
    if text is None:
        return {"missing": f"{path.name} was not written"}
    try:
        value = json.loads(text)
    except ValueError as err:
        return {"error": f"{path.name} is not valid JSON: {err}"}
    return value if isinstance(value, dict) else {"error": f"{path.name} is not an object"}


def parse_smi(text: str | None) -> dict:
    out = {"card": None, "driver": None, "memory": None, "compute_capability": None, "cuda_version": None}
    if not text:
        return out
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and re.fullmatch(r"[0-9.]+", parts[1]) and re.fullmatch(r"[0-9.]+", parts[3]):
            out.update(card=parts[0], driver=parts[1], memory=parts[2], compute_capability=parts[3])
            break
    m = re.search(r"CUDA Version:\s*([0-9.]+)", text)
    if m:
        out["cuda_version"] = m.group(1)
    if out["driver"] is None:
        m = re.search(r"Driver Version:\s*([0-9.]+)", text)
        if m:
            out["driver"] = m.group(1)
    return out


def parse_tests(log: str | None, rc: int | None) -> dict:
    """Each test's status from a libtest log (run with --test-threads=1 --show-output)."""
    if log is None:
        return {"summary": {"ran": False, "rc": rc, "note": "tests.log missing"}, "results": {}}
    results: dict[str, dict] = {}
    order: list[str] = []
    summary = {"ran": True, "rc": rc, "passed": 0, "failed": 0, "ignored": 0, "complete": False}
    current = None  # test whose captured output is being read
    for line in log.splitlines():
        m = TEST_LINE.match(line)
        if m:
            name, status = m.group(1), m.group(2)
            if name not in results:
                order.append(name)
            results.setdefault(name, {"output": []})["status"] = status
            current = None
            continue
        m = SECTION.match(line)
        if m:
            current = m.group(1)
            results.setdefault(current, {"status": "unknown", "output": []})
            continue
        m = RESULT_LINE.match(line)
        if m:
            summary["complete"] = True
            current = None
            continue
        if line.strip() in ("failures:", "successes:"):
            current = None
            continue
        if current is not None and line.strip():
            results[current]["output"].append(line.rstrip())
    for name, r in results.items():
        status = r.get("status", "unknown")
        # A test that found no GPU (without REQUIRE_CUDA=1) passes after printing SKIP.
        if status == "ok" and any(l.startswith("SKIP:") for l in r["output"]):
            status = r["status"] = "skipped"
        key = {"ok": "passed", "FAILED": "failed", "ignored": "ignored", "skipped": "skipped"}.get(status, "unknown")
        summary[key] = summary.get(key, 0) + 1
        if status == "FAILED":
            panic = [l for l in r["output"] if "panicked at" in l]
            if panic:
                i = r["output"].index(panic[0])
                r["message"] = " ".join(r["output"][i : i + 2])
        if status == "unknown":
            r["status"] = "not finished"
    # A test that started but never reported (a timeout or a crash) shows as "test X ... "
    # with nothing after it on the last line.
    tail = log.rstrip().splitlines()[-1] if log.strip() else ""
    m = re.match(r"^test (\S+) \.\.\. *$", tail)
    if m and m.group(1) not in results:
        results[m.group(1)] = {"status": "not finished", "output": []}
        summary["unknown"] = summary.get("unknown", 0) + 1
    summary["total"] = len(results)
    return {"summary": summary, "results": results}


def ratio(a, b):
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return a / b if b > 0 else None


def compare(bench: dict, torch: dict) -> dict:
    """memaware against the copy bandwidth and against PyTorch, with the issue's targets."""
    out: dict = {"xent": {}}
    copy = (bench.get("copy") or {}).get("GB_per_s")
    torch_copy = (torch.get("d2d_clone_1GiB") or {}).get("GB_per_s")
    out["copy_GB_per_s"] = {"memaware": copy, "pytorch": torch_copy}
    torch_xent = torch.get("xent_fwd_bwd") or {}
    for key, e in sorted((bench.get("xent") or {}).items(), key=lambda kv: -kv[1].get("N", 0) * kv[1].get("C", 0)):
        n, c = e.get("N", 0), e.get("C", 0)
        t = torch_xent.get(key) or {}
        entry = {
            "N": n,
            "C": c,
            "fused_us": e.get("fused_kernel_us"),
            "fused_GB_per_s": e.get("fused_kernel_GB_per_s"),
            "fused_pct_of_copy": e.get("fused_kernel_pct_of_copy"),
            "fused_autograd_us": e.get("fused_autograd_us"),
            "composite_us": e.get("composite_us"),
            "fused_speedup_vs_composite": ratio(e.get("composite_us"), e.get("fused_kernel_us")),
            "pytorch_eager_us": t.get("eager_us"),
            "pytorch_graph_us": t.get("graph_us"),
            "speedup_vs_pytorch_eager": ratio(t.get("eager_us"), e.get("fused_kernel_us")),
            "speedup_vs_pytorch_graph": ratio(t.get("graph_us"), e.get("fused_kernel_us")),
            "autograd_speedup_vs_pytorch_eager": ratio(t.get("eager_us"), e.get("fused_autograd_us")),
        }
        targets = {}
        if n * c >= BIG:
            pct = entry["fused_pct_of_copy"]
            targets["pct_of_copy_ge_80"] = None if pct is None else pct >= PCT_OF_COPY_TARGET
            sp = entry["speedup_vs_pytorch_eager"]
            targets["speedup_vs_pytorch_ge_2.5"] = None if sp is None else sp >= SPEEDUP_TARGET
        if n <= 256 and c <= 10:
            us = entry["fused_us"]
            targets["fused_call_under_10us"] = None if us is None else us < SMALL_US_TARGET
        entry["targets"] = targets
        out["xent"][key] = entry
    for key, label in [("mlp_392_390_390_2_adam_b1024", "mlp_step"), ("linear_1800x2_sgd", "linear_step")]:
        mine = (bench.get(key) or {}).get("ms_per_step")
        theirs = (torch.get(key) or {}).get("ms_per_step")
        sp = ratio(theirs, mine)
        out[label] = {"memaware_ms": mine, "pytorch_ms": theirs, "speedup_vs_pytorch": sp}
        if key.startswith("mlp"):
            out[label]["targets"] = {"faster_than_pytorch": None if sp is None else sp > 1.0}
    g = bench.get("sgemm_4096") or {}
    out["sgemm_4096_GFLOP_per_s"] = g.get("GFLOP_per_s")
    return out


def fmt(v, spec: str, none: str = "–") -> str:
    if v is None:
        return none
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return none


def mark(ok) -> str:
    return "" if ok is None else ("yes" if ok else "NO")


def table(report: dict) -> str:
    smi, tests, cmp = report["gpu"], report["tests"], report["comparison"]
    s = tests["summary"]
    lines = [
        "",
        f"GPU check: {smi.get('card') or 'no GPU found'}, driver {smi.get('driver') or '?'}, "
        f"CUDA {smi.get('cuda_version') or '?'} ({report.get('elapsed_s', '?')} s)",
    ]
    if s.get("ran"):
        lines.append(
            f"tests: {s.get('passed', 0)} passed, {s.get('failed', 0)} failed, "
            f"{s.get('skipped', 0)} skipped (no GPU), {s.get('ignored', 0)} ignored, "
            f"{s.get('unknown', 0)} unfinished of {s.get('total', 0)}"
            f"{'' if s.get('complete') else ' (run did not finish)'}; exit status {s.get('rc')}"
        )
        bad = [(n, r) for n, r in tests["results"].items() if r["status"] not in ("ok", "ignored", "skipped")]
        for name, r in bad[:8]:
            lines.append(f"  {r['status']}: {name}: {r.get('message', '')[:200]}")
        if len(bad) > 8:
            lines.append(f"  ... and {len(bad) - 8} more (see gpu-check.json)")
    else:
        lines.append(f"tests: not run ({s.get('note', '')})")
    bench = report["bench"]
    if "copy" not in bench:
        reason = bench.get("skipped") or bench.get("error") or bench.get("missing") or "no results"
        lines.append(f"benchmarks: {reason}")
        return "\n".join(lines)
    torch_state = report["pytorch"].get("skipped") or report["pytorch"].get("missing") or report["pytorch"].get("error")
    if torch_state:
        lines.append(f"PyTorch: {torch_state}")
    lines.append(f"{'benchmark':<30}{'memaware':>14}{'PyTorch':>12}{'ratio':>8}  target met")
    c = cmp["copy_GB_per_s"]
    lines.append(f"{'d2d copy GB/s':<30}{fmt(c['memaware'], '14.0f')}{fmt(c['pytorch'], '12.0f')}")
    for key, e in cmp["xent"].items():
        t = e["targets"]
        goals = ", ".join(f"{k} {mark(v)}" for k, v in t.items()) if t else ""
        mine = f"{fmt(e['fused_us'], '.1f')}us {fmt(e['fused_pct_of_copy'], '.0f')}%"
        lines.append(
            f"{'CE ' + key + ' fused':<30}{mine:>14}{fmt(e['pytorch_eager_us'], '10.1f')}us"
            f"{fmt(e['speedup_vs_pytorch_eager'], '7.2f')}x  {goals}"
        )
        lines.append(
            f"{'  composite / fused+autograd':<30}{fmt(e['composite_us'], '12.1f')}us"
            f"{fmt(e['fused_autograd_us'], '10.1f')}us (memaware both)"
        )
    for label, name in [("mlp_step", "MLP step ms (b1024, Adam)"), ("linear_step", "linear 1800->2 step ms")]:
        e = cmp[label]
        goals = ", ".join(f"{k} {mark(v)}" for k, v in e.get("targets", {}).items())
        lines.append(
            f"{name:<30}{fmt(e['memaware_ms'], '14.4f')}{fmt(e['pytorch_ms'], '12.4f')}"
            f"{fmt(e['speedup_vs_pytorch'], '7.2f')}x  {goals}"
        )
    lines.append(f"{'sgemm 4096^3 GFLOP/s':<30}{fmt(cmp['sgemm_4096_GFLOP_per_s'], '14.0f')}")
    return "\n".join(lines)


def build_report(d: Path, build_file: Path | None = None, tests_rc=None, bench_rc=None, pytorch_rc=None,
                 elapsed=None) -> dict:
    bench = read_json(d / "bench.json")
    torch = read_json(d / "pytorch.json")
    build = read_text(build_file) if build_file else None
    report = {
        "gpu": parse_smi(read_text(d / "nvidia-smi.txt")),
        "build": (build or "").strip().splitlines(),
        "tests": parse_tests(read_text(d / "tests.log"), tests_rc),
        "bench": bench,
        "bench_rc": bench_rc,
        "pytorch": torch,
        "pytorch_rc": pytorch_rc,
        "elapsed_s": elapsed,
    }
    report["comparison"] = compare(bench, torch)
    return report


def self_test() -> int:
    """The parser and the comparison on the fixtures in scripts/testdata/gpu-report."""
    d = Path(__file__).resolve().parent / "testdata" / "gpu-report"
    r = build_report(d, d / "BUILD.txt", tests_rc=101, bench_rc=0, pytorch_rc=0, elapsed=123)
    assert r["build"][0].startswith("commit: "), r["build"]
    s = r["tests"]["summary"]
    assert (s["passed"], s["failed"], s["ignored"], s["skipped"], s["total"]) == (2, 1, 1, 1, 5), s
    assert s["complete"], s
    res = r["tests"]["results"]
    assert res["argmax_matches_the_cpu"]["status"] == "skipped"
    assert res["where_cond_matches_the_cpu"]["status"] == "ok"
    failed = res["matrix_products_match_the_cpu_for_every_transpose_and_shape"]
    assert failed["status"] == "FAILED" and "norm-wise relative error" in failed["message"], failed
    assert any("largest relative loss difference" in l for l in res["figure1_mat_pipeline_matches_the_cpu_at_reduced_size"]["output"])
    assert r["gpu"] == {
        "card": "NVIDIA H100 80GB HBM3",
        "driver": "580.159.04",
        "memory": "81559 MiB",
        "compute_capability": "9.0",
        "cuda_version": "13.0",
    }, r["gpu"]
    big = r["comparison"]["xent"]["N4194304_C16"]
    assert abs(big["speedup_vs_pytorch_eager"] - 600.0 / 200.0) < 1e-9, big
    assert big["targets"] == {"pct_of_copy_ge_80": True, "speedup_vs_pytorch_ge_2.5": True}, big
    small = r["comparison"]["xent"]["N256_C10"]
    assert small["targets"] == {"fused_call_under_10us": True}, small
    assert r["comparison"]["mlp_step"]["targets"] == {"faster_than_pytorch": False}
    text = table(r)
    assert "FAILED: matrix_products" in text and "CE N4194304_C16 fused" in text, text
    # A run cut off in the middle: the unfinished test is reported, not lost.
    cut = parse_tests("running 2 tests\ntest a ... ok\ntest b ... ", None)
    assert cut["results"]["b"]["status"] == "not finished" and not cut["summary"]["complete"], cut
    # Nothing at all: every input missing.
    empty = build_report(d / "does-not-exist")
    assert not empty["tests"]["summary"]["ran"] and "missing" in empty["bench"]
    table(empty)
    json.dumps(r)
    print("gpu-report self-test: ok")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=Path("gpu-out"))
    p.add_argument("--build-file", type=Path)
    p.add_argument("--tests-rc", type=int)
    p.add_argument("--bench-rc", type=int)
    p.add_argument("--pytorch-rc", type=int)
    p.add_argument("--elapsed", type=int)
    p.add_argument("--self-test", action="store_true")
    a = p.parse_args()
    if a.self_test:
        return self_test()
    report = build_report(a.dir, a.build_file, a.tests_rc, a.bench_rc, a.pytorch_rc, a.elapsed)
    path = a.dir / "gpu-check.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
