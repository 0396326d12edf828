"""DeepSSM's model-based augmentation: how plausible the new pairs are and whether they help Base-DeepSSM.

    python bench/deepssm_augment.py --threads 1                 # the experiment: 3 data sets x 3 folds (CPU, ~40 min)
    python bench/deepssm_augment.py --quick --device cpu        # a smoke run: 2 folds, 2 epochs, mice only
    python bench/deepssm_augment.py --plausibility-only         # the measurements without training (a minute)
    python bench/deepssm_augment.py --throughput [--n 5000] [--n-real 96] [--spacing 4] [--device cuda]
                                                                # pairs/s at the paper's scale (M = 5000 from femurs)

The experiment. Three real shape sets (mice vertebrae and cortical outlines as filled, blurred 2D outlines of
48x48 pixels; proximal femurs as synthetic CT-like volumes at 6 mm, shape_nb.deepssm.femur_dataset), `--folds`
folds each (fold k tests every k-th shape of a seeded permutation). On each fold's training shapes the
augmentation settings below make `--n-augment` new pairs, which are first measured without training (the spread of
the new PCA scores per mode against the real ones, their Mahalanobis distance on the real shapes' 95% modes, how far
each new shape lies from the real shape whose image is warped, in units of the real shapes' median nearest-neighbour
distance, the label residual the control-point subsampling leaves, the fraction of the image where the thin-plate
spline folds (2D), in 2D how far the warped image is from a direct rasterisation of the new shape, and the
high-frequency content of the warped images against that of their base images, which resampling smooths). Then
Base-DeepSSM (half-width encoder) is trained with each setting and without augmentation for the same number of
optimiser steps, and tested on the held-out fold (eq. 12 RMSE, pixels or mm). Settings:

  paper        all N-1 modes, isotropic KDE noise of std = the mean nearest-neighbour distance (the paper's rule),
               the image of the KDE's base shape is warped
  paper_95     the same on the modes that hold 95% of the variance (the ShapeWorks default)
  radius       all N-1 modes, per-mode std = mean NN distance / sqrt(L): the noise vector's expected length is
               the mean NN distance (shape_nb's default)
  radius_99    the same on the modes that hold 99% of the variance
  (plausibility only: paper_nearest, the paper's noise warping the nearest real shape's image; radius_16ctrl, 16
  control points, as with sparse landmarks)

Common options (bench/benchlib.py): --device, --threads (default 2), --quick, --out bench/results, --seed 0.
JSON: bench/results/deepssm_augment[_plausibility]_<device>[_quick].json and
deepssm_augment_throughput_<device>[_quick].json.
"""
import argparse
import tempfile

import numpy as np
import torch

from shape_nb.data import rasterize_polygons
from shape_nb.deepssm import DeepSSM, augment_pairs, farthest_point_sampling, femur_dataset
from shape_nb.metrics import correspondence_rmse
from shape_nb.shape import ShapePCA
from shape_nb.tps import tps_apply, tps_fit

import benchlib as bl

SETTINGS = {"paper": dict(n_components=None, noise="paper"),
            "paper_95": dict(n_components=0.95, noise="paper"),
            "radius": dict(n_components=None, noise="radius"),
            "radius_99": dict(n_components=0.99, noise="radius")}
PLAUSIBILITY_ONLY = {"paper_nearest": dict(n_components=None, noise="paper", base_image="nearest"),
                     "radius_16ctrl": dict(n_components=None, noise="radius", n_control=16)}


def load(root, name, size, n_femurs):
    "(images, points, spacing, origin, unit per point unit, unit name) of one set; 2D points are normalised."
    if name == "femurs":
        d = femur_dataset(n_femurs, spacing=6.0, n_points=128, random_state=0, root=root)
        return d["images"], d["points"], d["spacing"], d["origin"], 1.0, "mm"
    from deepssm_2d import load_2d
    P, imgs, _, _ = load_2d(root, name, 60 if name == "mice" else 100, size)
    return imgs, P.astype(np.float64), None, None, size / 2, "px"


