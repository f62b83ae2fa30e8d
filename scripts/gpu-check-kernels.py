#!/usr/bin/env python3
"""GPU check of kernels/ptx/*.ptx against float64 NumPy references, plus kernel timings.

    python3 scripts/gpu-check-kernels.py [--out DIR] [--no-bench]

Needs a CUDA GPU with CuPy and NumPy (PyTorch optional: optimizer parity). Loads the committed
PTX exactly as the Rust backend will (driver JIT of PTX ISA 8.0 / compute_80), launches every
kernel with the configuration documented in kernels/README.md, on fresh random inputs with
NaN-poisoned outputs, and compares with references. Error bounds are the standard worst-case
floating-point bounds (n * 2^-24 * sum|terms| for sums and products), not tuned constants.
Writes DIR/gpu-check.json; prints one line per check and a summary. Exit 1 on any failure.
"""

import argparse
import json
import math
import os
import sys
import time
import traceback

import numpy as np
import cupy as cp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PTX = os.path.join(ROOT, "kernels", "ptx")
U = 2.0 ** -24  # f32 unit roundoff
RNG = np.random.default_rng(int(time.time()))  # fresh inputs every run, seed printed
SEED = int(RNG.integers(0, 2**31))
RNG = np.random.default_rng(SEED)

results = []
modules = {}


def kern(module, name):
    if module not in modules:
        modules[module] = cp.RawModule(path=os.path.join(PTX, module + ".ptx"))
    return modules[module].get_function(name)


def u32(x):
    return np.uint32(x)


def f32(x):
    return np.float32(x)


def usize(x):
    return np.uint64(x)


NULL = np.uint64(0)


def record(name, ok, detail=""):
    results.append({"check": name, "ok": bool(ok), "detail": detail})
    print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)


def check(name):
    def deco(fn):
        def run():
            try:
                fn()
            except Exception:
                record(name, False, "exception:\n" + traceback.format_exc())
        run.__name__ = name
        return run
    return deco


def poison(shape, dtype=np.float32):
    a = cp.empty(shape, dtype=dtype)
    if dtype == np.float32:
        a.fill(np.nan)
    else:
        a.fill(0xDEADBEEF)
    return a


