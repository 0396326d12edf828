"""DeepSSM speed (benchmark 3): inference time per volume and augmentation throughput, side by side with the paper.

    python bench/deepssm_speed.py --device cuda             # the GPU benchmark (+ CPU rows with 2 threads, same run)
    python bench/deepssm_speed.py --device cuda --cudnn-benchmark --no-cpu-rows   # the same with autotuned convolutions
    python bench/deepssm_speed.py --device cpu              # the CPU table (2 threads)
    python bench/deepssm_speed.py --quick --device cpu      # CPU smoke run: half-size volumes, few repeats, no compile

Inference: Base-DeepSSM (encoder -> PCA scores -> fixed PCA decoder) and TL-DeepSSM (T-flank encoder -> latent ->
correspondence decoder), with the paper-width encoder (shape_nb.nets.DeepSSMEncoder defaults: 5 convolutions 5^3,
12-24-48-96-192 channels, FC 384-96), on volumes of 118x69x88 voxels (the paper's size; array order D, H, W),
M = 1024 correspondences, 16 PCA modes (Base) / latent 64 (TL), untrained weights (the time does not depend on
them). Batch 1 and batched; time per volume is the median over repeats, after warm-up, synchronised on CUDA, under
torch.inference_mode. Variants: fp32, channels_last_3d, torch.compile (CPU and CUDA), bf16 autocast and
bf16+channels_last_3d (CUDA). The column `max |dp|` is the largest deviation of the predicted points from the fp32
prediction (normalised units). Targets: < 1 s per volume on 2 CPU cores, < 20 ms on an H100. The paper's Table 1
reports DeepSSM inference of 0.28-1.25 s per volume on a 192-core CPU.

Augmentation: `shape_nb.deepssm.augment_pairs` (KDE sampling, TPS warps batched on the device) on a small real
femur set (`femur_dataset`, ../shared/data/femurs) or, with --quick or without the data, on synthetic ellipsoids;
samples/s on the device, and on the CPU for comparison. Common options (bench/benchlib.py): --device, --threads
(torch threads of the CPU rows, default 2), --quick, --out bench/results, --seed 0 (inputs, weights, augmentation).
JSON: bench/results/deepssm_speed_<device>[_quick].json.
"""
import argparse
import copy

import torch

from shape_nb.deepssm import augment_pairs, ellipsoid_dataset
from shape_nb.nets import BaseDeepSSM, TLDeepSSM

import benchlib as bl
from benchlib import VARIANTS

PAPER_SHAPE = (118, 69, 88)
PAPER_CPU_S = (0.28, 1.25)   # paper 2, Table 1: inference seconds per volume, 192-core CPU


def make_models(n_points=1024, n_modes=16, latent=64, seed=0):
    "Base and TL DeepSSM with the paper-width encoder and random (orthonormal) PCA modes."
    torch.manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n_points * 3, n_modes))[0].T.contiguous()   # (L, M*3), orthonormal rows
    mean = torch.rand(n_points, 3) * 1.6 - 0.8
    return {"Base": BaseDeepSSM(basis, mean, torch.linspace(1.0, 0.1, n_modes)).eval(),
            "TL": TLDeepSSM(n_points, latent).eval()}