def fold_fraction(src, dst, size):
    "Fraction of a size x size pixel grid where the 2D TPS src -> dst (normalised) has a Jacobian determinant <= 0."
    g = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    h = 1e-3
    pts = torch.stack([xx, yy], -1).reshape(-1, 2)
    probe = torch.cat([pts, pts + torch.tensor([h, 0.0]), pts + torch.tensor([0.0, h])])
    out = tps_apply(tps_fit(src, dst), probe[None].expand(len(src), -1, -1))
    m = len(pts)
    jx, jy = (out[:, m:2 * m] - out[:, :m]) / h, (out[:, 2 * m:] - out[:, :m]) / h
    det = jx[..., 0] * jy[..., 1] - jx[..., 1] * jy[..., 0]
    return float((det <= 0).double().mean())


def high_frequency(x):
    "Standard deviation of (image - its 3x3(x3) box average): the noise and texture that resampling smooths."
    d = x.ndim - 2
    pool = (torch.nn.functional.avg_pool2d, torch.nn.functional.avg_pool3d)[d - 2]
    return float((x - pool(torch.nn.functional.pad(x, (1, 1) * d, mode="replicate"), 3, 1)).std())


def plausibility(x, P, sp, org, unit, kw, n, seed):
    "How the augmented pairs of one setting compare with the real ones (no training)."
    aug = augment_pairs(x, P, n, spacing=sp, origin=org, random_state=seed, device="cpu", progress=False, **kw)
    real = ShapePCA().fit(P)
    lam = real.explained_variance_
    k95 = int(np.searchsorted(np.cumsum(lam) / lam.sum(), 0.95) + 1)
    maha = lambda S: float(np.median(np.sqrt(((real.transform(S)[:, :k95] / np.sqrt(lam[:k95])) ** 2).sum(1))))
    ratio = aug.scores.std(0, ddof=1) / aug.pca.transform(P).std(0, ddof=1)
    rms = lambda A, B: np.sqrt(((A - B) ** 2).sum(-1).mean(-1))
    nn_real = np.median(np.sort(rms(P[:, None], P[None]), 1)[:, 1])
    from scipy.spatial import cKDTree
    nearest = cKDTree(aug.pca.transform(P)).query(aug.scores)[1]
    row = dict(n_modes=int(aug.pca.n_components_), bandwidth=float(aug.sampler.bandwidth_),
               std_ratio_first=float(ratio[0]), std_ratio_min=float(ratio.min()), std_ratio_max=float(ratio.max()),
               mahalanobis95_real=maha(P), mahalanobis95_augmented=maha(aug.points),
               new_to_warped_shape_in_nn=float(np.median(rms(aug.points, P[aug.base_index])) / nn_real),
               warped_is_nearest=float((nearest == aug.base_index).mean()),
               label_residual=float(aug.residual.mean() * unit),
               high_frequency_ratio=high_frequency(torch.as_tensor(np.asarray(aug.images)))
               / high_frequency(x[torch.as_tensor(aug.base_index)]))
    if P.shape[2] == 2:
        ctrl = farthest_point_sampling(aug.pca.mean_, min(kw.get("n_control", 128), P.shape[1]))
        src, dst = torch.from_numpy(P[aug.base_index][:, ctrl]), torch.from_numpy(aug.points[:, ctrl])
        row["tps_fold_fraction"] = fold_fraction(src[:50], dst[:50], x.shape[-1])
        direct = rasterize_polygons(aug.points.astype(np.float32), x.shape[-1])
        direct = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(direct, (1, 1, 1, 1), mode="replicate"), 3, 1)
        w = torch.as_tensor(np.asarray(aug.images))
        row["image_mae_vs_rasterised"] = float((w - direct).abs().mean())
        inter = ((w > 0.5) & (direct > 0.5)).sum((1, 2, 3)).double()
        row["image_dice_vs_rasterised"] = float((2 * inter / ((w > 0.5).sum((1, 2, 3)) + (direct > 0.5).sum((1, 2, 3)))
                                                 ).mean())
    return row


