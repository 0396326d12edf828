"""DeepSSM in 2D: rasterised real outlines -> outline points (Base and TL, with and without focal loss).

    python bench/deepssm_2d.py [--data cortical|mice] [--size 64] [--epochs 40] [--out bench/results]
    python bench/deepssm_2d.py --device cuda           # on a GPU
    python bench/deepssm_2d.py --quick --device cpu    # a smoke run: 32x32 images, 2 epochs
    python bench/deepssm_2d.py --ablation --data mice --threads 1   # the paper's choices against ours, 3 folds
    python bench/deepssm_2d.py --ablation-ae --data mice --threads 1  # eq. 5 sum vs mean under Adam, weight decay

Outlines are placed in the image frame by one common similarity (sizes stay comparable), filled and blurred by
1 pixel; the outline points (normalised coordinates) are the correspondences. Errors are RMSE in pixels on held-out
images, eq. 12 (the mean of the per-axis RMSEs) and the Euclidean RMS point distance beside it, against the trivial
prediction of the training mean shape, plus PPCA severity AUC (PPCA of the first group's training shapes; eq. 15:
the point-wise Mahalanobis value projected on the outward outline normal of the reference mean shape, averaged in
absolute value over the points) from predicted vs true points.

--ablation trains, on --folds folds, the image encoder with and without the paper's flatten and fully connected
batch norm (Base-DeepSSM), and TL-DeepSSM with the paper's autoencoder (two linear layers a side, fixed lr 1e-4,
eqs. 5-6 summed) against the earlier choices (three layers, lr 1e-3 with cosine decay, averaged losses), one
factor at a time. --ablation-ae trains the autoencoder alone (TL stage 1, lr 1e-4) with eq. 5 summed or averaged,
with and without the weight decay, and reports Adam's second-moment scale against its epsilon. Common options
(bench/benchlib.py): --device, --threads (default 2), --quick, --out bench/results, --seed 0 (split, weights).
JSON: bench/results/deepssm_2d_<data>_<device>[_quick].json, deepssm_2d_ablation[_ae]_<data>_<device>[_quick].json.
"""
import argparse

import numpy as np
import torch

from shape_nb.data import fit_to_frame, load_cortical_outlines, load_mice_vertebrae, rasterize_polygons, split_indices
from shape_nb.deepssm import DeepSSM
from shape_nb.metrics import abnormality_auc, correspondence_rmse
from shape_nb.shape import GPA, PPCA

import benchlib as bl