def grid1(n, block=256, cap=65535):
    return (max(1, min((n + block - 1) // block, cap)),)


def close(name, out, ref, bound):
    """out, ref: arrays; bound: per-element absolute error bound (array or scalar)."""
    out = np.atleast_1d(np.asarray(out, dtype=np.float64))
    ref = np.atleast_1d(np.asarray(ref, dtype=np.float64))
    same_nan = np.isnan(out) == np.isnan(ref)
    same_inf = np.where(np.isinf(ref), out == ref, True)
    fin = np.isfinite(ref)
    err = np.where(fin, np.abs(out - np.where(fin, ref, 0)), 0)
    bound = np.broadcast_to(np.asarray(bound, dtype=np.float64), err.shape)
    within = (err <= bound) | ~fin
    ok = bool(np.all(same_nan) and np.all(same_inf) and np.all(within) and
              not np.any(np.isnan(out) & ~np.isnan(ref)))
    worst = float(np.max(err / np.maximum(bound, 1e-300))) if err.size else 0.0
    rel = float(np.linalg.norm(err[fin]) / max(np.linalg.norm(ref[fin]), 1e-300)) if fin.any() else 0.0
    detail = f"rel={rel:.2e} err/bound={worst:.2f}"
    if not ok:
        bad = np.argwhere(~(within & same_nan & same_inf))
        if bad.size:
            i = tuple(bad[0])
            detail += f" first bad at {i}: out={out[i]!r} ref={ref[i]!r} bound={bound[i]!r}"
    record(name, ok, detail)
    return ok


def exact(name, out, ref):
    out, ref = np.asarray(out), np.asarray(ref)
    if out.dtype.kind == "f":
        # Bitwise, except that any NaN matches any NaN (the GPU's canonical NaN has another
        # payload than NumPy's).
        ref = ref.astype(np.float32)
        ok = out.shape == ref.shape and bool(np.all(
            (out.view(np.uint32) == ref.view(np.uint32)) | (np.isnan(out) & np.isnan(ref))))
    else:
        ok = np.array_equal(out, ref)
    n_bad = int(np.sum(out != ref)) if out.shape == ref.shape else -1
    record(name, ok, "bitwise" if ok else f"{n_bad} differ")
    return ok


# ---------------------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------------------
UNARY = {
    "neg_f32": (lambda x: -x, 0, "any"),
    "exp_f32": (np.exp, 4, "small"),
    "log_f32": (np.log, 4, "pos"),
    "tanh_f32": (np.tanh, 4, "any"),
    "relu_f32": (lambda x: np.where(x < 0, 0, x), 0, "any"),
    "sigmoid_f32": (lambda x: 1 / (1 + np.exp(-x)), 8, "any"),
    "sqrt_f32": (np.sqrt, 1, "pos"),
    "abs_f32": (np.abs, 0, "any"),
    "recip_f32": (lambda x: 1 / x, 1, "pos"),
    "square_f32": (lambda x: x * x, 1, "any"),
    "step_f32": (lambda x: (x > 0).astype(np.float64), 0, "any"),
}


@check("elementwise")
def t_elementwise():
    n = 100_003
    dom = {
        "any": RNG.standard_normal(n).astype(np.float32) * 4,
        "small": (RNG.standard_normal(n) * 10).astype(np.float32),
        "pos": (RNG.random(n) * 100 + 1e-3).astype(np.float32),
    }
    for name, (f, ulps, d) in UNARY.items():
        x = dom[d]
        y = poison(n)
        kern("elementwise", name)(grid1(n), (256,), (cp.asarray(x), y, usize(n)))
        ref = f(x.astype(np.float64))
        close(f"elementwise.{name}", y.get(), ref, np.abs(ref) * (ulps + 1) * U * 2 + (1e-38 if ulps else 0))
    x = dom["any"]
    y = poison(n)
    kern("elementwise", "affine_f32")(grid1(n), (256,), (cp.asarray(x), y, usize(n), f32(1.5), f32(-0.25)))
    ref = 1.5 * x.astype(np.float64) - 0.25
    close("elementwise.affine_f32", y.get(), ref, np.abs(ref) * U + 1e-7)
    xp = dom["pos"]
    y = poison(n)
    kern("elementwise", "powf_f32")(grid1(n), (256,), (cp.asarray(xp), y, usize(n), f32(1.7)))
    ref = xp.astype(np.float64) ** np.float64(np.float32(1.7))
    close("elementwise.powf_f32", y.get(), ref, np.abs(ref) * 16 * U)
    y = poison(n)
    kern("elementwise", "fill_f32")(grid1(n), (256,), (y, usize(n), f32(3.25)))
    exact("elementwise.fill_f32", y.get(), np.full(n, 3.25, np.float32))

    a = (RNG.standard_normal(n) * 3).astype(np.float32)
    b = (RNG.standard_normal(n) * 3).astype(np.float32)
    b[::7] = a[::7]  # ties for eq/ge/max/min
    a[5], b[6] = np.nan, np.nan
    binref = {
        "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
        "maximum": np.maximum, "minimum": np.minimum,
        "eq": lambda p, q: (p == q).astype(np.float32), "ge": lambda p, q: (p >= q).astype(np.float32),
    }
    with np.errstate(all="ignore"):
        for op, f in binref.items():
            out = poison(n)
            kern("elementwise", f"{op}_f32")(grid1(n), (256,), (cp.asarray(a), cp.asarray(b), out, usize(n)))
            exact(f"elementwise.{op}_f32", out.get(), f(a, b).astype(np.float32))
        # broadcast: out (3, 4, 5, 7); a (3, 4, 5, 7) view with strides, b (1, 4, 1, 7)
        shape = (3, 4, 5, 7)
        A = (RNG.standard_normal(shape) * 3).astype(np.float32)
        B = (RNG.standard_normal((1, 4, 1, 7)) * 3).astype(np.float32)
        nn = int(np.prod(shape))
        ast = [s // 4 for s in A.strides]
        bst = [0 if B.shape[i] == 1 else B.strides[i] // 4 for i in range(4)]
        for op, f in binref.items():
            out = poison(nn)
            kern("elementwise", f"{op}_bcast_f32")((3,), (256,), (
                cp.asarray(A), cp.asarray(B), out, u32(nn), u32(shape[1]), u32(shape[2]), u32(shape[3]),
                *map(u32, ast), *map(u32, bst)))
            exact(f"elementwise.{op}_bcast_f32", out.get().reshape(shape), f(A, B).astype(np.float32))
        # broadcast the other way round (lhs broadcast along dims 0 and 2), rank-2 padded to 4
        A2 = (RNG.standard_normal((1, 9)) * 3).astype(np.float32)
        B2 = (RNG.standard_normal((6, 9)) * 3).astype(np.float32)
        out = poison(54)
        kern("elementwise", "sub_bcast_f32")((1,), (256,), (
            cp.asarray(A2), cp.asarray(B2), out, u32(54), u32(1), u32(6), u32(9),
            u32(0), u32(0), u32(0), u32(1), u32(0), u32(0), u32(9), u32(1)))
        exact("elementwise.sub_bcast_f32.lhs_bcast", out.get().reshape(6, 9), A2 - B2)
    mask = (RNG.random(n) < 0.5).astype(np.float32)
    out = poison(n)
    kern("elementwise", "where_cond_f32")(grid1(n), (256,), (cp.asarray(mask), cp.asarray(a), cp.asarray(b), out, usize(n)))
    exact("elementwise.where_cond_f32", out.get(), np.where(mask != 0, a, b))
    # in place
    xg = cp.asarray(dom["any"])
    kern("elementwise", "square_f32")(grid1(n), (256,), (xg, xg, usize(n)))
    exact("elementwise.square_f32.inplace", xg.get(), dom["any"] * dom["any"])


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------
@check("reduce")
def t_reduce():
    for (outer, ln, inner) in [(1, 1, 1), (777, 33, 1), (5, 5000, 1), (3, 1000, 2), (4, 257, 100),
                               (2, 0, 3), (1, 100_000, 2), (7, 3, 1000)]:
        x = RNG.standard_normal((outer, ln, inner)).astype(np.float32)
        if x.size > 10:
            x.flat[7] = np.nan if outer > 1 else x.flat[7]
        xd = cp.asarray(x)
        ref_sum = x.astype(np.float64).sum(1)
        bound = ln * U * np.abs(x.astype(np.float64)).sum(1) + 1e-30
        with np.errstate(invalid="ignore"):
            ref_max = x.max(1) if ln > 0 else np.full((outer, inner), -np.inf, np.float32)
        variants = ["block", "cols"] + (["warp"] if inner == 1 else [])
        for v in variants:
            for op, ref in [("sum", ref_sum), ("max", ref_max)]:
                out = poison(outer * inner)
                k = kern("reduce", f"{op}_axis_{v}_f32")
                if v == "warp":
                    k(grid1(outer, 8), (256,), (xd, out, u32(outer), u32(ln)))
                elif v == "block":
                    k((min(outer * inner, 65535),), (256,), (xd, out, u32(outer), u32(ln), u32(inner)))
                else:
                    k(((inner + 31) // 32, min(outer, 65535)), (32, 8), (xd, out, u32(outer), u32(ln), u32(inner)))
                got = out.get().reshape(outer, inner)
                tag = f"reduce.{op}_axis_{v}({outer},{ln},{inner})"
                if op == "sum":
                    close(tag, got, ref, bound)
                else:
                    exact(tag, got, ref)
                if op == "sum" and v == "block":
                    out2 = poison(outer * inner)
                    k((min(outer * inner, 65535),), (256,), (xd, out2, u32(outer), u32(ln), u32(inner)))
                    exact(tag + ".rerun", out2.get(), out.get())
    # two-stage column reduction over a long axis (gridDim.z = Z chunks, then a second pass)
    for (outer, ln, inner, Z) in [(1, 100_000, 2, 97), (3, 5000, 40, 8)]:
        x = RNG.standard_normal((outer, ln, inner)).astype(np.float32)
        xd = cp.asarray(x)
        for op in ["sum", "max"]:
            k = kern("reduce", f"{op}_axis_cols_f32")
            part = poison(Z * outer * inner)
            k(((inner + 31) // 32, min(outer, 65535), Z), (32, 8), (xd, part, u32(outer), u32(ln), u32(inner)))
            out = poison(outer * inner)
            k(((outer * inner + 31) // 32, 1, 1), (32, 8), (part, out, u32(1), u32(Z), u32(outer * inner)))
            got = out.get().reshape(outer, inner)
            tag = f"reduce.{op}_axis_cols.two_stage({outer},{ln},{inner},Z={Z})"
            if op == "sum":
                close(tag, got, x.astype(np.float64).sum(1), ln * U * np.abs(x.astype(np.float64)).sum(1))
            else:
                exact(tag, got, x.max(1))
    # argmax: integer values give ties; NaN is the largest value
    rows, cols = 1000, 77
    x = RNG.integers(0, 5, (rows, cols)).astype(np.float32)
    x[3, 10] = np.nan
    x[3, 20] = np.nan
    x[4, :] = -np.inf
    out = poison(rows, np.uint32)
    kern("reduce", "argmax_rows_f32")(grid1(rows, 8), (256,), (cp.asarray(x), u32(rows), u32(cols), out))
    exact("reduce.argmax_rows_f32", out.get(), np.argmax(x, 1).astype(np.uint32))


# ---------------------------------------------------------------------------------------------
# index
# ---------------------------------------------------------------------------------------------
@check("index")
def t_index():
    src_rows, cols, n_idx = 500, 37, 1200
    src = RNG.standard_normal((src_rows, cols)).astype(np.float32)
    idx = RNG.integers(0, src_rows, n_idx).astype(np.uint32)
    idx[17] = src_rows + 3
    idx[900] = 10**9
    bad = cp.zeros(1, np.uint32)
    out = poison(n_idx * cols)
    kern("index", "index_select_rows_f32")(grid1(n_idx * cols), (256,), (
        cp.asarray(src), cp.asarray(idx), out, u32(n_idx), u32(cols), u32(src_rows), bad))
    ref = src[np.minimum(idx, src_rows - 1)].copy()
    ref[idx >= src_rows] = np.nan
    exact("index.index_select_rows_f32", out.get().reshape(n_idx, cols), ref)
    exact("index.index_select_rows_f32.bad_flag", bad.get(), np.array([901], np.uint32))

    perm = RNG.permutation(src_rows)[:300].astype(np.uint32)  # unique: deterministic
    g = RNG.standard_normal((300, cols)).astype(np.float32)
    dst0 = RNG.standard_normal((src_rows, cols)).astype(np.float32)
    dst = cp.asarray(dst0)
    bad = cp.zeros(1, np.uint32)
    kern("index", "index_add_rows_f32")(grid1(300 * cols), (256,), (
        cp.asarray(g), cp.asarray(perm), dst, u32(300), u32(cols), u32(src_rows), bad))
    ref = dst0.copy()
    ref[perm] += g
    exact("index.index_add_rows_f32.unique", dst.get(), ref)
    dup = RNG.integers(0, 20, 4000).astype(np.uint32)
    g = RNG.standard_normal((4000, cols)).astype(np.float32)
    dst = cp.zeros((20, cols), np.float32)
    kern("index", "index_add_rows_f32")(grid1(4000 * cols), (256,), (
        cp.asarray(g), cp.asarray(dup), dst, u32(4000), u32(cols), u32(20), NULL))
    ref = np.zeros((20, cols))
    np.add.at(ref, dup, g.astype(np.float64))
    absref = np.zeros((20, cols))
    np.add.at(absref, dup, np.abs(g.astype(np.float64)))
    close("index.index_add_rows_f32.repeats", dst.get(), ref, 4000 * U * absref)

    rows, cols = 3001, 7
    x = RNG.standard_normal((rows, cols)).astype(np.float32)
    lab = RNG.integers(0, cols, rows).astype(np.uint32)
    lab[100] = cols
    bad = cp.zeros(1, np.uint32)
    out = poison(rows)
    kern("index", "gather_cols_f32")(grid1(rows), (256,), (cp.asarray(x), cp.asarray(lab), out, u32(rows), u32(cols), bad))
    ref = x[np.arange(rows), np.minimum(lab, cols - 1)].copy()
    ref[100] = np.nan
    exact("index.gather_cols_f32", out.get(), ref)
    exact("index.gather_cols_f32.bad_flag", bad.get(), np.array([101], np.uint32))
    g = RNG.standard_normal(rows).astype(np.float32)
    out = poison(rows * cols)
    bad = cp.zeros(1, np.uint32)
    kern("index", "scatter_cols_f32")(grid1(rows * cols), (256,), (cp.asarray(g), cp.asarray(lab), out, u32(rows), u32(cols), bad))
    ref = np.zeros((rows, cols), np.float32)
    ok = lab < cols
    ref[np.arange(rows)[ok], lab[ok]] = g[ok]
    exact("index.scatter_cols_f32", out.get().reshape(rows, cols), ref)
    exact("index.scatter_cols_f32.bad_flag", bad.get(), np.array([101], np.uint32))

    # copy2d: narrow columns 3..3+5 of a (40 x 13) into columns 2..7 of a (40 x 9)
    s = RNG.standard_normal((40, 13)).astype(np.float32)
    d0 = RNG.standard_normal((40, 9)).astype(np.float32)
    d = cp.asarray(d0)
    kern("index", "copy2d_f32")(grid1(40 * 5), (256,), (cp.asarray(s), d, u32(40), u32(5), u32(13), u32(9), usize(3), usize(2)))
    ref = d0.copy()
    ref[:, 2:7] = s[:, 3:8]
    exact("index.copy2d_f32", d.get(), ref)

    for (r, c) in [(1, 1), (33, 65), (1000, 3), (2049, 4097)]:
        x = RNG.standard_normal((r, c)).astype(np.float32)
        out = poison(r * c)
        kern("index", "transpose2d_f32")((min((c + 31) // 32, 65535), min((r + 31) // 32, 65535)), (32, 8),
                                         (cp.asarray(x), out, u32(r), u32(c)))
        exact(f"index.transpose2d_f32({r}x{c})", out.get().reshape(c, r), x.T)


# ---------------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------------
def softmax_ref(x):
    x = x.astype(np.float64)
    m = x.max(1, keepdims=True)
    e = np.exp(x - m)
    s = e.sum(1, keepdims=True)
    return e / s, (x - m) - np.log(s)


def softmax_grid(v, rows, cols, batch=4):
    """gridDim.x as kernels/README.md documents it (rows per block for each variant); the
    small_c kernels take `batch` row sets per warp per trip (softmax 4, xent 1)."""
    if v.startswith("small_c"):
        per_block = 8 * batch * (32 // (1 << max(0, math.ceil(math.log2(cols)))))
    elif v.startswith("warp_row"):
        per_block = 8
    else:
        per_block = 1
    return max(1, min((rows + per_block - 1) // per_block, 65535))


@check("softmax")
def t_softmax():
    for cols in [1, 2, 3, 7, 10, 31, 32, 33, 100, 513, 1000, 1024, 1025, 5000]:
        rows = max(3, min(2000, 400_000 // cols))
        x = (RNG.standard_normal((rows, cols)) * 3).astype(np.float32)
        x[0] *= 3000  # logits of about +-1e4
        if cols > 2:
            x[1, 1] = -np.inf
        p, lp = softmax_ref(x)
        variants = (["small_c"] if cols <= 32 else (["warp_row"] if cols <= 1024 else [])) + ["block_row"]
        for v in variants:
            for name, ref in [("softmax", p), ("log_softmax", lp)]:
                out = poison(rows * cols)
                grid = (softmax_grid(v, rows, cols),)
                kern("softmax", f"{name}_{v}_f32")(grid, (256,), (cp.asarray(x), out, u32(rows), u32(cols)))
                # exp(t - m) carries the rounding of t - m (|t - m| * u) plus a few ulps.
                xm = np.abs(x.astype(np.float64) - x.max(1, keepdims=True))
                xm[~np.isfinite(xm)] = 0  # -inf inputs: exact 0 / -inf outputs, checked as such
                # S is a sum of cols positive terms: relative error up to cols * u.
                bound = (np.abs(ref) * (8 + 2 * xm + 2 * cols) * U + 1e-30) if name == "softmax" else \
                    (U * (8 * (np.abs(ref) + xm + 1.0) + 2 * cols))
                close(f"softmax.{name}_{v}(rows={rows},cols={cols})", out.get().reshape(rows, cols), ref, bound)


# ---------------------------------------------------------------------------------------------
# fused shifted cross-entropy
# ---------------------------------------------------------------------------------------------
def xent_ref(z, s, y, w, gs):
    t = (z + s).astype(np.float64) if s is not None else z.astype(np.float64)
    rows, cols = z.shape
    m = t.max(1)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(t - m[:, None])
        S = e.sum(1)
        ok = y < cols
        yy = np.where(ok, y, 0)
        ty = t[np.arange(rows), yy]
        wi = w.astype(np.float64) if w is not None else np.ones(rows)
        loss = wi * ((m - ty) + np.log(S))
        loss[~ok] = np.nan
        p = e / S[:, None]
        onehot = np.zeros_like(p)
        onehot[np.arange(rows)[ok], y[ok]] = 1
        dz = (gs * wi)[:, None] * (p - onehot)
        dz[~ok] = np.nan
    return loss, dz, t, m


def xent_launch(variant, z, s, y, w, gs, write_grad, bad, dz=None):
    rows, cols = z.shape
    zd = z if isinstance(z, cp.ndarray) else cp.asarray(z)
    sd = cp.asarray(s) if s is not None else NULL
    wd = cp.asarray(w) if w is not None else NULL
    loss = poison(rows)
    if dz is None:
        dz = poison(rows * cols) if write_grad else NULL
    args = (zd, sd, cp.asarray(y), wd, loss, dz, u32(rows), u32(cols), f32(gs), u32(write_grad), bad)
    kern("xent", f"xent_{variant}_f32")((softmax_grid(variant, rows, cols, batch=1),), (256,), args)
    return loss, dz


def pick_variant(cols):
    return "small_c" if cols <= 32 else ("warp_row" if cols <= 1024 else "block_row")


@check("xent")
def t_xent():
    for cols in [1, 2, 3, 5, 10, 16, 32, 33, 64, 100, 1000, 1024, 1025, 5000]:
        rows = max(5, min(3000, 600_000 // cols))
        variants = [pick_variant(cols)] + (["block_row"] if cols in (2, 100) else [])
        for variant in variants:
            for with_s, with_w in [(False, False), (True, True), (True, False)]:
                z = (RNG.standard_normal((rows, cols)) * 3).astype(np.float32)
                z[0] *= 3000  # +-1e4
                s = (RNG.standard_normal((rows, cols))).astype(np.float32) if with_s else None
                if with_s and cols > 1:
                    s[2, (RNG.integers(0, cols))] = -np.inf  # log 0 shift
                y = RNG.integers(0, cols, rows).astype(np.uint32)
                y[3] = cols + 1  # bad label
                w = (RNG.random(rows) * 2).astype(np.float32) if with_w else None
                gs = 1.0 / rows
                loss_ref, dz_ref, t, m = xent_ref(z, s, y, w, np.float32(gs))
                for _ in [0]:
                    bad = cp.zeros(1, np.uint32)
                    loss, dz = xent_launch(variant, z, s, y, w, gs, 1, bad)
                    tag = f"xent.{variant}(rows={rows},cols={cols},s={int(with_s)},w={int(with_w)})"
                    wabs = np.abs(w.astype(np.float64)) if w is not None else np.ones(rows)
                    tm = np.abs(t - m[:, None])
                    tm[~np.isfinite(tm)] = 0
                    lb = wabs * (8 * U * (np.abs(loss_ref / np.maximum(wabs, 1e-30)) + tm.max(1) + 1) + cols * U * 4)
                    close(tag + ".loss", loss.get(), loss_ref, lb)
                    p = np.abs(dz_ref) / np.maximum(gs * wabs[:, None], 1e-30)
                    db = (gs * wabs)[:, None] * ((8 + 2 * tm + 2 * cols) * U * (p + 1)) + 1e-30
                    close(tag + ".dz", dz.get().reshape(rows, cols), dz_ref, db)
                    exact(tag + ".bad_flag", bad.get(), np.array([4], np.uint32))
            # loss only, and in place dz == z: same loss bits, dz bits equal the out-of-place dz
            z = (RNG.standard_normal((rows, cols)) * 3).astype(np.float32)
            y = RNG.integers(0, cols, rows).astype(np.uint32)
            bad = cp.zeros(1, np.uint32)
            l1, d1 = xent_launch(variant, z, None, y, None, 0.5, 1, bad)
            l2, _ = xent_launch(variant, z, None, y, None, 0.5, 0, NULL)
            zd = cp.asarray(z)
            l3, d3 = xent_launch(variant, zd, None, y, None, 0.5, 1, NULL, dz=zd)
            exact(f"xent.{variant}(cols={cols}).loss_only_same_bits", l2.get(), l1.get())
            exact(f"xent.{variant}(cols={cols}).inplace_dz", zd.get().reshape(-1), d1.get())
            exact(f"xent.{variant}(cols={cols}).inplace_loss", l3.get(), l1.get())
            l4, d4 = xent_launch(variant, z, None, y, None, 0.5, 1, bad)
            exact(f"xent.{variant}(cols={cols}).rerun_bits", np.concatenate([l4.get(), d4.get()]),
                  np.concatenate([l1.get(), d1.get()]))
            exact(f"xent.{variant}(cols={cols}).no_bad_flag", bad.get(), np.array([0], np.uint32))

    for n in [1, 1000, 65536, 1_000_003]:
        x = RNG.standard_normal(n).astype(np.float32)
        xd = cp.asarray(x)
        out = poison(1)
        if n <= 65536:
            kern("xent", "sum_f32")((1,), (1024,), (xd, u32(n), out, f32(0.5)))
        else:
            part = poison(512)
            kern("xent", "sum_partials_f32")((512,), (256,), (xd, usize(n), part))
            kern("xent", "sum_f32")((1,), (1024,), (part, u32(512), out, f32(0.5)))
        close(f"xent.sum_f32(n={n})", out.get(), 0.5 * x.astype(np.float64).sum(),
              0.5 * n * U * np.abs(x.astype(np.float64)).sum() + 1e-30)


# ---------------------------------------------------------------------------------------------
# optimizers: the same f32 operation sequence in NumPy must give the same bits
# ---------------------------------------------------------------------------------------------
def F(x):
    return np.float32(x)


@check("optim")
def t_optim():
    n = 50_001
    for (mom, damp, wd, nest) in [(0.0, 0.0, 0.0, 0), (0.9, 0.0, 1e-4, 0), (0.9, 0.1, 5e-4, 0), (0.9, 0.0, 1e-2, 1)]:
        p = RNG.standard_normal(n).astype(np.float32)
        pd = cp.asarray(p)
        buf = cp.asarray(RNG.standard_normal(n).astype(np.float32))  # garbage: ignored on step 1
        rb = None
        lr = 0.05
        for step in range(3):
            g = RNG.standard_normal(n).astype(np.float32)
            kern("optim", "sgd_step_f32")(grid1(n), (256,), (
                pd, cp.asarray(g), buf if mom != 0 else NULL, usize(n), f32(lr), f32(mom), f32(damp), f32(wd),
                u32(nest), u32(step == 0)))
            d = g.copy()
            if wd != 0:
                d = d + F(wd) * p
            if mom != 0:
                rb = d.copy() if step == 0 else F(mom) * rb + (F(1) - F(damp)) * d
                d = d + F(mom) * rb if nest else rb
            p = p - F(lr) * d
        exact(f"optim.sgd(m={mom},damp={damp},wd={wd},nesterov={nest})", pd.get(), p)

    for decoupled in [0, 1]:
        for wd in [0.0, 1e-2]:
            p = RNG.standard_normal(n).astype(np.float32)
            pd, md, vd = cp.asarray(p), cp.zeros(n, np.float32), cp.zeros(n, np.float32)
            m = np.zeros(n, np.float32)
            v = np.zeros(n, np.float32)
            lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
            for step in range(1, 6):
                g = RNG.standard_normal(n).astype(np.float32)
                kern("optim", "adam_step_f32")(grid1(n), (256,), (
                    pd, cp.asarray(g), md, vd, usize(n), f32(lr), f32(b1), f32(b2), f32(eps), f32(wd),
                    u32(step), u32(decoupled)))
                bc1 = 1.0 - float(F(b1)) ** step
                bc2 = 1.0 - float(F(b2)) ** step
                step_size = F(float(F(lr)) / bc1)
                bc2_sqrt = F(math.sqrt(bc2))
                if wd != 0:
                    if decoupled:
                        p = p * F(1.0 - float(F(lr)) * float(F(wd)))
                    else:
                        g = g + F(wd) * p
                m = F(b1) * m + (F(1) - F(b1)) * g
                v = F(b2) * v + ((F(1) - F(b2)) * g) * g
                denom = np.sqrt(v) / bc2_sqrt + F(eps)
                p = p - step_size * (m / denom)
            exact(f"optim.adam(decoupled={decoupled},wd={wd}).p", pd.get(), p)
            exact(f"optim.adam(decoupled={decoupled},wd={wd}).m", md.get(), m)
            exact(f"optim.adam(decoupled={decoupled},wd={wd}).v", vd.get(), v)
    # parity with PyTorch's own optimizers, to rounding (lerp vs b1*m + (1-b1)*g)
    try:
        import torch
    except ImportError:
        record("optim.torch_parity", True, "skipped: no torch")
        return
    for cls, kw, dec in [(torch.optim.Adam, dict(weight_decay=1e-2), 0), (torch.optim.AdamW, dict(weight_decay=1e-2), 1),
                         (torch.optim.SGD, dict(momentum=0.9, weight_decay=1e-4, nesterov=True), None)]:
        p0 = RNG.standard_normal(n).astype(np.float32)
        tp = torch.nn.Parameter(torch.tensor(p0))
        lr = 1e-3 if dec is not None else 0.05
        opt = cls([tp], lr=lr, **kw)
        pd = cp.asarray(p0)
        md, vd = cp.zeros(n, np.float32), cp.zeros(n, np.float32)
        for step in range(1, 6):
            g = RNG.standard_normal(n).astype(np.float32)
            tp.grad = torch.tensor(g)
            opt.step()
            if dec is None:
                kern("optim", "sgd_step_f32")(grid1(n), (256,), (
                    pd, cp.asarray(g), md, usize(n), f32(lr), f32(0.9), f32(0.0), f32(1e-4), u32(1), u32(step == 1)))
            else:
                kern("optim", "adam_step_f32")(grid1(n), (256,), (
                    pd, cp.asarray(g), md, vd, usize(n), f32(lr), f32(0.9), f32(0.999), f32(1e-8), f32(1e-2),
                    u32(step), u32(dec)))
        ref = tp.detach().numpy().astype(np.float64)
        # Each step moves p by about lr; the two formulas differ by a few ulps of that move.
        close(f"optim.torch_parity.{cls.__name__}", pd.get(), ref, 5 * 16 * U * (np.abs(ref) + lr * 10))


# ---------------------------------------------------------------------------------------------
# XRM flip
# ---------------------------------------------------------------------------------------------
@check("xrm")
def t_xrm():
    for k in [2, 3, 10, 100]:
        rows = 50_000
        z = (RNG.standard_normal((rows, k)) * 2).astype(np.float32)
        z[:100] = np.round(z[:100])  # ties
        z[100, 0] = np.nan
        u = RNG.random(rows).astype(np.float32)
        y0 = RNG.integers(0, k, rows).astype(np.uint32)
        yd = cp.asarray(y0)
        kern("xrm", "xrm_flip_f32")(grid1(rows), (256,), (cp.asarray(z), cp.asarray(u), yd, u32(rows), u32(k)))
        # reference: the same f32 steps (sequential sum) on the host
        with np.errstate(invalid="ignore"):
            yhat = np.argmax(z, 1)
            mx = z[np.arange(rows), yhat]
            S = np.zeros(rows, np.float32)
            for j in range(k):
                S = S + np.exp(z[:, j] - mx).astype(np.float32)
            p = F(1) / S
            q = (p - F(1) / F(k)) * (F(k) / F(k - 1))
            ref = np.where(u < q, yhat, y0).astype(np.uint32)
        got = yd.get()
        n_diff = int(np.sum(got != ref))
        # expf may differ from NumPy's exp in the last bit: allow a difference only where u is
        # within 1e-5 of q.
        near = np.abs(u.astype(np.float64) - q) < 1e-5
        ok = bool(np.all((got == ref) | near))
        record(f"xrm.flip(k={k})", ok, f"{n_diff} of {rows} differ from host steps, flips={int(np.sum(got != y0))}")


# ---------------------------------------------------------------------------------------------
# GEMM
# ---------------------------------------------------------------------------------------------
def gemm_launch(name, A, B, C, M, N, K, lda, ldb, ldc, alpha, beta, ta, tb):
    if M == 0 or N == 0:
        return  # an empty grid is a launch error: the caller skips empty products
    if name == "sgemm_f32":
        grid, block = ((N + 127) // 128, (M + 127) // 128), (256,)
        args = (A, B, C, u32(M), u32(N), u32(K), u32(lda), u32(ldb), u32(ldc), f32(alpha), f32(beta), u32(ta), u32(tb))
    elif name == "sgemm_64_f32":
        grid, block = ((N + 63) // 64, (M + 63) // 64), (256,)
        args = (A, B, C, u32(M), u32(N), u32(K), u32(lda), u32(ldb), u32(ldc), f32(alpha), f32(beta), u32(ta), u32(tb))
    elif name == "sgemm_thin_f32":
        grid, block = (min((M + 7) // 8, 65535),), (256,)
        args = (A, B, C, u32(M), u32(N), u32(K), u32(lda), u32(ldb), u32(ldc), f32(alpha), f32(beta), u32(tb))
    elif name == "thin_ta_split":
        Z = max(1, min(K // 1024, 128))
        work = cp.empty(Z * M * N, cp.float32)
        kern("gemm", "sgemm_thin_ta_partial_f32")((min((M + 31) // 32, 65535), Z), (32, 8), (
            A, B, work, u32(M), u32(N), u32(K), u32(lda), u32(ldb), u32(tb)))
        kern("gemm", "sgemm_thin_finish_f32")(grid1(M * N), (256,), (
            work, C, u32(M), u32(N), u32(Z), u32(ldc), f32(alpha), f32(beta)))
        return
    else:
        grid, block = (min((M + 31) // 32, 65535),), (32, 8)
        args = (A, B, C, u32(M), u32(N), u32(K), u32(lda), u32(ldb), u32(ldc), f32(alpha), f32(beta), u32(tb))
    kern("gemm", name)(grid, block, args)


def gemm_case(name, M, N, K, ta, tb, alpha, beta, pad=0):
    opA = RNG.standard_normal((M, K)).astype(np.float32)
    opB = RNG.standard_normal((K, N)).astype(np.float32)
    As = opA.T if ta else opA
    Bs = opB.T if tb else opB
    lda, ldb, ldc = As.shape[1] + pad, Bs.shape[1] + pad, N + pad
    Ap = np.zeros((As.shape[0], lda), np.float32)
    Ap[:, :As.shape[1]] = As
    Bp = np.zeros((Bs.shape[0], ldb), np.float32)
    Bp[:, :Bs.shape[1]] = Bs
    C0 = RNG.standard_normal((M, ldc)).astype(np.float32)
    if beta == 0:
        C0[:, :N] = np.nan  # must not be read
    Cd = cp.asarray(C0)
    gemm_launch(name, cp.asarray(Ap), cp.asarray(Bp), Cd, M, N, K, lda, ldb, ldc, alpha, beta, ta, tb)
    got = Cd.get()
    a64, b64 = opA.astype(np.float64), opB.astype(np.float64)
    c0 = np.nan_to_num(C0[:, :N].astype(np.float64)) if beta != 0 else 0.0
    ref = alpha * (a64 @ b64) + beta * c0
    bound = (K + 2) * U * (abs(alpha) * (np.abs(a64) @ np.abs(b64)) + abs(beta) * np.abs(c0)) * 2 + 1e-30
    close(f"gemm.{name}(M={M},N={N},K={K},ta={ta},tb={tb},a={alpha},b={beta},pad={pad})", got[:, :N], ref, bound)
    if pad:
        exact(f"gemm.{name}.pad_untouched", got[:, N:], C0[:, N:])
    return got[:, :N]


@check("gemm")
def t_gemm():
    shapes = [(1, 1, 1), (7, 5, 3), (128, 128, 8), (129, 131, 17), (300, 200, 1000), (64, 1000, 5), (1000, 2, 1800), (0, 5, 5), (5, 5, 0)]
    for (M, N, K) in shapes:
        for ta in (0, 1):
            for tb in (0, 1):
                gemm_case("sgemm_f32", M, N, K, ta, tb, 1.0, 0.0)
                gemm_case("sgemm_64_f32", M, N, K, ta, tb, -0.5, 1.5, pad=3)
    # the two tile sizes must give the same bits
    M, N, K = 257, 190, 333
    A = cp.asarray(RNG.standard_normal((M, K)).astype(np.float32))
    B = cp.asarray(RNG.standard_normal((K, N)).astype(np.float32))
    C1, C2 = poison(M * N), poison(M * N)
    gemm_launch("sgemm_f32", A, B, C1, M, N, K, K, N, N, 1.0, 0.0, 0, 0)
    gemm_launch("sgemm_64_f32", A, B, C2, M, N, K, K, N, N, 1.0, 0.0, 0, 0)
    exact("gemm.tile128_vs_tile64_bits", C2.get(), C1.get())
    for (M, N, K) in [(1000, 2, 1800), (37, 16, 33), (5, 1, 1), (300, 7, 4097), (70, 3, 100_000)]:
        for tb in (0, 1):
            gemm_case("sgemm_thin_f32", M, N, K, 0, tb, 1.0, 0.0)
            gemm_case("sgemm_thin_f32", M, N, K, 0, tb, 2.0, -1.0, pad=2)
            gemm_case("sgemm_thin_ta_f32", M, N, K, 1, tb, 1.0, 0.0)
            gemm_case("sgemm_thin_ta_f32", M, N, K, 1, tb, 0.5, 0.25, pad=1)
            gemm_case("thin_ta_split", M, N, K, 1, tb, 1.0, 0.0)
            gemm_case("thin_ta_split", M, N, K, 1, tb, 0.5, 0.25, pad=1)


# ---------------------------------------------------------------------------------------------
# timings
# ---------------------------------------------------------------------------------------------
bench = []


def time_it(fn, reps=30):
    from cupyx.profiler import benchmark
    r = benchmark(fn, n_repeat=reps, n_warmup=5)
    return float(np.median(r.gpu_times[0]))


def note(name, seconds, gbytes=None, gflop=None, extra=""):
    row = {"bench": name, "ms": seconds * 1e3}
    s = f"{name:58s} {seconds * 1e3:9.3f} ms"
    if gbytes is not None:
        row["GB/s"] = gbytes / seconds
        s += f" {gbytes / seconds:8.1f} GB/s"
    if gflop is not None:
        row["GFLOP/s"] = gflop / seconds
        s += f" {gflop / seconds:9.1f} GFLOP/s"
    bench.append(row)
    print(s + " " + extra, flush=True)


def run_bench():
    print("\n== timings (median GPU time; GB/s counts bytes read + written once, decimal) ==", flush=True)
    n = 256 * 1024 * 1024
    a = cp.random.standard_normal(n, dtype=cp.float32)
    b = cp.empty_like(a)
    note("device copy 1 GiB (baseline)", time_it(lambda: cp.copyto(b, a), 10), 2 * n * 4 / 1e9)
    note("exp_f32 1 GiB", time_it(lambda: kern("elementwise", "exp_f32")((132 * 16,), (256,), (a, b, usize(n))), 10), 2 * n * 4 / 1e9)

    for (rows, cols) in [(200_000, 3), (4_000_000, 2), (2_000_000, 10), (262_144, 100), (65_536, 1000), (8192, 32768)]:
        z = cp.random.standard_normal((rows, cols), dtype=cp.float32)
        s = cp.random.standard_normal((rows, cols), dtype=cp.float32)
        y = cp.random.randint(0, cols, rows).astype(cp.uint32)
        dz = cp.empty_like(z)
        loss = cp.empty(rows, cp.float32)
        variant = pick_variant(cols)
        byts = (3 * rows * cols * 4 + rows * 8) / 1e9
        names = [variant]
        for name in names:
            k = kern("xent", f"xent_{name}_f32")
            args = (z, s, y, NULL, loss, dz, u32(rows), u32(cols), f32(1.0 / rows), u32(1), NULL)
            grid = (softmax_grid(name, rows, cols, batch=1),)
            note(f"xent_{name} fused fwd+bwd (N={rows},C={cols},shift)", time_it(lambda: k(grid, (256,), args)), byts)
        if variant == "small_c":
            k = kern("xent", "xent_block_row_f32")
            note(f"  xent_block_row on the same (N={rows},C={cols})", time_it(lambda: k((min(rows, 65535),), (256,), args)), byts)

        def unfused():
            t = z + s
            m = t.max(1, keepdims=True)
            e = cp.exp(t - m)
            S = e.sum(1, keepdims=True)
            lse = m + cp.log(S)
            l = lse[:, 0] - t[cp.arange(rows), y]
            g = e / S
            g[cp.arange(rows), y] -= 1
            g *= 1.0 / rows
            return l, g
        note(f"  unfused CuPy composite (N={rows},C={cols})", time_it(unfused, 10), byts, extra="(same bytes credited)")

    for (rows, cols) in [(4_000_000, 10), (65_536, 1000), (8192, 32768)]:
        x = cp.random.standard_normal((rows, cols), dtype=cp.float32)
        yv = cp.empty_like(x)
        v = "small_c" if cols <= 32 else ("warp_row" if cols <= 1024 else "block_row")
        for vv in sorted({v, "block_row"}):
            g = (softmax_grid(vv, rows, cols),)
            note(f"softmax_{vv} (N={rows},C={cols})", time_it(lambda: kern("softmax", f"softmax_{vv}_f32")(g, (256,), (x, yv, u32(rows), u32(cols)))), 2 * x.nbytes / 1e9)

    x = cp.random.standard_normal((8192, 8192), dtype=cp.float32)
    yv = cp.empty_like(x)
    note("transpose2d 8192x8192", time_it(lambda: kern("index", "transpose2d_f32")((256, 256), (32, 8), (x, yv, u32(8192), u32(8192)))), 2 * x.nbytes / 1e9)
    out = cp.empty(8192, cp.float32)
    note("sum_axis_warp 8192x8192 (rows)", time_it(lambda: kern("reduce", "sum_axis_warp_f32")((1024,), (256,), (x, out, u32(8192), u32(8192)))), x.nbytes / 1e9)
    note("sum_axis_block 8192x8192 (rows)", time_it(lambda: kern("reduce", "sum_axis_block_f32")((8192,), (256,), (x, out, u32(8192), u32(8192), u32(1)))), x.nbytes / 1e9)
    note("sum_axis_cols 8192x8192 (over rows)", time_it(lambda: kern("reduce", "sum_axis_cols_f32")((256, 1), (32, 8), (x, out, u32(1), u32(8192), u32(8192)))), x.nbytes / 1e9)
    x2 = cp.random.standard_normal((4_000_000, 2), dtype=cp.float32)
    note("sum_axis_block (1, 4e6, 2) bias-grad shape", time_it(lambda: kern("reduce", "sum_axis_block_f32")((2,), (256,), (x2, out, u32(1), u32(4_000_000), u32(2)))), x2.nbytes / 1e9)
    note("sum_axis_cols (1, 4e6, 2) bias-grad shape", time_it(lambda: kern("reduce", "sum_axis_cols_f32")((1, 1), (32, 8), (x2, out, u32(1), u32(4_000_000), u32(2)))), x2.nbytes / 1e9)
    part = cp.empty(256 * 2, cp.float32)

    def two_stage():
        kern("reduce", "sum_axis_cols_f32")((1, 1, 256), (32, 8), (x2, part, u32(1), u32(4_000_000), u32(2)))
        kern("reduce", "sum_axis_cols_f32")((1, 1, 1), (32, 8), (part, out, u32(1), u32(256), u32(2)))
    note("sum_axis_cols two-stage Z=256 (1, 4e6, 2)", time_it(two_stage), x2.nbytes / 1e9)

    n = 50_000_000
    p, g, m, v = (cp.random.standard_normal(n, dtype=cp.float32) for _ in range(4))
    v = cp.abs(v)
    note("adam_step 5e7 params", time_it(lambda: kern("optim", "adam_step_f32")((132 * 16,), (256,), (p, g, m, v, usize(n), f32(1e-3), f32(0.9), f32(0.999), f32(1e-8), f32(1e-2), u32(10), u32(1)))), 28 * n / 1e9)

    for (M, N, K) in [(4096, 4096, 4096), (1000, 512, 1800), (256, 256, 1024)]:
        A = cp.random.standard_normal((M, K), dtype=cp.float32)
        B = cp.random.standard_normal((K, N), dtype=cp.float32)
        C = cp.empty((M, N), cp.float32)
        fl = 2 * M * N * K / 1e9
        for ta, tb in [(0, 0), (1, 0), (0, 1)] if M == 4096 else [(0, 0)]:
            Aa = A.T.copy() if ta else A
            Bb = B.T.copy() if tb else B
            lda, ldb = Aa.shape[1], Bb.shape[1]
            for name in ["sgemm_f32", "sgemm_64_f32"]:
                note(f"{name} M={M} N={N} K={K} ta={ta} tb={tb}",
                     time_it(lambda: gemm_launch(name, Aa, Bb, C, M, N, K, lda, ldb, N, 1.0, 0.0, ta, tb), 10), gflop=fl)
        note(f"cuBLAS via cupy.matmul M={M} N={N} K={K}", time_it(lambda: cp.matmul(A, B, out=C), 10), gflop=fl)
    for (M, N, K) in [(100_000, 2, 1800), (1000, 2, 1800)]:
        A = cp.random.standard_normal((M, K), dtype=cp.float32)
        B = cp.random.standard_normal((K, N), dtype=cp.float32)
        C = cp.empty((M, N), cp.float32)
        note(f"sgemm_thin_f32 M={M} N={N} K={K}", time_it(lambda: gemm_launch("sgemm_thin_f32", A, B, C, M, N, K, K, N, N, 1.0, 0.0, 0, 0)), A.nbytes / 1e9)
        note("sgemm_f32 same shape", time_it(lambda: gemm_launch("sgemm_f32", A, B, C, M, N, K, K, N, N, 1.0, 0.0, 0, 0)), A.nbytes / 1e9)
        note("cuBLAS same shape", time_it(lambda: cp.matmul(A, B, out=C)), A.nbytes / 1e9)
        # weight gradient X^T dY: (K x M)^T-style, M=1800 outputs rows, N=2, K=rows of X
        X, dY = A, cp.random.standard_normal((M, N), dtype=cp.float32)
        G = cp.empty((K, N), cp.float32)
        note(f"sgemm_thin_ta_f32 X^T dY (X {M}x{K})", time_it(lambda: gemm_launch("sgemm_thin_ta_f32", X, dY, G, K, N, M, K, N, N, 1.0, 0.0, 1, 0)), X.nbytes / 1e9)
        note(f"thin_ta_split (partial+finish) X^T dY (X {M}x{K})", time_it(lambda: gemm_launch("thin_ta_split", X, dY, G, K, N, M, K, N, N, 1.0, 0.0, 1, 0)), X.nbytes / 1e9)
        note("sgemm_f32 ta=1 same shape", time_it(lambda: gemm_launch("sgemm_f32", X, dY, G, K, N, M, K, N, N, 1.0, 0.0, 1, 0)), X.nbytes / 1e9)
        note("cuBLAS X^T dY", time_it(lambda: cp.matmul(X.T, dY, out=G)), X.nbytes / 1e9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    print(f"device: {props['name'].decode()} sm_{props['major']}{props['minor']}, "
          f"driver {cp.cuda.runtime.driverGetVersion()}, cupy {cp.__version__}, numpy {np.__version__}, seed {SEED}", flush=True)
    for t in [t_elementwise, t_reduce, t_index, t_softmax, t_xent, t_optim, t_xrm, t_gemm]:
        t0 = time.time()
        t()
        cp.cuda.Device().synchronize()
        print(f"-- {t.__name__} done in {time.time() - t0:.1f}s", flush=True)
    if not args.no_bench:
        try:
            run_bench()
        except Exception:
            record("bench", False, "exception:\n" + traceback.format_exc())
    failed = [r for r in results if not r["ok"]]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu-check.json"), "w") as f:
        json.dump({"device": props["name"].decode(), "seed": SEED, "checks": results, "bench": bench}, f, indent=1)
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    for r in failed[:40]:
        print(f"FAILED {r['check']}: {r['detail'][:600]}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
