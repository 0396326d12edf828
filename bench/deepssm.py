"""DeepSSM (paper 2) on the femurs: accuracy, augmentation, inference time, severity AUC. Prints a table, writes JSON.

    python bench/deepssm.py [--n-subjects 160] [--spacing 4] [--n-points 512] [--n-augment 300] [--epochs 12]
                            [--width 0.5] [--models base,base_focal,tl,tl_focal] [--threads 1] [--out bench/results]
    python bench/deepssm.py --device cuda --width 1   # on a GPU, with the paper's encoder width
    python bench/deepssm.py --quick --device cpu      # a tiny smoke run
    python bench/deepssm.py --merge a.json b.json ... # one table from runs of different --models
    python bench/deepssm.py --ablation --threads 1    # the paper's encoder (flatten, FC batch norm) against ours

Shapes are real (../shared/data/femurs: 324 femur surfaces of a published shape model, rigidly aligned on the
proximal femur; a cam-like lesion added to 30% of them); images are synthetic CT-like volumes made from them
(shape_nb.deepssm.femur_dataset). Held-out test subjects are compared with the mean-shape baseline on RMSE (eq. 12,
the mean of the per-axis RMSEs; the Euclidean RMS point distance beside it) and surface distance (mm); augmentation
throughput and plausibility, inference time per volume, and the severity AUC of a PPCA score (eq. 15: point-wise
Mahalanobis values projected on the outward normals of the training mean mesh, the largest over the points) from
predicted vs true correspondences are reported. --ablation trains Base-DeepSSM with the four encoder heads
(flatten or adaptive pool, with or without batch norm after the fully connected layers) on --folds folds and writes
deepssm_ablation_<device>[_quick].json. Common options
(bench/benchlib.py): --device, --threads (default 1), --quick, --out bench/results, --seed 0. JSON:
bench/results/deepssm[_<tag>]_<device>[_quick].json (+ _predictions.npz).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from shape_nb.data import split_indices
from shape_nb.deepssm import DeepSSM, augment_pairs, femur_dataset, vertex_normals
from shape_nb.metrics import correspondence_rmse, mesh_from_points, surface_distance
from shape_nb.nets import DeepSSMEncoder
from shape_nb.shape import PPCA, group_difference

import benchlib as bl

MODELS = {"base": dict(kind="base"), "base_focal": dict(kind="base", focal=True),
          "tl": dict(kind="tl"), "tl_focal": dict(kind="tl", focal=True)}


def scaled(channels, width):
    return tuple(max(2, int(round(c * width))) for c in channels)


def surface_errors(pred, data, test, template, template_pts, n_samples):
    "Symmetric mean and Hausdorff surface distance (mm) of each test subject's proximal femur."
    verts = mesh_from_points(pred, template_pts, template)
    out = [surface_distance(v, data["proximal_faces"], data["vertices"][i], n_samples=n_samples, random_state=0)
           for v, i in zip(verts, test)]
    return np.array([o.mean for o in out]), np.array([o.hausdorff for o in out])


def severity_auc(ppca, shapes, labels, normals):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, ppca.severity(shapes, "max", normals)))


def lesion_stats(points, data, test, radius):
    "Group difference at the lesion: the mean-shape point nearest the lesion centre, and the max elsewhere."
    lab = data["labels"][test]
    gd = group_difference(points[lab == 0], points[lab == 1])
    centre = data["vertices"][test][:, data["bump_index"]].mean(0)
    dist = np.linalg.norm(points.mean(0) - centre, axis=1)
    near = int(dist.argmin())
    return dict(diff_at_lesion_mm=float(gd.magnitude[near]), max_diff_mm=float(gd.magnitude.max()),
                argmax_dist_to_lesion_mm=float(dist[gd.magnitude.argmax()]),
                max_diff_beyond_2R_mm=float(gd.magnitude[dist > 2 * radius].max())), near


def inference_ms(model_or_est, vol, repeats, dev):
    "Median wall time (ms) of one volume through the model (batch 1), after a warm-up."
    with torch.no_grad():
        return 1e3 * bl.median(bl.timed(lambda: model_or_est(vol), dev, warmup=1, repeats=repeats))


def run(a, dev):
    res = dict(note="reduced scale (see 'scale'); shapes real, images synthetic CT-like", scale={})
    with bl.clock("cpu") as c:
        data = femur_dataset(a.n_subjects, spacing=a.spacing, n_points=a.n_points, random_state=a.seed,
                             progress=not a.no_progress)
    res["data_seconds"] = c.seconds
    n = len(data["points"])
    tr, va, te = split_indices(n, (a.train, a.val, 1 - a.train - a.val), seed=a.seed)
    X, P, lab = data["images"], data["points"], data["labels"]
    shape = tuple(X.shape[2:])
    res["scale"] = dict(n_subjects=n, train=len(tr), val=len(va), test=len(te), spacing_mm=a.spacing, volume=shape,
                        n_points=a.n_points, of_vertices=len(data["vertices"][0]), n_augment=a.n_augment,
                        epochs=a.epochs, ae_epochs=a.ae_epochs, patience=a.patience, batch_size=a.batch_size,
                        channels=scaled((12, 24, 48, 96, 192), a.width), fc=scaled((384, 96), a.width),
                        kernel_size=a.kernel, lesion_fraction=float(lab.mean()), test_lesions=int(lab[te].sum()),
                        base_pca_modes=a.pca_modes, augmentation_modes=a.aug_modes,
                        augmentation_bandwidth=a.aug_bandwidth)
    print(f"femurs: {n} subjects ({len(tr)} train / {len(va)} val / {len(te)} test, {int(lab[te].sum())} test "
          f"lesions), {a.spacing} mm volumes {shape}, {a.n_points} of {len(data['vertices'][0])} vertices; data "
          f"{res['data_seconds']:.1f} s")

    # augmentation: throughput and plausibility, with the paper's setting (all N - 1 modes) and the one used here
    from scipy.stats import ks_2samp
    ppca_all = PPCA(0.95).fit(P[tr])

    def augment(n_components, label, noise, bandwidth=None):
        from shape_nb.shape import KDESampler
        sampler = None if bandwidth is None else KDESampler(bandwidth, random_state=a.seed)
        with bl.clock(dev) as c:
            aug = augment_pairs(X[tr], P[tr], a.n_augment, spacing=data["spacing"], origin=data["origin"],
                                n_components=n_components, n_control=a.n_control, random_state=a.seed, device=dev,
                                sampler=sampler, noise=noise, progress=not a.no_progress)
        secs = c.seconds
        real_s = aug.pca.transform(P[tr])
        sd_real, sd_aug = real_s.std(0, ddof=1), aug.scores.std(0, ddof=1)
        lam = aug.pca.explained_variance_
        expected = np.sqrt((lam * (len(tr) - 1) / len(tr) + aug.sampler.bandwidth_ ** 2) / lam)
        k = min(5, len(lam))
        ks = [float(ks_2samp(real_s[:, j], aug.scores[:, j]).pvalue) for j in range(k)]
        rep = dict(modes=label, samples=a.n_augment, seconds=secs, samples_per_second=a.n_augment / secs,
                   n_modes=int(aug.pca.n_components_), bandwidth=float(aug.sampler.bandwidth_),
                   std_ratio_first5=(sd_aug / sd_real)[:k].tolist(), std_ratio_expected_first5=expected[:k].tolist(),
                   std_ratio_last=float(sd_aug[-1] / sd_real[-1]), ks_pvalue_first5=ks,
                   residual_mm_mean=float(aug.residual.mean()), residual_mm_p95=float(np.percentile(aug.residual, 95)),
                   n_control=a.n_control, mahalanobis_real_median=float(np.median(ppca_all.mahalanobis(P[tr]))),
                   mahalanobis_aug_median=float(np.median(ppca_all.mahalanobis(aug.points))))
        print(f"augmentation ({label}): {a.n_augment} pairs in {secs:.1f} s ({rep['samples_per_second']:.1f} pairs/s, "
              f"{a.n_control} TPS control points), {rep['n_modes']} modes, bandwidth {rep['bandwidth']:.1f}; score std "
              f"aug/real (first {k} modes) {np.round(rep['std_ratio_first5'], 2).tolist()} vs KDE-expected "
              f"{np.round(rep['std_ratio_expected_first5'], 2).tolist()}, last mode {rep['std_ratio_last']:.1f}; KS p "
              f"{np.round(ks, 3).tolist()}; label residual {rep['residual_mm_mean']:.2f} mm (p95 "
              f"{rep['residual_mm_p95']:.2f}); median PPCA Mahalanobis real {rep['mahalanobis_real_median']:.1f}, "
              f"augmented {rep['mahalanobis_aug_median']:.1f}", flush=True)
        return aug, rep

    res["augmentation_paper"] = augment(None, "all N-1 modes, std = mean NN distance (paper)", "paper")[1]
    used = (f"n_components={a.aug_modes}, noise={a.aug_noise}"
            + (f", bandwidth {a.aug_bandwidth:g}" if a.aug_bandwidth else "") + " (used for training)")
    aug, res["augmentation"] = augment(a.aug_modes, used, a.aug_noise, a.aug_bandwidth)

    # references: the mean shape, the template mesh, a PPCA of the normal training shapes
    mean_shape = P[tr].mean(0)
    template, template_pts = data["vertices"][tr].mean(0), mean_shape
    ppca = PPCA(a.ppca_modes).fit(P[tr][lab[tr] == 0])
    res["scale"]["severity_ppca_modes"] = int(ppca.n_components_)
    normals = vertex_normals(template, data["faces"])[data["point_index"]]     # outward, on the training mean mesh
    preds = dict(test_index=te, labels=lab[te], true=P[te])
    true_auc = severity_auc(ppca, P[te], lab[te], normals)
    near_true, near_idx = lesion_stats(P[te], data, te, a.bump_radius)
    lesion_pts = np.linalg.norm(mean_shape - mean_shape[near_idx], axis=1) < a.bump_radius
    rows = {}

    def evaluate(name, pred, extra):
        r, re = correspondence_rmse(pred, P[te]), correspondence_rmse(pred, P[te], kind="euclidean")
        sd_mean, sd_h = surface_errors(pred, data, te, template, template_pts, a.surface_samples)
        les = lab[te] == 1
        lr = correspondence_rmse(pred[les][:, lesion_pts], P[te][les][:, lesion_pts])
        gd, _ = lesion_stats(pred, data, te, a.bump_radius)
        row = dict(rmse_mm=float(r.mean()), rmse_mm_std=float(r.std()), euclidean_rmse_mm=float(re.mean()),
                   surface_mean_mm=float(sd_mean.mean()), hausdorff_mm=float(sd_h.mean()),
                   lesion_rmse_mm=float(lr.mean()), severity_auc=severity_auc(ppca, pred, lab[te], normals),
                   group_difference=gd, **extra)
        rows[name] = row
        print(f"  {name:12s} RMSE {row['rmse_mm']:.2f} +- {row['rmse_mm_std']:.2f} mm (Euclidean "
              f"{row['euclidean_rmse_mm']:.2f}), surface "
              f"{row['surface_mean_mm']:.2f} mm (Hausdorff {row['hausdorff_mm']:.2f}), lesion RMSE "
              f"{row['lesion_rmse_mm']:.2f} mm, AUC {row['severity_auc']:.3f}, group diff at lesion "
              f"{gd['diff_at_lesion_mm']:.2f} mm", flush=True)

    evaluate("mean_shape", np.broadcast_to(mean_shape, P[te].shape), {})
    params = dict(n_components=a.pca_modes, channels=scaled((12, 24, 48, 96, 192), a.width),
                  fc=scaled((384, 96), a.width), kernel_size=a.kernel, epochs=a.epochs, ae_epochs=a.ae_epochs,
                  patience=a.patience, batch_size=a.batch_size, lr=a.lr, device=str(dev), random_state=a.seed,
                  progress=not a.no_progress)
    for name in a.models:
        with bl.clock(dev) as c:
            est = DeepSSM(**MODELS[name], **params).fit(X[tr], P[tr], validation=(X[va], P[va]),
                                                         extra=(torch.as_tensor(np.asarray(aug.images)), aug.points))
        train_s = c.seconds
        pred = est.predict(X[te]).double().numpy()
        preds[name] = pred
        ms = inference_ms(est.predict, X[te][:1], a.repeats, dev)
        extra = dict(train_seconds=train_s, inference_ms_per_volume=ms,
                     epochs_run={k: len(h.records) for k, h in est.history_.items()},
                     best_epoch={k: h.best_epoch for k, h in est.history_.items()},
                     focal_c_mm=est.focal_c_, latent_c=est.latent_c_,
                     pca_modes=int(est.pca_.n_components_) if est.kind == "base" else None)
        if est.kind == "tl":   # latent swim from the mean code of the normal test images to that of the lesion ones
            path = est.swim(X[te][lab[te] == 0], X[te][lab[te] == 1], 5).double().numpy()
            shift = np.linalg.norm(path[:, near_idx] - path[0, near_idx], axis=1)
            extra["swim_lesion_displacement_mm"] = shift.tolist()
            extra["true_group_mean_difference_at_lesion_mm"] = near_true["diff_at_lesion_mm"]
        evaluate(name, pred, extra)
        print(f"    trained in {train_s:.0f} s, epochs {extra['epochs_run']}, inference {ms:.1f} ms/volume"
              + (f", swim lesion displacement {np.round(extra['swim_lesion_displacement_mm'], 2).tolist()} mm"
                 if "swim_lesion_displacement_mm" in extra else ""), flush=True)
    # inference at the paper's full width (untrained weights; time only)
    full = DeepSSMEncoder(64, 3).eval().to(dev)
    res["inference_ms_full_width_encoder"] = inference_ms(full, X[te][:1].to(dev), a.repeats, dev)
    res["severity_auc_true_correspondences"] = true_auc
    res["group_difference_true"] = near_true
    res["results"] = rows
    res["_predictions"] = preds
    return res


ENCODERS = {"paper (flatten, FC batch norm)": dict(pool_to=None, fc_norm=True),
            "flatten, no FC batch norm": dict(pool_to=None, fc_norm=False),
            "adaptive pool 3, FC batch norm": dict(pool_to=3, fc_norm=True),
            "adaptive pool 3, no FC batch norm (before)": dict(pool_to=3, fc_norm=False)}


def ablation(a, dev):
    "Held-out eq. 12 RMSE (mm) of Base-DeepSSM with each encoder head, on `a.folds` folds of the femurs."
    data = femur_dataset(a.n_subjects, spacing=a.spacing, n_points=a.n_points, random_state=a.seed,
                         progress=not a.no_progress)
    X, P = data["images"], data["points"]
    perm = np.random.default_rng(a.seed).permutation(len(P))
    common = dict(n_components=a.pca_modes, channels=scaled((12, 24, 48, 96, 192), a.width),
                  fc=scaled((384, 96), a.width), kernel_size=a.kernel, epochs=a.epochs, patience=None,
                  batch_size=a.batch_size, lr=a.lr, device=str(dev), progress=False)
    rows, mean_shape = {}, []
    for k in range(a.folds):
        te = np.sort(perm[k::a.folds]); tr = np.setdiff1d(np.arange(len(P)), te)
        mean_shape.append(float(correspondence_rmse(np.broadcast_to(P[tr].mean(0), P[te].shape), P[te]).mean()))
        for name, kw in ENCODERS.items():
            est = DeepSSM(**common, **kw, random_state=a.seed + k).fit(X[tr], P[tr])   # 10% of tr validates
            r = float(correspondence_rmse(est.predict(X[te]).double().numpy(), P[te]).mean())
            rows.setdefault(name, []).append(r)
            print(f"  fold {k}: {name:44s} RMSE {r:.3f} mm (mean shape {mean_shape[-1]:.3f})", flush=True)
    print(f"Base-DeepSSM on femurs, {a.folds} folds, {X.shape[2:]} volumes, {a.epochs} epochs:")
    for name, v in rows.items(): print(f"  {name:44s} {np.mean(v):.3f} mm  {np.round(v, 3).tolist()}")
    return dict(folds=a.folds, n=len(P), volume=list(X.shape[2:]), mean_shape_rmse_mm=mean_shape,
                encoder={n: dict(mean=float(np.mean(v)), per_fold=v) for n, v in rows.items()},
                note="eq. 12 RMSE (mm) on the held-out fold, per fold")


def table(res, settings, device):
    "The printed table of one run (`res`: its results; `settings`: its options; `device`: `bl.describe` line)."
    s = res["scale"]
    where = "CPU" if device.startswith("cpu") else device.split(",")[0]
    lines = [f"DeepSSM on femurs ({where}, {settings['threads']} thread(s), reduced scale: {s['train']} train + "
             f"{s['n_augment']} augmented, {s['test']} test subjects, {s['spacing_mm']} mm volumes "
             f"{tuple(s['volume'])}, {s['n_points']} points, encoder channels {tuple(s['channels'])}, "
             f"<= {s['epochs']} epochs)",
             f"{'model':12s} {'RMSE mm':>12s} {'Eucl. mm':>8s} {'surface mm':>10s} {'Hausdorff':>9s} "
             f"{'lesion RMSE':>11s} {'AUC':>6s} {'train s':>8s} {'ms/vol':>7s}"]
    for k, r in res["results"].items():
        lines.append(f"{k:12s} {r['rmse_mm']:6.2f} +-{r['rmse_mm_std']:4.2f} {r.get('euclidean_rmse_mm', np.nan):8.2f} "
                     f"{r['surface_mean_mm']:10.2f} "
                     f"{r['hausdorff_mm']:9.2f} {r['lesion_rmse_mm']:11.2f} {r['severity_auc']:6.3f} "
                     f"{r.get('train_seconds', float('nan')):8.0f} "
                     f"{r.get('inference_ms_per_volume', float('nan')):7.1f}")
    lines.append(f"severity AUC with true correspondences: {res['severity_auc_true_correspondences']:.3f}; "
                 f"full-width (paper) encoder inference {res['inference_ms_full_width_encoder']:.1f} ms/volume")
    for key in ("augmentation_paper", "augmentation"):
        A = res[key]
        lines.append(f"augmentation, {A['modes']}: {A['samples_per_second']:.1f} pairs/s; score std ratio aug/real "
                     f"{np.round(A['std_ratio_first5'], 2).tolist()} (KDE-expected "
                     f"{np.round(A['std_ratio_expected_first5'], 2).tolist()}, last mode {A['std_ratio_last']:.1f}), "
                     f"label residual {A['residual_mm_mean']:.2f} mm, median Mahalanobis real "
                     f"{A['mahalanobis_real_median']:.1f} / augmented {A['mahalanobis_aug_median']:.1f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-subjects", type=int, default=160)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--n-points", type=int, default=512)
    ap.add_argument("--n-augment", type=int, default=300)
    ap.add_argument("--n-control", type=int, default=128)
    ap.add_argument("--aug-modes", type=float, default=None,
                    help="PCA modes for the augmentation's KDE: variance fraction (< 1) or count (>= 1); default all")
    ap.add_argument("--aug-noise", default="radius", choices=["paper", "radius"], help="augment_pairs noise")
    ap.add_argument("--aug-bandwidth", type=float, default=None,
                    help="KDE bandwidth of the training augmentation (default: mean nearest-neighbour distance)")
    ap.add_argument("--pca-modes", type=float, default=0.99,
                    help="Base-DeepSSM PCA: variance fraction (< 1) or count (>= 1)")
    ap.add_argument("--ppca-modes", type=float, default=0.9999,
                    help="severity PPCA (on the normal training shapes): variance fraction (< 1) or count (>= 1)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--ae-epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=float, default=0.5, help="encoder channel multiplier (1 = the paper's 12..192)")
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--train", type=float, default=0.6)
    ap.add_argument("--val", type=float, default=0.15)
    ap.add_argument("--bump-radius", type=float, default=15.0)
    ap.add_argument("--models", default="base,base_focal,tl,tl_focal")
    ap.add_argument("--surface-samples", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--tag", default="", help="name suffix of the JSON file")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--merge", nargs="+", help="JSON files of runs with different --models: print one table")
    ap.add_argument("--ablation", action="store_true", help="the four encoder heads, Base-DeepSSM, --folds folds")
    ap.add_argument("--folds", type=int, default=3)
    bl.common_args(ap, quick_help="tiny smoke run: 40 subjects at 6 mm, 128 points, 2 epochs, quarter-width encoder",
                   threads=1)
    a = ap.parse_args()
    if a.merge:
        runs = [json.loads(Path(f).read_text()) for f in a.merge]
        res = runs[0]["results"]
        for r in runs[1:]:
            res["results"].update({k: v for k, v in r["results"]["results"].items() if k != "mean_shape"})
        print(table(res, runs[0]["settings"], runs[0]["device"]))
        return
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad: ap.error(f"unknown model(s) {bad}; choose from {sorted(MODELS)}")
    if a.quick:
        a.n_subjects, a.spacing, a.n_points, a.n_augment, a.epochs, a.ae_epochs = 40, 6.0, 128, 16, 2, 4
        a.width, a.kernel, a.surface_samples, a.repeats = 0.25, 3, 1000, 2
    if a.aug_modes is not None and a.aug_modes >= 1: a.aug_modes = int(a.aug_modes)
    if a.pca_modes >= 1: a.pca_modes = int(a.pca_modes)
    if a.ppca_modes >= 1: a.ppca_modes = int(a.ppca_modes)
    bl.require_data(a, "femurs")
    dev = bl.setup(a)
    if a.ablation:
        bl.write_results(a, dev, ablation(a, dev), "deepssm_ablation")
        return
    res = run(a, dev)
    print()
    print(table(res, vars(a), bl.describe(dev)))
    preds = res.pop("_predictions")
    f = bl.write_results(a, dev, res, "deepssm" + (f"_{a.tag}" if a.tag else ""))
    np.savez_compressed(f.with_name(f.stem + "_predictions.npz"), **preds)


if __name__ == "__main__":
    main()