def load_2d(root, data, n_points, size):
    """One 2D set: normalised outline points P (n, n_points, 2) float32, their images (n, 1, size, size), the group
    labels and the reference group."""
    if data == "cortical":
        d = load_cortical_outlines(root); X, groups, ref, flip = d["outlines"], d["group"], "Con", True
    else:
        d = load_mice_vertebrae(root); X, groups, ref = GPA(scaling=False).fit(d["outlines"]).aligned_, d["groups"], "c"
        flip = False
    X = np.asarray(X)[:, np.linspace(0, np.asarray(X).shape[1], n_points, endpoint=False).astype(int)]
    norm, _ = fit_to_frame(X, margin=0.15, flip_y=flip)
    P = np.asarray(norm, dtype=np.float32)
    imgs = rasterize_polygons(P, size)
    imgs = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(imgs, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return P, imgs, np.asarray(groups), ref


def outline_normals(outline):
    "Outward unit normals (K, 2) of a closed outline (K, 2): the central-difference tangent turned by 90 degrees."
    t = np.roll(outline, -1, 0) - np.roll(outline, 1, 0)
    n = np.stack([t[:, 1], -t[:, 0]], 1)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    x, y = outline[:, 0], outline[:, 1]
    area = 0.5 * (x * np.roll(y, -1) - np.roll(x, -1) * y).sum()   # shoelace: its sign gives the orientation
    return n if area > 0 else -n


def rmse_px(pred, true, px):
    "Mean over shapes of eq. 12 and of the Euclidean RMS point distance, in pixels."
    return (float(correspondence_rmse(pred, true).mean() * px),
            float(correspondence_rmse(pred, true, kind="euclidean").mean() * px))


def models(a, P, imgs, groups, ref, dev):
    tr, _, te = split_indices(len(P), (0.8, 0.0, 0.2), seed=a.seed)
    px = a.size / 2                                                    # normalised -> pixels
    rows = {}
    mean_rmse, mean_eucl = rmse_px(np.broadcast_to(P[tr].mean(0), P[te].shape), P[te], px)
    normal = tr[groups[tr] == ref]
    ppca = PPCA(0.9).fit(P[normal].astype(np.float64))
    nrm = outline_normals(P[normal].mean(0).astype(np.float64))
    sev = lambda Q: ppca.severity(np.asarray(Q, dtype=np.float64), "mean_abs", nrm)
    y = groups[te] != ref
    auc_true = abnormality_auc(sev(P[te]), y) if y.any() and not y.all() else None
    print(f"DeepSSM 2D on {a.data} outlines: {len(P)} shapes, {a.n_points} points, {a.size}x{a.size} images, "
          f"{len(tr)} train / {len(te)} test, {bl.describe(dev)}")
    print(f"  {'model':12s} {'RMSE px':>9s} {'Eucl. px':>9s} {'severity AUC':>13s} {'train s':>8s}")
    print(f"  {'mean shape':12s} {mean_rmse:9.3f} {mean_eucl:9.3f} {'':>13s}")
    for m in a.models.split(","):
        kind, focal = m.split("_")[0], m.endswith("focal")
        with bl.clock(dev) as c:
            est = DeepSSM(kind=kind, focal=focal, epochs=a.epochs, batch_size=8, patience=10, device=str(dev),
                          progress=False, random_state=a.seed).fit(imgs[tr], P[tr])
        secs = c.seconds
        pred = est.predict(imgs[te]).numpy()
        rmse, eucl = rmse_px(pred, P[te], px)
        auc = abnormality_auc(sev(pred), y) if auc_true is not None else None
        rows[m] = dict(rmse_px=rmse, euclidean_rmse_px=eucl, severity_auc=auc, train_seconds=secs)
        print(f"  {m:12s} {rmse:9.3f} {eucl:9.3f} {auc if auc is None else round(auc, 3)!s:>13s} {secs:8.0f}")
    print(f"  severity AUC ({'/'.join(sorted(set(groups)))}, reference {ref}) from true test points: {auc_true}")
    return dict(data=a.data, n=len(P), n_points=a.n_points, size=a.size, epochs=a.epochs, mean_shape_rmse_px=mean_rmse,
                mean_shape_euclidean_rmse_px=mean_eucl, severity_auc_true=auc_true,
                severity="PPCA(0.9) of the reference group, eq. 15 on the mean shape's outward normals, mean |.|",
                models=rows)


# the variants of --ablation: DeepSSM parameters on top of the common ones
ENCODERS = {"paper (flatten, FC batch norm)": dict(pool_to=None, fc_norm=True),
            "flatten, no FC batch norm": dict(pool_to=None, fc_norm=False),
            "adaptive pool 3, FC batch norm": dict(pool_to=3, fc_norm=True),
            "adaptive pool 3, no FC batch norm (before)": dict(pool_to=3, fc_norm=False)}
PAPER_TL = dict(ae_hidden=(1024,), ae_lr=1e-4, tl_reduction="sum")
TLS = {"paper (2 layers, lr 1e-4 fixed, sums)": PAPER_TL,
       "3 layers (1024, 512)": {**PAPER_TL, "ae_hidden": (1024, 512)},
       "AE lr 1e-3 cosine": {**PAPER_TL, "ae_lr": None},
       "means": {**PAPER_TL, "tl_reduction": "mean"},
       "before (3 layers, lr 1e-3 cosine, means)": dict(ae_hidden=(1024, 512), ae_lr=None, tl_reduction="mean")}


def ablation(a, P, imgs, dev):
    "Held-out eq. 12 RMSE (px) of each variant on `a.folds` folds (fold k: every folds-th shape of a permutation)."
    px, common = a.size / 2, dict(epochs=a.epochs, batch_size=8, patience=None, device=str(dev), progress=False,
                                  channels=(6, 12, 24, 48, 96), fc=(192, 48))
    perm = np.random.default_rng(a.seed).permutation(len(P))
    res = {"encoder (Base-DeepSSM)": {}, "TL-DeepSSM": {}, "autoencoder alone (TL stage 1, validation)": {}}
    mean_rmse = []
    for k in range(a.folds):
        te = np.sort(perm[k::a.folds]); tr = np.setdiff1d(np.arange(len(P)), te)
        mean_rmse.append(rmse_px(np.broadcast_to(P[tr].mean(0), P[te].shape), P[te], px)[0])
        runs = [("encoder (Base-DeepSSM)", n, dict(kind="base", **v)) for n, v in ENCODERS.items()]
        runs += [("TL-DeepSSM", n, dict(kind="tl", latent=16, ae_epochs=a.ae_epochs, **v)) for n, v in TLS.items()]
        for group, name, kw in runs:
            est = DeepSSM(**common, **kw, random_state=a.seed + k).fit(imgs[tr], P[tr])   # 10% of tr validates
            r = rmse_px(est.predict(imgs[te]).numpy(), P[te], px)[0]
            res[group].setdefault(name, []).append(r)
            if kw["kind"] == "tl":
                ae = est.history_["autoencoder"].records[-1]["val_rmse"] * px
                res["autoencoder alone (TL stage 1, validation)"].setdefault(name, []).append(float(ae))
            print(f"  fold {k}: {group:24s} {name:44s} RMSE {r:.3f} px", flush=True)
    out = dict(folds=a.folds, epochs=a.epochs, ae_epochs=a.ae_epochs, size=a.size, n=len(P),
               mean_shape_rmse_px=mean_rmse, note="eq. 12 RMSE in pixels on the held-out fold, per fold")
    for group, rows in res.items():
        print(f"{group} (mean over {a.folds} folds; mean shape {np.mean(mean_rmse):.3f} px):")
        for name, v in rows.items():
            print(f"  {name:48s} {np.mean(v):.3f} px  {np.round(v, 3).tolist()}")
        out[group] = {name: dict(mean=float(np.mean(v)), per_fold=[float(x) for x in v]) for name, v in rows.items()}
    return out


def ablation_ae(a, P):
    "Held-out eq. 12 RMSE (px) of the autoencoder alone: eq. 5 summed or averaged, weight decay 5e-5 or 0."
    from shape_nb.nets import CorrespondenceAE
    px, perm, out = a.size / 2, np.random.default_rng(a.seed).permutation(len(P)), {}
    for k in range(a.folds):
        te = np.sort(perm[k::a.folds]); tr = np.setdiff1d(np.arange(len(P)), te)
        Y, Yv = torch.as_tensor(P[tr]), torch.as_tensor(P[te])
        c = P[tr].mean(0); s = float(np.sqrt(((P[tr] - c) ** 2).mean()))
        for red in ("sum", "mean"):
            for wd in (5e-5, 0.0):
                torch.manual_seed(a.seed + k)
                ae = CorrespondenceAE(P.shape[1], 2, 16, (1024,), center=c, scale=s)
                opt = torch.optim.Adam(ae.parameters(), lr=1e-4, weight_decay=wd)
                g = torch.Generator().manual_seed(a.seed + k)
                for _ in range(a.ae_epochs):
                    for idx in torch.randperm(len(Y), generator=g).split(8):
                        per = ((ae(Y[idx])[0] - Y[idx]) ** 2).sum(-1)
                        loss = per.sum(1).mean() if red == "sum" else per.mean()
                        opt.zero_grad(); loss.backward(); opt.step()
                with torch.no_grad(): rec = ae(Yv)[0]
                r = float(((rec - Yv) ** 2).mean(-2).sqrt().mean(-1).mean() * px)
                v = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in ae.parameters()]).sqrt()
                row = out.setdefault(f"{red}, weight decay {wd:g}", dict(rmse_px=[], median_sqrt_v=[]))
                row["rmse_px"].append(r); row["median_sqrt_v"].append(float(v.median()))
                print(f"  fold {k}: eq. 5 {red:4s}, weight decay {wd:g}: autoencoder RMSE {r:.3f} px; Adam median "
                      f"sqrt(v) {float(v.median()):.1e} (eps 1e-8)", flush=True)
    for name, row in out.items():
        row["mean_rmse_px"] = float(np.mean(row["rmse_px"]))
        print(f"{name:28s} {row['mean_rmse_px']:.3f} px")
    return dict(folds=a.folds, ae_epochs=a.ae_epochs, lr=1e-4, adam_eps=1e-8, latent=16, hidden=[1024],
                variants=out, note="held-out eq. 12 RMSE of the reconstruction, pixels of --size images")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", choices=["cortical", "mice"], default="cortical")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n-points", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--ae-epochs", type=int, default=100, help="--ablation: TL autoencoder epochs")
    ap.add_argument("--folds", type=int, default=3, help="--ablation: folds")
    ap.add_argument("--models", default="base,base_focal,tl,tl_focal")
    ap.add_argument("--ablation", action="store_true", help="the paper's encoder and TL choices against ours")
    ap.add_argument("--ablation-ae", action="store_true", help="eq. 5 sum vs mean under Adam, with weight decay")
    bl.common_args(ap, quick_help="a smoke run: 32x32 images, 2 epochs", threads=2)
    a = ap.parse_args()
    if a.quick: a.size, a.epochs, a.ae_epochs, a.folds = 32, 2, 2, min(a.folds, 2)
    root = bl.require_data(a, "cortical_outlines" if a.data == "cortical" else "mice_vertebrae")
    dev = bl.setup(a)
    P, imgs, groups, ref = load_2d(root, a.data, a.n_points, a.size)
    if a.ablation_ae:
        bl.write_results(a, dev, ablation_ae(a, P), f"deepssm_2d_ablation_ae_{a.data}")
    elif a.ablation:
        bl.write_results(a, dev, ablation(a, P, imgs, dev), f"deepssm_2d_ablation_{a.data}")
    else:
        bl.write_results(a, dev, models(a, P, imgs, groups, ref, dev), f"deepssm_2d_{a.data}")


if __name__ == "__main__":
    main()
