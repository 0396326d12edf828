"""DeepSSM augmentation at the paper's scale: M = 5000 (image, correspondence) pairs from the real femurs.

    python bench/deepssm_augment.py [--n 5000] [--n-real 96] [--spacing 4] [--threads 2] [--out bench/results]
    python bench/deepssm_augment.py --device cuda          # the warps on a GPU
    python bench/deepssm_augment.py --quick --device cpu   # a smoke run: 32 pairs from 12 femurs at 6 mm

Prints throughput (pairs/s) and a plausibility check: the augmented PCA scores against the real ones (per-mode
std ratio, median Mahalanobis distance under the real-score Gaussian), with the paper's KDE (all N-1 modes,
bandwidth = mean nearest-neighbour distance); the set is written to disk as memory-mapped .npy files. Common
options (bench/benchlib.py): --device, --threads (default 2), --quick, --out bench/results, --seed 0 (subjects,
sampling). JSON: bench/results/deepssm_augment_<device>[_quick].json.
"""
import argparse
import tempfile

import numpy as np

from shape_nb.deepssm import augment_pairs, femur_dataset
from shape_nb.shape import ShapePCA

import benchlib as bl


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--n-real", type=int, default=96)
    ap.add_argument("--spacing", type=float, default=4.0)
    bl.common_args(ap, quick_help="a smoke run: 32 pairs from 12 femurs at 6 mm", threads=2)
    a = ap.parse_args()
    if a.quick: a.n, a.n_real, a.spacing = 32, 12, 6.0
    bl.require_data(a, "femurs")
    dev = bl.setup(a)
    data = femur_dataset(a.n_real, spacing=a.spacing, random_state=a.seed)
    x, P = data["images"], data["points"]
    kw = dict(spacing=data.get("spacing"), origin=data.get("origin"))
    with tempfile.TemporaryDirectory() as tmp:
        with bl.clock(dev) as c:
            aug = augment_pairs(x, P, a.n, **kw, out_dir=tmp, random_state=a.seed, device=dev, progress=False)
        secs = c.seconds
        real = ShapePCA().fit(np.asarray(P).reshape(len(P), -1, 3))
        s_real = np.asarray(real.transform(np.asarray(P)))
        s_aug = np.asarray(real.transform(np.asarray(aug.points)))
        ratio = (s_aug.std(0) / s_real.std(0))
        cov = np.cov(s_real[:, :10].T); ic = np.linalg.inv(cov); mu = s_real[:, :10].mean(0)
        maha = lambda s: np.sqrt(np.einsum("ij,jk,ik->i", s[:, :10] - mu, ic, s[:, :10] - mu))
        shape = tuple(np.asarray(aug.images.shape))
    res = dict(n=a.n, n_real=len(P), volume_shape=[int(v) for v in x.shape[2:]], spacing_mm=a.spacing, seconds=secs,
               pairs_per_second=a.n / secs, threads=a.threads, images_shape=[int(v) for v in shape],
               std_ratio_first10=ratio[:10].round(3).tolist(), median_mahalanobis_real=float(np.median(maha(s_real))),
               median_mahalanobis_augmented=float(np.median(maha(s_aug))))
    print(f"DeepSSM augmentation on {bl.describe(dev)}: {a.n} pairs from {len(P)} real femurs "
          f"({'x'.join(map(str, x.shape[2:]))} volumes at {a.spacing} mm) in {secs:.0f} s = "
          f"{res['pairs_per_second']:.1f} pairs/s")
    print(f"  augmented/real score std, modes 1-10: {res['std_ratio_first10']}")
    print(f"  median Mahalanobis (first 10 modes, real-score Gaussian): real {res['median_mahalanobis_real']:.2f}, "
          f"augmented {res['median_mahalanobis_augmented']:.2f}")
    bl.write_results(a, dev, res)


if __name__ == "__main__":
    main()
