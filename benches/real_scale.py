#!/usr/bin/env python3
"""Real-scale benchmark: memaware against plain PyTorch on one CelebA- or MultiNLI-shaped
feature file (scripts/gen-real-scale.py writes one), the same protocol, side by side.

Protocol (the paper's CelebA protocol, shortened by --steps): a linear head, SGD with momentum
0.9, learning rate --lr, weight decay 1e-4, batches of 128 drawn as shuffled epochs, a checkpoint
every 50 steps (and after the last) that evaluates argmax accuracy per group on validation and
test.
  erm   one ERM run, end to end (process start, loading, training, checkpoints, outputs)
  mat   one XRM run (twins on random halves, class-balanced held-in loss, label flipping from
        the held-out predictions, --xrm-steps steps), then MAT (logits + log p(y | yho) shift
        at temperature 0.1) for --steps steps: two processes for memaware (`xrm`, `train`),
        one for PyTorch
  sweep `memaware sweep --method erm,mat --draws D --seeds S` (XRM's draws and reruns, every
        draw of ERM and MAT, the winners' reruns; runs in parallel across the threads); PyTorch
        then runs the same runs, one after the other, each with the hyperparameters (learning
        rate, weight decay, batch size, τ) memaware recorded for it
Each run is a fresh process timed with /usr/bin/time -v (wall time, CPU time, peak RSS);
memaware and PyTorch alternate, --repeats times, in the same period, each with --threads
threads (RAYON_NUM_THREADS, torch.set_num_threads). "steps/s" counts training steps over the
training loop's own wall time (checkpoints included); "eval share" is the share of that loop
spent in checkpoint evaluation (PyTorch: measured; memaware: from a --steps run without
checkpoints, see --eval-share).

  .venv/bin/python benches/real_scale.py /tmp/celeba.safetensors --steps 2001 --repeats 3
  .venv/bin/python benches/real_scale.py /tmp/celeba.safetensors --workloads mat --xrm-steps 2001

Output: a table on stdout and, with --out, a JSON file of every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(cmd: list[str], env: dict) -> dict:
    """Runs cmd under /usr/bin/time -v; wall, user, sys seconds, peak RSS bytes, stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        p = subprocess.run(["/usr/bin/time", "-v", "-o", tf.name] + cmd, env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        text = open(tf.name).read()
    field = lambda name: float(re.search(rf"{name}: ([\d.]+)", text).group(1))
    return {"wall_s": wall, "user_s": field("User time \\(seconds\\)"),
            "sys_s": field("System time \\(seconds\\)"),
            "peak_rss_bytes": int(field("Maximum resident set size \\(kbytes\\)") * 1024),
            "stdout": p.stdout}


# ----------------------------------------------------------------------------------------------
# memaware side


def memaware_common(a) -> list[str]:
    return ["--model", "linear", "--optimizer", "sgd", "--lr", str(a.lr), "--momentum", "0.9",
            "--weight-decay", "1e-4", "--batch-size", "128", "--seed", "0"]


def sweep_runs(out: Path, xrm_steps: int) -> list[dict]:
    """Every run a memaware sweep under `out` made: XRM's first, then the methods'."""
    runs = []
    for rec in sorted(out.glob("*/xrm/draw*/run.json")):
        r = json.load(open(rec))
        runs.append({"kind": "xrm", "seed": r["seed"], "steps": xrm_steps, "hparams": r["hparams"]})
    for rec in sorted(out.glob("*/*/draw*/run.json")):
        if rec.parts[-3] == "xrm":
            continue
        r = json.load(open(rec))
        runs.append({"kind": r["kind"], "seed": r["seed"], "steps": r["steps"], "hparams": r["hparams"]})
    return runs


def run_memaware(a, workload: str, env: dict, out: Path, checkpoint_freq: int = 50) -> dict:
    exe = str(a.memaware)
    shutil.rmtree(out, ignore_errors=True)
    runs = []
    if workload == "sweep":
        r = timed([exe, "sweep", "--data", a.file, "--method", "erm,mat", "--draws", str(a.draws),
                   "--seeds", str(a.seeds), "--steps", str(a.steps), "--xrm-steps", str(a.xrm_steps),
                   "--checkpoint-freq", str(checkpoint_freq), "--out", str(out)], env)
        runs = sweep_runs(out, a.xrm_steps)
        (out / "runs.json").write_text(json.dumps(runs))
        total = sum(x["steps"] for x in runs)
        return {"wall_s": r["wall_s"], "cpu_s": r["user_s"] + r["sys_s"], "peak_rss_bytes": r["peak_rss_bytes"],
                "steps_per_s": total / r["wall_s"], "runs": len(runs),
                "phases": [{k: v for k, v in r.items() if k != "stdout"}]}
    if workload == "mat":
        runs.append(timed([exe, "xrm", "--data", a.file] + memaware_common(a) +
                          ["--steps", str(a.xrm_steps), "--loss", "class-balanced",
                           "--out", str(out / "xrm")], env))
        xrm_dir = next((out / "xrm").iterdir())
        extra = ["--method", "mat", "--xrm", str(xrm_dir), "--tau", "0.1"]
    else:
        extra = ["--method", "erm"]
    runs.append(timed([exe, "train", "--data", a.file] + memaware_common(a) + extra +
                      ["--steps", str(a.steps), "--checkpoint-freq", str(checkpoint_freq),
                       "--out", str(out / "train")], env))
    summary = json.load(open(next((out / "train").iterdir()) / "summary.json"))
    return {"wall_s": sum(r["wall_s"] for r in runs), "cpu_s": sum(r["user_s"] + r["sys_s"] for r in runs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
            "steps_per_s": summary["steps_per_s"], "phases": [{k: v for k, v in r.items() if k != "stdout"} for r in runs]}


# ----------------------------------------------------------------------------------------------
# PyTorch side (run in a child process: `real_scale.py --torch WORKLOAD ...`)


def torch_child(a) -> None:
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    t_load = time.perf_counter()
    t = load_file(a.file)
    data = {s: (t[f"{s}.x"], t[f"{s}.y"].long(), t[f"{s}.a"].long()) for s in ("tr", "va", "te")}
    k = int(max(int(data[s][1].max()) for s in data) + 1)
    n_attr = int(max(int(data[s][2].max()) for s in data) + 1)
    load_s = time.perf_counter() - t_load
    d = data["tr"][0].shape[1]
    n = data["tr"][0].shape[0]

    def batches(gen, bs=128):
        while True:
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n - n % bs if n >= bs else n, bs):
                yield perm[i:i + bs]

    def evaluate(model):
        out = {}
        with torch.no_grad():
            for s in ("va", "te"):
                x, y, a_ = data[s]
                pred = model(x).argmax(1)
                g = y * n_attr + a_
                correct = torch.bincount(g, weights=(pred == y).double(), minlength=k * n_attr)
                count = torch.bincount(g, minlength=k * n_attr).clamp(min=1)
                out[s] = (correct / count).min().item()
        return out

    def train(shift=None, steps=a.steps, lr=a.lr, wd=1e-4, bs=128):
        model = torch.nn.Linear(d, k)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
        gen = torch.Generator().manual_seed(1)
        x, y, _ = data["tr"]
        eval_s, best = 0.0, None
        t0 = time.perf_counter()
        it = batches(gen, bs)
        for step in range(steps):
            idx = next(it)
            logits = model(x[idx])
            if shift is not None:
                logits = logits + shift[idx]
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0 or step + 1 == steps:
                te = time.perf_counter()
                m = evaluate(model)
                best = m if best is None or m["va"] > best["va"] else best
                eval_s += time.perf_counter() - te
        loop_s = time.perf_counter() - t0
        return {"loop_s": loop_s, "eval_s": eval_s, "steps_per_s": steps / loop_s, "best": best}

    def xrm(steps, lr=a.lr, wd=1e-4, bs=128, tau=0.1):
        # XRM twins: each row held in by one twin; class-balanced held-in loss on dynamic labels;
        # label flips from the held-out twin's probabilities.
        x, y, _ = data["tr"]
        gen = torch.Generator().manual_seed(2)
        assign = torch.rand(n, generator=gen) < 0.5
        twins = [torch.nn.Linear(d, k), torch.nn.Linear(d, k)]
        opt = torch.optim.SGD([p for m in twins for p in m.parameters()], lr=lr, momentum=0.9,
                              weight_decay=wd)
        y_dyn = y.clone()
        t0 = time.perf_counter()
        it = batches(gen, bs)
        for _ in range(steps):
            idx = next(it)
            xb, yb, held = x[idx], y_dyn[idx], assign[idx]
            la, lb = twins[0](xb), twins[1](xb)
            held_in = torch.where(held[:, None], lb, la)
            held_out = torch.where(held[:, None], la, lb).detach()
            counts = torch.bincount(yb, minlength=k).clamp(min=1).float()
            w = 1.0 / counts[yb]
            loss = (F.cross_entropy(held_in, yb, reduction="none") * w).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            p, yhat = F.softmax(held_out, 1).max(1)
            flip = torch.rand(len(idx), generator=gen) < (p - 1 / k) * k / (k - 1)
            y_dyn[idx[flip]] = yhat[flip]
        with torch.no_grad():
            ho = torch.where(assign[:, None], twins[0](x), twins[1](x))
        xrm_s = time.perf_counter() - t0
        # MAT's shift: log p_ho(y | x) through p(y | yho), temperature tau.
        p_yho = F.softmax(ho / tau, 1)
        joint = torch.zeros(k, k).index_add_(1, y, p_yho.T) / n
        cond = joint / joint.sum(1, keepdim=True).clamp(min=1e-30)
        return torch.log(p_yho @ cond + 1e-6), xrm_s

    result = {"load_s": load_s}
    if a.torch == "sweep":
        # memaware's runs, in its order: XRM first (a seed's shift comes from its last XRM run).
        runs = json.load(open(a.runs))
        shifts, loop_s, eval_s, steps = {}, 0.0, 0.0, 0
        for r in runs:
            h = r["hparams"]
            if r["kind"] == "xrm":
                shifts[r["seed"]], t = xrm(r["steps"], h["lr"], h["weight_decay"], h["batch_size"])
                loop_s += t
            else:
                shift = shifts[r["seed"]] if r["kind"] == "mat" else None
                t = train(shift, r["steps"], h["lr"], h["weight_decay"], h["batch_size"])
                loop_s, eval_s = loop_s + t["loop_s"], eval_s + t["eval_s"]
            steps += r["steps"]
        result.update({"loop_s": loop_s, "eval_s": eval_s, "steps_per_s": steps / loop_s,
                       "runs": len(runs)})
        print("RESULT " + json.dumps(result))
        return
    shift = None
    if a.torch == "mat":
        shift, xrm_s = xrm(a.xrm_steps)
        result["xrm_s"] = xrm_s
        result["xrm_steps_per_s"] = a.xrm_steps / xrm_s
    result.update(train(shift))
    print("RESULT " + json.dumps(result))


def run_torch(a, workload: str, env: dict, runs: Path | None = None) -> dict:
    extra = ["--runs", str(runs)] if runs else []
    r = timed([sys.executable, __file__, a.file, "--torch", workload] + extra + ["--steps", str(a.steps),
               "--xrm-steps", str(a.xrm_steps), "--threads", str(a.torch_threads or a.threads),
               "--lr", str(a.lr)], dict(env, OMP_NUM_THREADS=str(a.torch_threads or a.threads),
                                        MKL_NUM_THREADS=str(a.torch_threads or a.threads)))
    res = json.loads(next(l for l in r["stdout"].splitlines() if l.startswith("RESULT "))[7:])
    return {"wall_s": r["wall_s"], "cpu_s": r["user_s"] + r["sys_s"], "peak_rss_bytes": r["peak_rss_bytes"],
            "steps_per_s": res["steps_per_s"], "eval_share": res["eval_s"] / res["loop_s"],
            "load_s": res["load_s"], "detail": res}


# ----------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--steps", type=int, default=2001)
    ap.add_argument("--xrm-steps", type=int, default=2001)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--torch-threads", type=int, default=None,
                    help="PyTorch's threads (default --threads); on a loaded machine OpenMP's "
                         "spinning threads can make 2 threads far slower than 1")
    ap.add_argument("--workloads", default="erm,mat")
    ap.add_argument("--memaware", default=str(REPO / "target" / "release" / "memaware"))
    ap.add_argument("--eval-share", action="store_true",
                    help="also run memaware's ERM without checkpoints to measure its evaluation share")
    ap.add_argument("--out")
    ap.add_argument("--draws", type=int, default=10, help="sweep: hyperparameter draws")
    ap.add_argument("--seeds", type=int, default=5, help="sweep: seeds of the winners")
    ap.add_argument("--torch", choices=["erm", "mat", "sweep"], help=argparse.SUPPRESS)
    ap.add_argument("--runs", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch:
        torch_child(a)
        return

    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads))
    size = os.path.getsize(a.file)
    meta = {"cpu_model": cpu_model(), "cores": os.cpu_count(), "threads": a.threads,
            "torch_threads": a.torch_threads or a.threads, "file": a.file,
            "file_bytes": size, "steps": a.steps, "xrm_steps": a.xrm_steps, "repeats": a.repeats}
    print(f"{meta['cpu_model']}, {a.threads} threads (PyTorch {meta['torch_threads']}); {a.file} ({size / 1e9:.2f} GB); "
          f"{a.steps} steps (XRM {a.xrm_steps})", flush=True)
    results = {w: {"memaware": [], "pytorch": []} for w in a.workloads.split(",")}
    work = Path(tempfile.mkdtemp(prefix="memaware-real-scale-"))
    try:
        for rep in range(a.repeats):
            for w in results:
                m = run_memaware(a, w, env, work / w)
                if a.eval_share and w == "erm":
                    no_eval = run_memaware(a, w, env, work / "noeval", checkpoint_freq=10 ** 9)
                    m["eval_share"] = max(0.0, 1 - m["steps_per_s"] / no_eval["steps_per_s"])
                t = run_torch(a, w, env, work / w / "runs.json" if w == "sweep" else None)
                results[w]["memaware"].append(m)
                results[w]["pytorch"].append(t)
                print(f"  [{rep + 1}/{a.repeats}] {w}: memaware {m['wall_s']:.2f} s, "
                      f"{m['peak_rss_bytes'] / 2**20:.0f} MiB; pytorch {t['wall_s']:.2f} s, "
                      f"{t['peak_rss_bytes'] / 2**20:.0f} MiB ({t['wall_s'] / m['wall_s']:.2f}x)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rng = lambda xs, f="{:.2f}": f"{f.format(min(xs))}–{f.format(max(xs))}"
    print("\n| workload | impl | wall s | CPU s | steps/s | eval share | peak RSS (MiB) | PyTorch / memaware wall |")
    print("|---|---|---|---|---|---|---|---|")
    for w, r in results.items():
        ratios = [t["wall_s"] / m["wall_s"] for m, t in zip(r["memaware"], r["pytorch"])]
        for impl, runs in r.items():
            share = [x["eval_share"] for x in runs if "eval_share" in x]
            print(f"| {w} | {impl} | {rng([x['wall_s'] for x in runs])} | {rng([x['cpu_s'] for x in runs])} | "
                  f"{rng([x['steps_per_s'] for x in runs], '{:.0f}')} | "
                  f"{rng(share, '{:.0%}') if share else '–'} | "
                  f"{rng([x['peak_rss_bytes'] / 2**20 for x in runs], '{:.0f}')} | "
                  f"{rng(ratios) + 'x' if impl == 'memaware' else ''} |")
    if a.out:
        Path(a.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
