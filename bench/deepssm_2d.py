"""DeepSSM in 2D: rasterised real outlines -> outline points (Base and TL, with and without focal loss).

    python bench/deepssm_2d.py [--data cortical|mice] [--size 64] [--epochs 40] [--out bench/results]
    python bench/deepssm_2d.py --device cuda           # on a GPU
    python bench/deepssm_2d.py --quick --device cpu    # a smoke run: 32x32 images, 2 epochs

Outlines are placed in the image frame by one common similarity (sizes stay comparable), filled and blurred by
1 pixel; the outline points (normalised coordinates) are the correspondences. Errors are RMSE (eq. 12) in pixels
on held-out images, against the trivial prediction of the training mean shape, plus PPCA severity AUC (PPCA of the
first group's training shapes, mean point-wise Mahalanobis distance) from predicted vs true points. Common options
(bench/benchlib.py): --device, --threads (default 2), --quick, --out bench/results, --seed 0 (split, weights).
JSON: bench/results/deepssm_2d_<data>_<device>[_quick].json.
"""
import argparse

import numpy as np
import torch

from shape_nb.data import fit_to_frame, load_cortical_outlines, load_mice_vertebrae, rasterize_polygons, split_indices
from shape_nb.deepssm import DeepSSM
from shape_nb.metrics import abnormality_auc, correspondence_rmse
from shape_nb.shape import GPA, PPCA

import benchlib as bl


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["cortical", "mice"], default="cortical")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-points", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--models", default="base,base_focal,tl,tl_focal")
    bl.common_args(ap, quick_help="a smoke run: 32x32 images, 2 epochs", threads=2)
    a = ap.parse_args()
    if a.quick: a.size, a.epochs = 32, 2
    root = bl.require_data(a, "cortical_outlines" if a.data == "cortical" else "mice_vertebrae")
    dev = bl.setup(a)
    if a.data == "cortical":
        d = load_cortical_outlines(root); X, groups, ref = d["outlines"], d["group"], "Con"
        flip = True
    else:
        d = load_mice_vertebrae(root); X, groups, ref = GPA(scaling=False).fit(d["outlines"]).aligned_, d["groups"], "c"
        flip = False
    X = np.asarray(X)[:, np.linspace(0, X.shape[1], a.n_points, endpoint=False).astype(int)]
    norm, _ = fit_to_frame(X, margin=0.15, flip_y=flip)
    P = np.asarray(norm, dtype=np.float32)
    imgs = rasterize_polygons(P, a.size)
    imgs = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(imgs, (1, 1, 1, 1), mode="replicate"), 3, 1)
    tr, _, te = split_indices(len(P), (0.8, 0.0, 0.2), seed=a.seed)
    px = a.size / 2                                                    # normalised -> pixels
    rows = {}
    mean_rmse = correspondence_rmse(np.broadcast_to(P[tr].mean(0), P[te].shape), P[te]).mean() * px
    normal = tr[groups[tr] == ref]
    ppca = PPCA(0.9).fit(P[normal].astype(np.float64))
    y = groups[te] != ref
    auc_true = abnormality_auc(ppca.severity(P[te].astype(np.float64)), y) if y.any() and not y.all() else None
    print(f"DeepSSM 2D on {a.data} outlines: {len(P)} shapes, {a.n_points} points, {a.size}x{a.size} images, "
          f"{len(tr)} train / {len(te)} test, {bl.describe(dev)}")
    print(f"  {'model':12s} {'RMSE px':>9s} {'severity AUC':>13s} {'train s':>8s}")
    print(f"  {'mean shape':12s} {mean_rmse:9.3f} {'':>13s}")
    for m in a.models.split(","):
        kind, focal = m.split("_")[0], m.endswith("focal")
        with bl.clock(dev) as c:
            est = DeepSSM(kind=kind, focal=focal, epochs=a.epochs, batch_size=8, patience=10, device=str(dev),
                          progress=False, random_state=a.seed).fit(imgs[tr], P[tr])
        secs = c.seconds
        pred = est.predict(imgs[te]).numpy()
        rmse = correspondence_rmse(pred, P[te]).mean() * px
        auc = abnormality_auc(ppca.severity(pred.astype(np.float64)), y) if auc_true is not None else None
        rows[m] = dict(rmse_px=float(rmse), severity_auc=auc, train_seconds=secs)
        print(f"  {m:12s} {rmse:9.3f} {auc if auc is None else round(auc, 3)!s:>13s} {secs:8.0f}")
    print(f"  severity AUC ({'/'.join(sorted(set(groups)))}, reference {ref}) from true test points: {auc_true}")
    res = dict(data=a.data, n=len(P), n_points=a.n_points, size=a.size, epochs=a.epochs,
               mean_shape_rmse_px=float(mean_rmse), severity_auc_true=auc_true, models=rows)
    bl.write_results(a, dev, res, f"deepssm_2d_{a.data}")


if __name__ == "__main__":
    main()
