#!/usr/bin/env python3
"""PyTorch CUDA baselines for memaware's GPU benchmarks.

Runs on a GPU machine with torch built for CUDA (no network needed). Measures, with CUDA events:

  copy          device-to-device bandwidth of torch.clone on a 1 GiB f32 tensor, counting bytes
                read + written (2 GiB per call), decimal GB/s, median of 20
  xent          F.cross_entropy(z + s, y) forward + backward (s constant) at N*C = 2^26
                (N=2^22 C=16, N=2^16 C=1024, N=2048 C=32768) and at N=256 C=10; microseconds per
                call, eager (many back-to-back calls between two events) and, where capture works,
                replayed from a CUDA graph; GB/s counting 12*N*C + 8*N bytes (read z, s, y; write dz)
  train steps   ColorMNIST MLP 392-390-390-2 ReLU, batch 1024, CE, Adam 1e-3 (wd 1e-4): ms/step;
                linear 1800->2 no bias, full batch 1000, CE, SGD 1e-2: ms/step

Without CUDA (or without torch) it prints the reason, writes {"skipped": reason} and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

XENT_SHAPES = [(1 << 22, 16), (1 << 16, 1024), (2048, 32768), (256, 10)]


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")


def skip(path: Path, reason: str) -> int:
    print(f"skipped: {reason}")
    write_json(path, {"skipped": reason, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return 0


def driver_versions() -> dict:
    """Driver version string (nvidia-smi) and the driver's CUDA API version (libcuda)."""
    out = {"driver_version": None, "driver_cuda_version": None}
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        out["driver_version"] = smi.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    try:
        version = ctypes.c_int(0)
        if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) == 0:
            out["driver_cuda_version"] = f"{version.value // 1000}.{(version.value % 1000) // 10}"
    except OSError:
        pass
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/pytorch_gpu.json"))
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    args = parser.parse_args()

    try:
        import torch
    except ImportError as err:
        return skip(args.out, f"torch is not importable: {err}")
    if not torch.cuda.is_available():
        reason = "torch.cuda.is_available() is False"
        if torch.version.cuda is None:
            reason += f" (torch {torch.__version__} is a CPU-only build)"
        else:
            reason += f" (torch {torch.__version__} built for CUDA {torch.version.cuda}; no usable GPU/driver)"
        return skip(args.out, reason)

    import torch.nn as nn
    import torch.nn.functional as F

    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # f32 numbers, comparable with memaware
    torch.backends.cudnn.allow_tf32 = False
    reps_scale = 0.2 if args.quick else 1.0

    def event_time_ms(fn, calls: int) -> float:
        """Milliseconds per call of fn, `calls` back-to-back calls between two CUDA events."""
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / calls

    def median_ms(fn, calls: int, repeats: int, warmup: int = 3) -> tuple[float, list[float]]:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        samples = [event_time_ms(fn, calls) for _ in range(repeats)]
        return statistics.median(samples), samples

    results: dict = {
        "card": torch.cuda.get_device_name(0),
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version(),
        **driver_versions(),
        "python_version": platform.python_version(),
        "tf32": False,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"{results['card']} (sm {results['compute_capability']}), driver {results['driver_version']} "
          f"(CUDA {results['driver_cuda_version']}), torch {torch.__version__} CUDA {torch.version.cuda}")

    # ---------------------------------------------------------------- device-to-device copy
    src = torch.empty(1 << 28, dtype=torch.float32, device=device).uniform_()
    copy_bytes = 2 * src.numel() * 4

    ms, samples = median_ms(src.clone, calls=1, repeats=20)
    results["d2d_clone_1GiB"] = {
        "ms": ms,
        "GB_per_s": copy_bytes / (ms * 1e-3) / 1e9,
        "bytes_per_call": copy_bytes,
        "samples_ms": samples,
    }
    print(f"clone 1 GiB: {ms:.3f} ms, {results['d2d_clone_1GiB']['GB_per_s']:.1f} GB/s (read+write)")
    del src
    torch.cuda.empty_cache()

    # ---------------------------------------------------------------- cross-entropy fwd+bwd
    results["xent_fwd_bwd"] = {}
    for n, c in XENT_SHAPES:
        torch.manual_seed(0)
        z = torch.randn(n, c, device=device, requires_grad=True)
        s = torch.randn(n, c, device=device)
        y = torch.randint(0, c, (n,), device=device)

        def fwd_bwd(z=z, s=s, y=y):
            loss = F.cross_entropy(z + s, y)
            return torch.autograd.grad(loss, z)[0]

        small = n * c < (1 << 20)
        calls = max(1, int((1000 if small else 20) * reps_scale))
        eager_ms, eager_samples = median_ms(fwd_bwd, calls=calls, repeats=11)
        entry = {
            "N": n,
            "C": c,
            "bytes_per_call": 12 * n * c + 8 * n,
            "eager_us": eager_ms * 1e3,
            "eager_calls_per_sample": calls,
            "eager_samples_us": [t * 1e3 for t in eager_samples],
        }
        entry["eager_GB_per_s"] = entry["bytes_per_call"] / (eager_ms * 1e-3) / 1e9

        # CUDA graph: one capture of the fwd+bwd, replayed; removes Python and launch overhead.
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    fwd_bwd()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_dz = fwd_bwd()
            graph_ms, graph_samples = median_ms(graph.replay, calls=calls, repeats=11)
            expected = torch.autograd.grad(F.cross_entropy(z + s, y), z)[0]
            graph.replay()
            torch.cuda.synchronize()
            entry["graph_matches_eager"] = bool(torch.allclose(static_dz, expected, rtol=1e-5, atol=1e-8))
            entry["graph_us"] = graph_ms * 1e3
            entry["graph_GB_per_s"] = entry["bytes_per_call"] / (graph_ms * 1e-3) / 1e9
            entry["graph_samples_us"] = [t * 1e3 for t in graph_samples]
            del graph, static_dz, expected
        except Exception as err:  # noqa: BLE001 - graph capture is best effort; eager stands
            entry["graph_error"] = f"{type(err).__name__}: {err}"
        key = f"N{n}_C{c}"
        results["xent_fwd_bwd"][key] = entry
        graph_part = (
            f", graph {entry['graph_us']:.2f} us ({entry['graph_GB_per_s']:.1f} GB/s)"
            if "graph_us" in entry else f", graph failed: {entry.get('graph_error')}"
        )
        print(f"xent {key}: eager {entry['eager_us']:.2f} us ({entry['eager_GB_per_s']:.1f} GB/s){graph_part}")
        del z, s, y
        torch.cuda.empty_cache()

    # ---------------------------------------------------------------- training steps
    def train_step_entry(name, model, opt, x, y, calls):
        def step():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        ms, samples = median_ms(step, calls=calls, repeats=11, warmup=10)
        results[name] = {"ms_per_step": ms, "steps_per_s": 1e3 / ms, "samples_ms": samples}
        print(f"{name}: {ms:.4f} ms/step ({1e3 / ms:.0f} steps/s)")

    torch.manual_seed(0)
    x = torch.randn(1024, 392, device=device)
    y = torch.randint(0, 2, (1024,), device=device)
    mlp = nn.Sequential(
        nn.Linear(392, 390), nn.ReLU(), nn.Linear(390, 390), nn.ReLU(), nn.Linear(390, 2)
    ).to(device)
    adam = torch.optim.Adam(mlp.parameters(), lr=1e-3, weight_decay=1e-4)
    train_step_entry("mlp_392_390_390_2_adam_b1024", mlp, adam, x, y, max(1, int(200 * reps_scale)))

    x = torch.randn(1000, 1800, device=device)
    y = torch.randint(0, 2, (1000,), device=device)
    linear = nn.Linear(1800, 2, bias=False).to(device)
    sgd = torch.optim.SGD(linear.parameters(), lr=1e-2)
    train_step_entry("linear_1800x2_sgd", linear, sgd, x, y, max(1, int(200 * reps_scale)))

    write_json(args.out, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
