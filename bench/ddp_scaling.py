"""Data-parallel scaling of landmark-discovery training under torchrun (DDP): pairs/s for 1..P processes.

    python bench/ddp_scaling.py --device cuda --nproc 1 2 4 8     # one GPU per process (NCCL)
    python bench/ddp_scaling.py --quick --device cpu               # CPU smoke run: 1 and 2 gloo processes

Every run trains the same LandmarkDiscovery (phantoms, K landmarks, --pairs pairs per epoch in batches of
--batch-size per process) for --epochs epochs under `torchrun --standalone --nproc_per_node=P`; throughput is
pairs per second over the epochs after the first (which includes start-up). With P processes each optimiser
step sees P batches, so the global batch grows with P (the data-parallel way); `--scale-lr` multiplies the
learning rate by P. On the CPU the --threads (default: all cores) are split between the processes (threads per
process = threads / P), so the CPU table measures the overhead of DDP (gloo all-reduce per step) rather than a
speed-up. Common options (bench/benchlib.py): --device, --threads, --quick, --out bench/results, --seed 0 (phantoms,
weights, pairs). JSON: bench/results/ddp_scaling_<device>[_quick].json.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import benchlib as bl


def worker(a):
    "One rank (--threads: its own CPU threads): train, and (rank 0) write the timings."
    from shape_nb.discovery import LandmarkDiscovery
    from shape_nb.phantoms import tps_phantoms, tps_phantoms_3d
    from shape_nb.train import dist_info
    torch.set_num_threads(a.threads)
    imgs, _ = (tps_phantoms if a.dim == 2 else tps_phantoms_3d)(a.n_images, a.size, seed=a.seed)
    est = LandmarkDiscovery(n_landmarks=a.k, epochs=a.epochs, batch_size=a.batch_size, pairs="random",
                            pairs_per_epoch=a.pairs, lr=a.lr, val_fraction=0, device=a.device, random_state=a.seed,
                            progress=False).fit(imgs)
    rank, world = dist_info()
    if rank == 0:
        secs = est.history_["train"].column("seconds")
        steady = secs[1:] or secs
        used = a.pairs // (a.batch_size * world) * a.batch_size * world        # an incomplete last round is dropped
        Path(a.worker).write_text(json.dumps(dict(world=world, seconds=secs, pairs_per_epoch=used,
                                                  pairs_per_s=used * len(steady) / sum(steady),
                                                  final_train_loss=est.history_["train"].records[-1]["train_loss"],
                                                  device=str(next(est.model_.parameters()).device))))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, nargs="+", default=None)
    p.add_argument("--dim", type=int, choices=(2, 3), default=2)
    p.add_argument("--size", type=int, default=None, help="image size (default 256 in 2D, 64 in 3D; --quick: 48)")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--k", type=int, default=26)
    p.add_argument("--pairs", type=int, default=2048, help="pairs per epoch (all processes together)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per step per process")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scale-lr", action="store_true")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    bl.common_args(p, quick_help="CPU smoke run: 48x48 phantoms, 128 pairs per epoch, 3 epochs")
    a = p.parse_args()
    if a.worker: return worker(a)
    cores = a.threads or os.cpu_count() or 1   # CPU threads to split between the processes
    dev = bl.setup(a)
    if a.quick: a.size, a.pairs, a.batch_size, a.epochs, a.n_images = a.size or 48, 128, 8, 3, 16
    a.size = a.size or (256 if a.dim == 2 else 64)
    nprocs = a.nproc or ([1, 2] if dev.type == "cpu" else [1, torch.cuda.device_count()])
    rows = []
    for P in nprocs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            threads = max(1, cores // P) if dev.type == "cpu" else 1
            lr = a.lr * P if a.scale_lr else a.lr
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={P}", __file__,
                   "--worker", str(out), "--threads", str(threads), "--device", str(dev.type), "--dim", str(a.dim),
                   "--size", str(a.size), "--n-images", str(a.n_images), "--k", str(a.k), "--pairs", str(a.pairs),
                   "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--lr", str(lr), "--seed", str(a.seed)]
            with bl.clock(dev) as c:
                r = subprocess.run(cmd, capture_output=True, text=True,
                                   env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
            if r.returncode != 0: sys.exit(f"torchrun with {P} processes failed:\n{r.stderr[-3000:]}")
            res = json.loads(out.read_text())
            res.update(nproc=P, threads_per_process=threads, wall_s=c.seconds, lr=lr)
            rows.append(res)
    base = rows[0]["pairs_per_s"]
    shape = "x".join([str(a.size)] * a.dim)
    print(f"DDP scaling of landmark discovery, {a.dim}D phantoms {shape}, K={a.k}, {a.batch_size} pairs/step/process, "
          f"{a.pairs} pairs/epoch, {a.epochs} epochs; {bl.describe(dev)}")
    print(f"  {'processes':>9} {'threads':>7} {'pairs/s':>9} {'speed-up':>8} {'final loss':>10} {'wall s':>7}")
    for r in rows:
        print(f"  {r['nproc']:>9} {r['threads_per_process']:>7} {r['pairs_per_s']:>9.1f} "
              f"{r['pairs_per_s'] / base:>7.2f}x "
              f"{r['final_train_loss']:>10.4f} {r['wall_s']:>7.1f}")
    bl.write_results(a, dev, dict(rows=rows))


if __name__ == "__main__":
    main()
