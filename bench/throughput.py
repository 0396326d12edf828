"""Landmark-discovery training throughput (benchmark 2): pairs/s of the training step, variants side by side.

    python bench/throughput.py --device cuda                     # the GPU benchmark: 2D 256x256 and 3D 64^3 phantoms
    python bench/throughput.py --device cuda --to-error          # + wall time of LandmarkDiscovery to the oracle error
    python bench/throughput.py --device cuda --profile           # + a torch.profiler summary of the fp32 step
    python bench/throughput.py --device cuda --cudnn-benchmark   # with autotuned convolutions
    python bench/throughput.py --quick --device cpu              # CPU smoke run (seconds): 64x64 and 20^3
    python bench/throughput.py --device cpu --threads 2          # the CPU table at the GPU sizes, smaller batches

The step is the one `LandmarkDiscovery.fit` runs: a batch of random image pairs (whitened phantoms with input noise)
through the Siamese `LandmarkRegressor`, `discovery_loss` (TPS warp of source to target through the predicted
landmarks + the 4 (2D) / 8 (3D) fixed corners, squared-L2 image match + lam * kappa_F), backward, gradient-norm
measurement, Adam step and `loss.item()`. Throughput is steady state: warm-up steps (which include any
torch.compile compilation, reported separately), then timed steps (at least --steps and --min-seconds), each
synchronised on CUDA. `loss step 1` is the loss of the first step (same weights and batch for every variant: a
check that a variant computes the same thing). Variants: fp32; bf16 autocast (CUDA only; the TPS stays in float32,
see shape_nb.tps); channels_last (channels_last_3d in 3D); torch.compile of the network; combinations. On CUDA, GPU
utilisation is sampled with `nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits` in a background
thread during the timed steps (mean / min %), and the peak allocated memory is reported.

--to-error trains `LandmarkDiscovery` on 2D phantoms (fresh fits with epoch budgets 1, 2, 4, ... up to
--max-epochs) until the held-out mean relative registration error ||I_T - I_R||^2 / ||I_T||^2 reaches the target:
--target-factor times the oracle error, i.e. the error of registering the same held-out pairs with the true
generating control points (+ corners; bench/benchlib.py, also reported by bench/discovery.py phantoms). The
time to error is the wall time of the first fit that reaches it. Common options (bench/benchlib.py): --device,
--threads, --quick, --out bench/results, --seed 0 (phantoms, weights, pairs). JSON:
bench/results/throughput_<device>[_quick].json and throughput_to_error_<device>[_quick].json.
"""
import argparse
import json

import numpy as np
import torch

from shape_nb.core import seed_everything
from shape_nb.data import Whitener, all_pairs
from shape_nb.discovery import LandmarkDiscovery, discovery_loss, fixed_points
from shape_nb.nets import LandmarkRegressor
from shape_nb.phantoms import tps_phantoms, tps_phantoms_3d

import benchlib as bl
from benchlib import GPUUtilisation, VARIANTS, oracle_registration_error


def make_case(d, size, n_images, seed=0):
    "Whitened phantom pool (n, 1, *S) as LandmarkDiscovery trains on it."
    x, _ = (tps_phantoms if d == 2 else tps_phantoms_3d)(n_images, size, seed=seed)
    return Whitener().fit(x).transform(x)


