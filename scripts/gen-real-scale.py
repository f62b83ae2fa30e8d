#!/usr/bin/env python3
"""Writes a CelebA-shaped or MultiNLI-shaped feature file (safetensors, the layout
`memaware train --data FILE` reads) for the real-scale benchmark (docs/performance-real-scale.md).

  celeba    162,770 / 19,867 / 19,962 rows x 2048 (ResNet-50 features), 2 classes (blond),
            2 attribute values (male); the groups have CelebA's counts per split (blond men are
            1,387 of the training rows, 0.85%)
  multinli  206,175 / 82,462 / 123,712 rows x 768 (BERT features), 3 classes, 2 attribute values
            (negation words); the groups have MultiNLI's training shares in every split

--scale multiplies every group's count (rounded, at least 1 per group), so a CI smoke test can
use, say, --scale 0.01; --dim overrides the feature dimension. Features are f32: Gaussian noise
plus a weak class direction (the core feature) and a strong attribute direction (the spurious
one), so a linear head learns the attribute shortcut first, as on the real features. Rows of each
split are shuffled. Written in chunks: the generator needs far less memory than the file.
Only numpy is needed.

  python3 scripts/gen-real-scale.py celeba /tmp/celeba.safetensors
  python3 scripts/gen-real-scale.py multinli /tmp/mnli.safetensors --scale 0.1
"""

from __future__ import annotations

import argparse
import json
import struct

import numpy as np

# (class y, attribute a) -> rows per split (train, valid, test).
SHAPES = {
    "celeba": {
        "dim": 2048,
        "classes": 2,
        "n_attr": 2,
        "groups": {
            (0, 0): (71629, 8535, 9767),
            (0, 1): (66874, 8276, 7535),
            (1, 0): (22880, 2874, 2480),
            (1, 1): (1387, 182, 180),
        },
    },
    "multinli": {
        "dim": 768,
        "classes": 3,
        "n_attr": 2,
        # Training counts of MultiNLI's six groups; validation and test (82,462 and 123,712
        # rows) take the same shares.
        "groups": {
            (0, 0): 57498,
            (0, 1): 11158,
            (1, 0): 67376,
            (1, 1): 1521,
            (2, 0): 66630,
            (2, 1): 1992,
        },
        "split_rows": (206175, 82462, 123712),
    },
}
SPLITS = ("tr", "va", "te")


def group_counts(shape: dict) -> dict:
    """(y, a) -> (train, valid, test) counts."""
    groups = shape["groups"]
    if "split_rows" not in shape:
        return groups
    total = sum(groups.values())
    out = {}
    for g, n_tr in groups.items():
        out[g] = tuple(
            n_tr if i == 0 else round(n_tr * rows / total)
            for i, rows in enumerate(shape["split_rows"])
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    shape = SHAPES[args.shape]
    d = args.dim or shape["dim"]
    k = shape["classes"]
    rng = np.random.default_rng(args.seed)
    core = rng.standard_normal(d).astype(np.float32)
    core /= np.linalg.norm(core)
    spurious = rng.standard_normal(d).astype(np.float32)
    spurious /= np.linalg.norm(spurious)

    labels = {}
    for i, s in enumerate(SPLITS):
        ys, as_ = [], []
        for (y, a), counts in group_counts(shape).items():
            n = max(1, round(counts[i] * args.scale))
            ys.append(np.full(n, y, np.int64))
            as_.append(np.full(n, a, np.int64))
        y, a = np.concatenate(ys), np.concatenate(as_)
        order = rng.permutation(len(y))
        labels[s] = (y[order], a[order])

    # Features first (4-byte aligned after an 8-byte-padded header), then labels.
    entries, offset = {}, 0
    for s in SPLITS:
        n = len(labels[s][0])
        entries[f"{s}.x"] = {"dtype": "F32", "shape": [n, d], "data_offsets": [offset, offset + 4 * n * d]}
        offset += 4 * n * d
    for s in SPLITS:
        n = len(labels[s][0])
        for t in ("y", "a"):
            entries[f"{s}.{t}"] = {"dtype": "I64", "shape": [n], "data_offsets": [offset, offset + 8 * n]}
            offset += 8 * n
    entries["__metadata__"] = {"classes": str(k), "n_attr": str(shape["n_attr"]), "name": args.shape}
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)

    with open(args.out, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for s in SPLITS:
            y, a = labels[s]
            sign_y = (2.0 * y / max(k - 1, 1) - 1.0).astype(np.float32)
            sign_a = (2.0 * a - 1.0).astype(np.float32)
            for lo in range(0, len(y), 8192):
                hi = min(lo + 8192, len(y))
                x = rng.standard_normal((hi - lo, d), dtype=np.float32)
                x *= np.float32(1.0 / np.sqrt(d))
                x += 0.5 * sign_y[lo:hi, None] * core[None, :]
                x += 1.0 * sign_a[lo:hi, None] * spurious[None, :]
                f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        for s in SPLITS:
            for v in labels[s]:
                f.write(v.astype("<i8").tobytes())
    sizes = ", ".join(f"{s} {len(labels[s][0])}" for s in SPLITS)
    print(f"wrote {args.out}: {args.shape}, d = {d}, {k} classes; rows {sizes}; {8 + len(header) + offset} bytes")


if __name__ == "__main__":
    main()
