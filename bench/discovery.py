"""Landmark discovery (paper 1) experiments: print a table and write JSON.

    python bench/discovery.py phantoms [--size 128] [--n-train 256] [--n-test 32] [--k 26] [--epochs 40]
    python bench/discovery.py mice     [--size 128] [--k 24] [--epochs 60]
    python bench/discovery.py cells    [--size 96]  [--k 24] [--epochs 40]
    python bench/discovery.py ct3d     [--size 64]  [--k 20] [--epochs 40]

Common options: --device auto|cpu|cuda, --out bench/results, --quick (tiny smoke run). Real data is read from
../shared/data (or $SHAPE_NB_DATA).
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from shape_nb.core import get_device, seed_everything
from shape_nb.discovery import LandmarkDiscovery
from shape_nb.data import all_pairs


def nearest_distance(points, landmarks):
    "For each image: distance from every point (n, P, d) to its nearest landmark (n, K, d) -> (n, P)."
    return torch.cdist(points.double(), landmarks.double()).amin(-1)


def fit_timed(est, train):
    t0 = time.perf_counter()
    est.fit(train)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_phantoms(a, dev):
    from shape_nb.phantoms import tps_phantoms
    n = a.n_train + a.n_test
    imgs, cps = tps_phantoms(n, a.size, sigma=a.sigma, seed=a.seed)
    train, test, cps_test = imgs[:a.n_train], imgs[a.n_train:], cps[a.n_train:]
    est = LandmarkDiscovery(k=a.k, lam=a.lam, epochs=a.epochs, batch_size=a.batch_size, pairs_per_epoch=a.pairs_per_epoch,
                            lr=a.lr, noise_std=a.noise, device=str(dev), random_state=a.seed, progress=not a.no_progress)
    secs = fit_timed(est, train)
    steps_pairs = a.epochs * min(a.pairs_per_epoch, a.n_train * (a.n_train - 1))
    test_pairs = all_pairs(a.n_test)
    err = est.registration_error(test, test_pairs)
    imp = est.compute_importance(test, max_pairs=64)
    half = a.size / 2   # normalised -> pixels
    rows = []
    g = torch.Generator().manual_seed(0)
    for keep in sorted({6, 10, 15, a.k} & set(range(1, a.k + 1))):
        est.prune(n_keep=keep)
        lm = est.transform(test)
        dist = nearest_distance(cps_test, lm) * half
        rand = torch.rand(len(test), keep, 2, generator=g) * 1.6 - 0.8   # baseline: random landmarks
        rdist = nearest_distance(cps_test, rand) * half
        e = est.registration_error(test, test_pairs)["after"]
        rows.append(dict(n_keep=keep, cp_to_nearest_px=dist.mean().item(), cp_to_nearest_px_per_cp=dist.mean(0).tolist(),
                         random_baseline_px=rdist.mean().item(), rel_reg_error_after=e))
    res = dict(experiment="phantoms", size=a.size, n_train=a.n_train, n_test=a.n_test, k=a.k, fixed="4 corners",
               lam=a.lam, epochs=a.epochs, train_seconds=secs, pairs_per_second=steps_pairs / secs,
               rel_reg_error_before=err["before"], rel_reg_error_after=err["after"], importance=imp.tolist(), pruning=rows,
               history=[{k: v for k, v in r.items()} for r in est.history_.records])
    print(f"phantoms {a.size}x{a.size}: {a.n_train} train / {a.n_test} test, K={a.k}+4 corners, lambda={a.lam}, "
          f"{a.epochs} epochs in {secs:.1f} s ({res['pairs_per_second']:.0f} pairs/s) on {dev}")
    print(f"  held-out mean relative registration error ||I_T-I_R||^2/||I_T||^2: before {err['before']:.4%}, after {err['after']:.4%}")
    print(f"  {'kept':>5s} {'cp->nearest (px)':>17s} {'random baseline':>16s} {'rel. error after':>17s}")
    for r in rows:
        print(f"  {r['n_keep']:5d} {r['cp_to_nearest_px']:17.2f} {r['random_baseline_px']:16.2f} {r['rel_reg_error_after']:17.4%}")
    return res, est


EXPERIMENTS = dict(phantoms=run_phantoms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=256)
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--lam", type=float, default=1e-4)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pairs-per-epoch", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    a = ap.parse_args()
    defaults = dict(phantoms=(128, 26), mice=(128, 24), cells=(96, 24), ct3d=(64, 20))[a.experiment]
    a.size = a.size or defaults[0]; a.k = a.k or defaults[1]
    if a.quick:
        a.size, a.n_train, a.n_test, a.epochs, a.pairs_per_epoch, a.k = 32, 12, 4, 2, 16, min(a.k, 8)
    dev = get_device(a.device)
    seed_everything(a.seed)
    res, _ = EXPERIMENTS[a.experiment](a, dev)
    res["device"] = str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    f = out / f"discovery_{a.experiment}{'_quick' if a.quick else ''}.json"
    f.write_text(json.dumps(res, indent=1))
    print(f"wrote {f}")


if __name__ == "__main__":
    main()