def run_variant(name, d, pool, k, channels, batch, device, a):
    "Steady-state pairs/s of one variant; returns a result row."
    seed_everything(a.seed)
    model = LandmarkRegressor(k, d, channels=channels).to(device)
    net = bl.prepare(model, name, d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pool = bl.to_input(pool.to(device), name, d)
    fx = fixed_points("corners", d, pool.dtype, device)
    n, n_pix = len(pool), float(np.prod(pool.shape[2:]))
    g = torch.Generator().manual_seed(a.seed)
    losses = []

    def step():
        pairs = torch.randint(0, n, (batch, 2), generator=g)
        s, t = pool[pairs[:, 0]], pool[pairs[:, 1]]
        inp = bl.to_input(torch.cat([s, t]), name, d)
        inp = inp + 0.1 * torch.randn_like(inp)
        with bl.autocast(name, device):
            ls, lt = net(inp).split(batch)
            loss, _ = discovery_loss(s, t, ls, lt, 1e-4, fx, "l2")
            loss = loss / n_pix
        opt.zero_grad(set_to_none=True)
        loss.backward()
        float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf")))   # as fit's 'auto' clipping measures it
        opt.step()
        losses.append(loss.item())

    if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
    with bl.clock(device) as warm:
        for _ in range(a.warmup): step()
    with GPUUtilisation(device) as util:
        ts = bl.timed(step, device, warmup=0, repeats=a.steps, min_seconds=a.min_seconds)
    ms = bl.median(ts) * 1e3
    row = dict(variant=name, ms_per_step=ms, pairs_per_s=batch / (ms / 1e3), steps_timed=len(ts),
               warmup_seconds=warm.seconds,
               gpu_util_mean=util.mean, gpu_util_min=util.min, gpu_util_samples=len(util.samples),
               peak_mem_mb=torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
               first_loss=losses[0], final_loss=losses[-1])
    if a.profile and name == "fp32": row["profile"] = profile(step, device)
    return row


def profile(step, device, steps=3):
    "Top operators of a few steps (torch.profiler), as text."
    from torch.profiler import ProfilerActivity, profile as prof
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with prof(activities=acts) as p:
        for _ in range(steps): step()
        bl.sync(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return p.key_averages().table(sort_by=key, row_limit=15)


def print_case(title, rows):
    print(f"\n{title}")
    base = next((r for r in rows if r["variant"] == "fp32" and r.get("pairs_per_s")), None)
    print(f"  {'variant':20s} {'pairs/s':>9s} {'ms/step':>9s} {'vs fp32':>8s} {'warm-up s':>10s} "
          f"{'GPU util mean/min %':>20s} {'peak MB':>8s} {'loss step 1':>12s}")
    for r in rows:
        if r.get("pairs_per_s") is None:
            print(f"  {r['variant']:20s} {'n/a':>9s}   {r['note']}"); continue
        util = f"{r['gpu_util_mean']:.0f} / {r['gpu_util_min']:.0f}" if r["gpu_util_mean"] is not None else "-"
        mem = f"{r['peak_mem_mb']:.0f}" if r["peak_mem_mb"] is not None else "-"
        rel = f"{r['pairs_per_s'] / base['pairs_per_s']:.2f}x" if base else "-"
        print(f"  {r['variant']:20s} {r['pairs_per_s']:9.1f} {r['ms_per_step']:9.1f} {rel:>8s} "
              f"{r['warmup_seconds']:10.1f} {util:>20s} {mem:>8s} {r['first_loss']:12.6f}")


def to_error(a, device):
    "Wall time of LandmarkDiscovery fits (doubling epoch budgets) until the held-out error reaches the target."
    n = a.err_train + a.err_test
    imgs, cps = tps_phantoms(n, a.err_size, seed=a.seed)
    train, test, cps_test = imgs[:a.err_train], imgs[a.err_train:], cps[a.err_train:]
    pairs = all_pairs(a.err_test)
    oracle = oracle_registration_error(test, cps_test, pairs)
    target = a.target_factor * oracle
    extra = {"train_options": json.loads(a.train_options)} if a.train_options else {}
    print(f"\nTime to error: LandmarkDiscovery on {a.err_size}x{a.err_size} phantoms, {a.err_train} train / "
          f"{a.err_test} held-out images ({len(pairs)} pairs), K={a.k}+4 corners, batch {a.err_batch} pairs, "
          f"{a.err_pairs_per_epoch} pairs/epoch, on {device}")
    print(f"  target: {a.target_factor:g} x oracle error {oracle:.4%} (true control points + corners) = {target:.4%}")
    print(f"  {'epochs':>6s} {'fit s':>8s} {'held-out error':>15s} {'before':>9s} {'reached':>8s}")
    rows, reached = [], None
    e = 1
    while e <= a.max_epochs:
        est = LandmarkDiscovery(n_landmarks=a.k, epochs=e, batch_size=a.err_batch,
                                pairs_per_epoch=a.err_pairs_per_epoch, device=str(device), random_state=a.seed,
                                progress=False, **extra)
        with bl.clock(device) as c: est.fit(train)
        secs = c.seconds
        err = est.registration_error(test, pairs)
        ok = err["after"] <= target
        rows.append(dict(epochs=e, fit_seconds=secs, error=err["after"], before=err["before"], reached=ok))
        print(f"  {e:6d} {secs:8.1f} {err['after']:15.4%} {err['before']:9.4%} {'yes' if ok else 'no':>8s}")
        if ok:
            reached = rows[-1]; break
        e *= 2
    if reached:
        print(f"  time to error: {reached['fit_seconds']:.1f} s ({reached['epochs']} epochs)")
    else:
        print(f"  target not reached within {a.max_epochs} epochs (best {min(r['error'] for r in rows):.4%})")
    return dict(size=a.err_size, n_train=a.err_train, n_test=a.err_test, k=a.k, batch=a.err_batch,
                pairs_per_epoch=a.err_pairs_per_epoch, oracle_error=oracle, target_factor=a.target_factor,
                target=target, budgets=rows, time_to_error_seconds=reached["fit_seconds"] if reached else None,
                epochs_to_error=reached["epochs"] if reached else None, train_options=extra.get("train_options"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                    help="default: all that the device runs (bf16 on CUDA only; on the CPU no compile under --quick)")
    ap.add_argument("--cases", nargs="+", default=["2d", "3d"], choices=["2d", "3d"])
    ap.add_argument("--size-2d", type=int, default=None, help="default 256 (--quick: 64)")
    ap.add_argument("--size-3d", type=int, default=None, help="default 64 (--quick: 20)")
    ap.add_argument("--batch-2d", type=int, default=None, help="pairs per step (default: 32 on CUDA, 4 on the CPU)")
    ap.add_argument("--batch-3d", type=int, default=None, help="pairs per step (default: 8 on CUDA, 2 on the CPU)")
    ap.add_argument("--k", type=int, default=26, help="landmarks per image (excluding the fixed corners)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5 on CUDA, 2 on the CPU)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps at least (default 30 on CUDA, 5 on the CPU)")
    ap.add_argument("--min-seconds", type=float, default=None,
                    help="timed seconds at least (default 5 on CUDA, 0 on the CPU)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler summary of 3 fp32 steps")
    ap.add_argument("--to-error", action="store_true",
                    help="also the wall time of LandmarkDiscovery to the oracle error")
    ap.add_argument("--only-to-error", action="store_true", help="--to-error without the step benchmark")
    ap.add_argument("--target-factor", type=float, default=1.0, help="target = factor x oracle error")
    ap.add_argument("--max-epochs", type=int, default=None, help="largest epoch budget (default 64; --quick 2)")
    ap.add_argument("--err-size", type=int, default=None, help="phantom size for --to-error (default 128; --quick 32)")
    ap.add_argument("--err-train", type=int, default=None, help="default 256 (--quick 16)")
    ap.add_argument("--err-test", type=int, default=None, help="default 32 (--quick 4)")
    ap.add_argument("--err-batch", type=int, default=16)
    ap.add_argument("--err-pairs-per-epoch", type=int, default=None, help="default 1024 (--quick 32)")
    ap.add_argument("--train-options", default=None,
                    help="JSON dict for LandmarkDiscovery(train_options=...) in --to-error")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True (autotuned convolutions; the estimators leave it off)")
    bl.common_args(ap, quick_help="seconds on a CPU: small images, few steps")
    a = ap.parse_args()
    dev = bl.setup(a)
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    gpu, q = dev.type == "cuda", a.quick
    a.size_2d = a.size_2d or (64 if q else 256)
    a.size_3d = a.size_3d or (20 if q else 64)
    a.batch_2d = a.batch_2d or (32 if gpu else 4)
    a.batch_3d = a.batch_3d or (8 if gpu else 2)
    a.warmup = a.warmup if a.warmup is not None else (5 if gpu else 2)
    a.steps = a.steps or (30 if gpu and not q else 3 if q else 5)
    a.min_seconds = a.min_seconds if a.min_seconds is not None else (5.0 if gpu and not q else 0.0)
    a.max_epochs = a.max_epochs or (2 if q else 64)
    a.err_size = a.err_size or (32 if q else 128)
    a.err_train = a.err_train or (16 if q else 256)
    a.err_test = a.err_test or (4 if q else 32)
    a.err_pairs_per_epoch = a.err_pairs_per_epoch or (32 if q else 1024)
    a.to_error = a.to_error or a.only_to_error
    if a.only_to_error: a.cases = []
    variants = a.variants or [v for v in VARIANTS
                              if bl.variant_ok(v, dev) is None and not (q and not gpu and VARIANTS[v][2])]
    print(f"Discovery training throughput on {bl.describe(dev)}" + (" [--quick: reduced sizes]" if q else ""))
    if not gpu: print("CPU run: absolute numbers are not the GPU targets; the ratios between variants are what count "
                      "here (bf16 autocast variants: CUDA only).")
    res = dict(quick=q, cudnn_benchmark=a.cudnn_benchmark, k=a.k, warmup=a.warmup, steps=a.steps,
               min_seconds=a.min_seconds, cases={})
    cases = dict(
        **({"2d": dict(d=2, size=a.size_2d, batch=a.batch_2d, channels=(16, 32, 64, 128), n=64)}
           if "2d" in a.cases else {}),
        **({"3d": dict(d=3, size=a.size_3d, batch=a.batch_3d, channels=(8, 16, 32), n=32)} if "3d" in a.cases else {}))
    for key, c in cases.items():
        pool = make_case(c["d"], c["size"], c["n"], a.seed)
        title = (f"{'2D' if c['d'] == 2 else '3D'} phantoms {'x'.join([str(c['size'])] * c['d'])}, "
                 f"{c['batch']} pairs/step, K={a.k} + {2 ** c['d']} corners, "
                 f"LandmarkRegressor channels {c['channels']}")
        rows = []
        for v in variants:
            why = bl.variant_ok(v, dev)
            if why:
                rows.append(dict(variant=v, note=why)); continue
            try:
                rows.append(run_variant(v, c["d"], pool, a.k, c["channels"], c["batch"], dev, a))
            except Exception as e:   # e.g. torch.compile without a working compiler: reported, not fatal
                rows.append(dict(variant=v, note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"))
            if VARIANTS[v][2]: torch._dynamo.reset()   # compiled graphs of one variant do not leak into the next
        print_case(title, rows)
        for r in rows:
            if "profile" in r: print(f"\n  torch.profiler, fp32 step x3:\n{r['profile']}")
        res["cases"][key] = dict(title=title, size=c["size"], batch_pairs=c["batch"], channels=list(c["channels"]),
                                 rows=rows)
    if res["cases"]: bl.write_results(a, dev, res)
    if a.to_error: bl.write_results(a, dev, dict(quick=q, **to_error(a, dev)), "throughput_to_error")


if __name__ == "__main__":
    main()
