#!/usr/bin/env python3
"""Figure 3 fits started from the same data and initial weights in PyTorch and in memaware.

Writes, for each setting and seed, the reference script's data and PyTorch's initial MLP
weights to DIR/{setting}_{seed}.safetensors, fits the MLP in PyTorch from there exactly as
benches/pytorch_reference.py does (Adam 1e-3, full batch, until MSE < 1e-6), and records the
result in DIR/pytorch.json. Then

    cargo run --release --example figure3_same_start -- DIR

fits the same starts with memaware and prints both side by side. Seed for seed, the two
should agree closely (the losses to several digits over the first hundred steps; steps to
the criterion and test MSE within a few percent), whatever the seed draws: a test of the
engine that seed-to-seed variation cannot blur.

The test MSE is taken on both of memaware's grids (pytorch_reference.figure3_grids):
"test_mse" on the clean grid (extra coordinates zero everywhere), the one the example sets
beside ours, and "test_mse_reference_grid" on the reference script's x_sweep, whose 20
training rows carry their input noise.

Files: tensors x (20 x 31), y (20 x 1), grid_x (1000 x 31), grid_f (1000) and the MLP's
parameters under memaware's names layers.{0,1,2}.{weight,bias}, all little-endian F32.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pytorch_reference import figure3_data, figure3_grids, figure3_test_mse  # noqa: E402

SETTINGS = {"good": 1e-4, "bad": 1e-3, "ugly": 0.0}
LOGGED_STEPS = (1, 10, 100, 1000)


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """The safetensors layout: an 8-byte little-endian header length, the JSON header, then
    the raw data of each tensor in header order."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def fit(setting: str, seed: int, out: Path, max_steps: int) -> dict:
    np.random.seed(seed)
    torch.manual_seed(seed)
    x, y, x_sweep, y_sweep = figure3_data(seed, SETTINGS[setting])
    net = nn.Sequential(nn.Linear(x.shape[1], 300), nn.Tanh(), nn.Linear(300, 300), nn.Tanh(), nn.Linear(300, 1))
    grid_x = figure3_grids(x_sweep)["clean"]
    layers = [m for m in net if isinstance(m, nn.Linear)]
    tensors = {"x": x, "y": y, "grid_x": grid_x, "grid_f": y_sweep.squeeze(1)}
    for i, layer in enumerate(layers):
        tensors[f"layers.{i}.weight"] = layer.weight
        tensors[f"layers.{i}.bias"] = layer.bias
    file = out / f"{setting}_{seed}.safetensors"
    write_safetensors(file, tensors)

    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps, losses = 0, {}
    while True:
        loss = (net(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
        value = loss.item()
        if steps in LOGGED_STEPS:
            losses[str(steps)] = value
        if value < 1e-6 or steps >= max_steps:
            break
    mse = figure3_test_mse(net, x_sweep, y_sweep)
    return {
        "setting": setting,
        "seed": seed,
        "file": file.name,
        "steps": steps,
        "test_mse": mse["test_mse_clean_grid"],
        "test_mse_reference_grid": mse["test_mse_reference_grid"],
        "losses": losses,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="?", default=Path("results/figure3_same_start"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[123, 124, 125, 126, 127])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["good", "bad", "ugly"])
    parser.add_argument("--max-steps", type=int, default=100_000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        for setting in args.settings:
            r = fit(setting, seed, args.out, args.max_steps)
            print(f"{setting:5} seed {seed}: {r['steps']} steps, test MSE {r['test_mse']:.5f}", flush=True)
            runs.append(r)
    meta = {"torch_version": torch.__version__, "max_steps": args.max_steps, "logged_steps": list(LOGGED_STEPS)}
    (args.out / "pytorch.json").write_text(json.dumps({"meta": meta, "runs": runs}, indent=1))
    print(f"wrote {args.out / 'pytorch.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