def experiment(a, root, dev):
    sets = ["mice"] if a.quick else ["mice", "cortical", "femurs"]
    out = dict(folds=a.folds, epochs=a.epochs, n_augment=a.n_augment, size=a.size, settings=SETTINGS,
               plausibility_only=PLAUSIBILITY_ONLY, note="test RMSE: eq. 12 on the held-out fold, per fold")
    for name in sets:
        x, P, sp, org, unit, uname = load(root, name, a.size, a.n_femurs)
        perm = np.random.default_rng(a.seed).permutation(len(P))
        res = dict(unit=uname, n=len(P), image_shape=list(x.shape[2:]), plausibility={}, test_rmse={}, mean_shape=[])
        for k in range(a.folds):
            te = np.sort(perm[k::a.folds]); tr = np.setdiff1d(np.arange(len(P)), te)
            res["mean_shape"].append(float(correspondence_rmse(np.broadcast_to(P[tr].mean(0), P[te].shape),
                                                               P[te]).mean() * unit))
            geo = dict(spacing=sp, origin=org)
            if k == 0:
                for s, kw in {**SETTINGS, **PLAUSIBILITY_ONLY}.items():
                    res["plausibility"][s] = plausibility(x[tr], P[tr], sp, org, unit, kw, a.n_augment, a.seed)
                    print(f"{name} {s:14s} " + ", ".join(f"{key} {v:.3g}" for key, v in res["plausibility"][s].items()),
                          flush=True)
            if a.plausibility_only: break
            base = dict(kind="base", batch_size=8, patience=None, device=str(dev), progress=False,
                        random_state=a.seed + k, channels=(6, 12, 24, 48, 96), fc=(192, 48),
                        kernel_size=3 if name == "femurs" else 5)
            steps = round(a.epochs * (len(tr) + a.n_augment) / len(tr))          # the same optimiser steps as with
            for s, kw in {"none": None, **SETTINGS}.items():                      # augmentation
                est = DeepSSM(**base, epochs=steps if kw is None else a.epochs, n_augment=0 if kw is None else
                              a.n_augment, augment_kw=dict(kw or {}, device="cpu"))
                est.fit(x[tr], P[tr], **({} if sp is None else geo))
                r = float(correspondence_rmse(est.predict(x[te]).double().numpy(), P[te]).mean() * unit)
                res["test_rmse"].setdefault(s, []).append(r)
                print(f"{name} fold {k} {s:10s} test RMSE {r:.3f} {uname} (mean shape {res['mean_shape'][-1]:.3f})",
                      flush=True)
        out[name] = res
        if a.plausibility_only: continue
        res["test_rmse_mean"] = {s: float(np.mean(v)) for s, v in res["test_rmse"].items()}
        none = np.array(res["test_rmse"]["none"])
        res["folds_better_than_none"] = {s: int((np.array(v) < none).sum()) for s, v in res["test_rmse"].items()}
    if a.plausibility_only: return out
    print(f"\nBase-DeepSSM test RMSE (eq. 12), mean over {a.folds} folds; folds better than no augmentation:")
    for name in sets:
        r = out[name]
        print(f"  {name:9s} mean shape {np.mean(r['mean_shape']):.3f} {r['unit']}; " + "; ".join(
            f"{s} {m:.3f} ({r['folds_better_than_none'][s]}/{a.folds})" for s, m in r["test_rmse_mean"].items()))
    return out


def throughput(a, root, dev):
    data = femur_dataset(a.n_real, spacing=a.spacing, random_state=a.seed, root=root)
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
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=25, help="epochs with augmentation (none: the same steps)")
    ap.add_argument("--n-augment", type=int, default=200)
    ap.add_argument("--size", type=int, default=48, help="2D image size")
    ap.add_argument("--n-femurs", type=int, default=60)
    ap.add_argument("--throughput", action="store_true", help="pairs/s at the paper's scale instead")
    ap.add_argument("--plausibility-only", action="store_true", help="the measurements of the new pairs, no training")
    ap.add_argument("--n", type=int, default=5000, help="--throughput: pairs")
    ap.add_argument("--n-real", type=int, default=96, help="--throughput: real femurs")
    ap.add_argument("--spacing", type=float, default=4.0, help="--throughput: mm")
    bl.common_args(ap, quick_help="a smoke run: mice only, 2 folds, 2 epochs, 24 pairs (--throughput: 32 pairs from "
                                  "12 femurs at 6 mm)", threads=2)
    a = ap.parse_args()
    if a.quick: a.folds, a.epochs, a.n_augment, a.size, a.n, a.n_real, a.spacing = 2, 2, 24, 32, 32, 12, 6.0
    need = (["femurs"] if a.throughput else ["mice_vertebrae"] if a.quick else
            ["mice_vertebrae", "cortical_outlines", "femurs"])
    root = bl.require_data(a, *need)
    dev = bl.setup(a)
    if a.throughput: bl.write_results(a, dev, throughput(a, root, dev), "deepssm_augment_throughput")
    else: bl.write_results(a, dev, experiment(a, root, dev),
                           "deepssm_augment_plausibility" if a.plausibility_only else None)


if __name__ == "__main__":
    main()