def infer_rows(kind, model, shape, batches, variants, device, a, threads=None):
    "Rows (variant x batch) of inference time per volume for one model on one device."
    rows = []
    x_all = torch.rand(max(batches), 1, *shape, generator=torch.Generator().manual_seed(a.seed))
    with torch.inference_mode():
        ref = {b: model.to(device)(x_all[:b].to(device))[1].float().cpu() for b in batches}
    for v in variants:
        why = bl.variant_ok(v, device)
        if why:
            rows.append(dict(model=kind, variant=v, note=why)); continue
        try:
            net = bl.prepare(copy.deepcopy(model).to(device), v, 3)
            for b in batches:
                x = bl.to_input(x_all[:b].to(device), v, 3)
                with torch.inference_mode(), bl.autocast(v, device):
                    with bl.clock(device) as first: out = net(x)[1]
                    ts = bl.timed(lambda: net(x), device, warmup=a.warmup, repeats=a.repeats, min_seconds=a.min_seconds)
                dp = float((out.float().cpu() - ref[b]).abs().max())
                s = bl.median(ts)
                rows.append(dict(model=kind, variant=v, device=str(device), threads=threads, batch=b,
                                 ms_per_batch=s * 1e3, ms_per_volume=s * 1e3 / b, volumes_per_s=b / s,
                                 first_call_s=first.seconds, max_point_dev=dp, repeats=len(ts)))
        except Exception as e:   # a variant failing (e.g. no compiler for torch.compile) is reported, not fatal
            rows.append(dict(model=kind, variant=v, device=str(device),
                             note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}"))
        if VARIANTS[v][2]: torch._dynamo.reset()
    return rows


def print_inference(rows, target_ms):
    print(f"\n  {'model':5s} {'device':12s} {'variant':20s} {'batch':>5s} {'ms/volume':>10s} {'volumes/s':>10s} "
          f"{'vs fp32':>8s} {'1st call s':>10s} {'max |dp|':>9s} {'target ms':>10s}")
    for r in rows:
        if r.get("ms_per_volume") is None:
            print(f"  {r['model']:5s} {r.get('device', ''):12s} {r['variant']:20s} {'':>5s} {'n/a':>10s}   {r['note']}")
            continue
        same = ("model", "device", "batch", "threads")
        base = next((q for q in rows if q["variant"] == "fp32" and q.get("ms_per_volume")
                     and all(q.get(k) == r.get(k) for k in same)), None)
        dev = r["device"] + (f" {r['threads']}t" if r.get("threads") else "")
        tgt = target_ms(r)
        tgt = "-" if tgt is None else ("ok" if r["ms_per_volume"] < tgt else "miss") + f" <{tgt:g}"
        rel = (base["ms_per_volume"] / r["ms_per_volume"]) if base else float("nan")
        print(f"  {r['model']:5s} {dev:12s} {r['variant']:20s} {r['batch']:5d} {r['ms_per_volume']:10.1f} "
              f"{r['volumes_per_s']:10.2f} {rel:7.2f}x {r['first_call_s']:10.2f} {r['max_point_dev']:9.1e} {tgt:>10s}")
    ms = f"{PAPER_CPU_S[0] * 1e3:.0f}-{PAPER_CPU_S[1] * 1e3:.0f}"
    per_s = f"{1 / PAPER_CPU_S[1]:.1f}-{1 / PAPER_CPU_S[0]:.1f}"
    print(f"  {'paper':5s} {'192-core CPU':12s} {'Table 1':20s} {'':5s} {ms:>10s} {per_s:>10s}")


def aug_data(a):
    "(images, points, spacing, origin, description) for the augmentation benchmark."
    if not a.quick and a.aug_data == "femur":
        try:
            from shape_nb.deepssm import femur_dataset
            d = femur_dataset(a.aug_real, spacing=a.aug_spacing, random_state=a.seed)
            desc = (f"{a.aug_real} real femurs, {'x'.join(map(str, d['images'].shape[2:]))} voxels at "
                    f"{a.aug_spacing:g} mm")
            return d["images"], d["points"], d.get("spacing"), d.get("origin"), desc
        except (FileNotFoundError, OSError, SystemExit) as e:
            print(f"  femur data not available ({e}); using ellipsoids")
    size = 24 if a.quick else 64
    d = ellipsoid_dataset(a.aug_real, size, 256, random_state=a.seed)
    return d["images"], d["points"], None, None, f"{a.aug_real} ellipsoids, {size}^3 voxels"


def aug_rows(a, devices):
    x, P, sp, org, desc = aug_data(a)
    rows = []
    for dev, n, threads in devices:
        kw = dict(spacing=sp, origin=org, n_control=a.aug_control, batch_size=a.aug_batch, random_state=a.seed,
                  progress=False, device=dev)
        augment_pairs(x, P, min(n, a.aug_batch), **kw)   # warm-up (kernels, grid cache)
        with bl.clock(dev) as c: aug = augment_pairs(x, P, n, **kw)
        s = c.seconds
        rows.append(dict(device=str(dev), threads=threads, n=n, seconds=s, samples_per_s=n / s,
                         residual_mean=float(aug.residual.mean())))
    print(f"\nDeepSSM augmentation (augment_pairs: KDE scores, {a.aug_control} TPS control points, {a.aug_batch} "
          f"warps per batch): {desc}")
    print(f"  {'device':14s} {'samples':>8s} {'seconds':>8s} {'samples/s':>10s} {'vs first':>9s}")
    for r in rows:
        dev = r["device"] + (f" {r['threads']}t" if r["threads"] else "")
        print(f"  {dev:14s} {r['n']:8d} {r['seconds']:8.2f} {r['samples_per_s']:10.2f} "
              f"{r['samples_per_s'] / rows[0]['samples_per_s']:8.2f}x")
    return dict(data=desc, shape=[int(s) for s in x.shape[2:]], n_real=len(x), n_control=a.aug_control,
                batch=a.aug_batch, rows=rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=None, metavar=("D", "H", "W"),
                    help="volume size (default: the paper's 118 69 88; --quick: half of it per axis)")
    ap.add_argument("--batch", type=int, default=None, help="the batched size (default 16 on CUDA, 4 on the CPU)")
    ap.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS))
    ap.add_argument("--no-cpu-rows", action="store_true", help="with --device cuda: skip the CPU rows")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--min-seconds", type=float, default=None)
    ap.add_argument("--aug-data", choices=["femur", "ellipsoids"], default="femur")
    ap.add_argument("--aug-real", type=int, default=None, help="real pairs (default 24; --quick 12)")
    ap.add_argument("--aug-spacing", type=float, default=None,
                    help="femur voxel size, mm (default 2 on CUDA, 3 on the CPU)")
    ap.add_argument("--aug-n", type=int, default=None,
                    help="augmented samples on the device (default 256 on CUDA, 32 on the CPU)")
    ap.add_argument("--aug-control", type=int, default=128)
    ap.add_argument("--aug-batch", type=int, default=8)
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark = True (autotuned convolutions)")
    bl.common_args(ap, quick_help="seconds on a CPU: fewer repeats, no compile, small augmentation", threads=2)
    a = ap.parse_args()
    dev = bl.setup(a)   # --threads: the CPU rows (and the CPU side of GPU runs) use this many threads
    gpu, q = dev.type == "cuda", a.quick
    torch.backends.cudnn.benchmark = a.cudnn_benchmark
    a.batch = a.batch or (16 if gpu else 2 if q else 4)
    a.warmup = a.warmup if a.warmup is not None else (3 if gpu else 1)
    a.repeats = a.repeats or (20 if gpu else 2 if q else 3)
    a.aug_spacing = a.aug_spacing or (2.0 if gpu else 3.0)
    a.min_seconds = a.min_seconds if a.min_seconds is not None else (2.0 if gpu and not q else 0.0)
    a.aug_real = a.aug_real or (12 if q else 24)
    a.aug_n = a.aug_n or (256 if gpu and not q else 16 if q else 32)
    shape = tuple(a.shape) if a.shape else tuple(s // 2 for s in PAPER_SHAPE) if q else PAPER_SHAPE
    print(f"DeepSSM speed on {bl.describe(dev)}" + (f" [--quick: {'x'.join(map(str, shape))} volumes]" if q else ""))
    models = make_models(seed=a.seed)
    res = dict(quick=q, cudnn_benchmark=a.cudnn_benchmark, shape=list(shape), n_points=1024, pca_modes=16, latent=64,
               paper_table1_cpu_s_per_volume=list(PAPER_CPU_S), targets_ms=dict(cpu_2_cores=1000, h100=20),
               inference=[])
    cpu_variants = a.variants or ["fp32", "channels_last"] + ([] if q else ["compile"])
    runs = []
    if gpu:
        runs.append((dev, a.variants or ["fp32", "bf16", "channels_last", "bf16+channels_last", "compile",
                                         "bf16+compile", "bf16+channels_last+compile"],
                     [1, a.batch], None))
    if not gpu or not a.no_cpu_rows:
        cpu = torch.device("cpu")
        runs.append((cpu, [v for v in cpu_variants if bl.variant_ok(v, cpu) is None] if gpu else cpu_variants,
                     [1] if gpu else [1, a.batch], a.threads))
    for device, variants, batches, threads in runs:
        for kind, model in models.items():
            res["inference"] += infer_rows(kind, model, shape, batches, variants, device, a, threads)
    print(f"\nInference per volume, {'x'.join(map(str, shape))} voxels, paper-width encoder, M=1024 "
          f"(targets: < 1000 ms on 2 CPU cores, < 20 ms on an H100)")
    paper_size = shape == PAPER_SHAPE   # the targets are for the paper's volume size
    print_inference(res["inference"],
                    lambda r: None if not paper_size else 20.0 if r["device"].startswith("cuda") else 1000.0)
    devices = [(dev, a.aug_n, None)] + ([(torch.device("cpu"), min(a.aug_n, 32), a.threads)] if gpu else [])
    if not gpu: devices = [(dev, a.aug_n, a.threads)]
    res["augmentation"] = aug_rows(a, devices)
    bl.write_results(a, dev, res)


if __name__ == "__main__":
    main()
