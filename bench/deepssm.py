"""DeepSSM (paper 2) on the femurs: accuracy, augmentation, inference time, severity AUC. Prints a table, writes JSON.

    python bench/deepssm.py [--n-subjects 160] [--spacing 4] [--n-points 512] [--n-augment 300] [--epochs 12]
                            [--width 0.5] [--models base,base_focal,tl,tl_focal] [--threads 1] [--out bench/results]
    python bench/deepssm.py --quick        # a tiny smoke run
    python bench/deepssm.py --merge a.json b.json ...   # one table from runs of different --models

Shapes are real (../shared/data/femurs: 324 femur surfaces of a published shape model, rigidly aligned on the
proximal femur; a cam-like lesion added to 30% of them); images are synthetic CT-like volumes made from them
(shape_nb.deepssm.femur_dataset). Held-out test subjects are compared with the mean-shape baseline on RMSE (eq. 12)
and surface distance (mm); augmentation throughput and plausibility, CPU inference time per volume, and the severity
AUC of a PPCA Mahalanobis score from predicted vs true correspondences are reported.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from shape_nb.data import split_indices
from shape_nb.deepssm import DeepSSM, augment_pairs, femur_dataset
from shape_nb.metrics import correspondence_rmse, mesh_from_points, surface_distance
from shape_nb.nets import DeepSSMEncoder
from shape_nb.shape import PPCA, group_difference

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


def severity_auc(ppca, shapes, labels):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, ppca.severity(shapes, reduce="max")))


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


def inference_ms(model_or_est, vol, repeats):
    "Median wall time (ms) of one volume through the model (batch 1), after a warm-up."
    times = []
    with torch.no_grad():
        for r in range(repeats + 1):
            t = time.perf_counter()
            model_or_est(vol)
            if r: times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def run(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = dict(device="cpu", threads=a.threads, torch=torch.__version__, machine=platform.machine(),
               note="CPU at reduced scale (see 'scale'); shapes real, images synthetic CT-like", scale={})
    t = time.perf_counter()
    data = femur_dataset(a.n_subjects, spacing=a.spacing, n_points=a.n_points, random_state=a.seed, progress=not a.no_progress)
    res["data_seconds"] = time.perf_counter() - t
    n = len(data["points"])
    tr, va, te = split_indices(n, (a.train, a.val, 1 - a.train - a.val), seed=a.seed)
    X, P, lab = data["images"], data["points"], data["labels"]
    shape = tuple(X.shape[2:])
    res["scale"] = dict(n_subjects=n, train=len(tr), val=len(va), test=len(te), spacing_mm=a.spacing, volume=shape,
                        n_points=a.n_points, of_vertices=len(data["vertices"][0]), n_augment=a.n_augment,
                        epochs=a.epochs, ae_epochs=a.ae_epochs, patience=a.patience, batch_size=a.batch_size,
                        channels=scaled((12, 24, 48, 96, 192), a.width), fc=scaled((384, 96), a.width),
                        kernel_size=a.kernel, lesion_fraction=float(lab.mean()), test_lesions=int(lab[te].sum()),
                        base_pca_modes=a.pca_modes, augmentation_modes=a.aug_modes, augmentation_bandwidth=a.aug_bandwidth)
    print(f"femurs: {n} subjects ({len(tr)} train / {len(va)} val / {len(te)} test, {int(lab[te].sum())} test lesions), "
          f"{a.spacing} mm volumes {shape}, {a.n_points} of {len(data['vertices'][0])} vertices; data {res['data_seconds']:.1f} s")

    # augmentation: throughput and plausibility, with the paper's setting (all N - 1 modes) and the one used here
    from scipy.stats import ks_2samp
    ppca_all = PPCA(0.95).fit(P[tr])

    def augment(n_components, label, bandwidth=None):
        from shape_nb.shape import KDESampler
        t = time.perf_counter()
        aug = augment_pairs(X[tr], P[tr], a.n_augment, spacing=data["spacing"], origin=data["origin"],
                            n_components=n_components, n_control=a.n_control, random_state=a.seed,
                            sampler=KDESampler(bandwidth, random_state=a.seed), progress=not a.no_progress)
        secs = time.perf_counter() - t
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
              f"{a.n_control} TPS control points), {rep['n_modes']} modes, bandwidth {rep['bandwidth']:.1f}; score std aug/real "
              f"(first {k} modes) {np.round(rep['std_ratio_first5'], 2).tolist()} vs KDE-expected "
              f"{np.round(rep['std_ratio_expected_first5'], 2).tolist()}, last mode {rep['std_ratio_last']:.1f}; KS p "
              f"{np.round(ks, 3).tolist()}; label residual {rep['residual_mm_mean']:.2f} mm (p95 {rep['residual_mm_p95']:.2f}); "
              f"median PPCA Mahalanobis real {rep['mahalanobis_real_median']:.1f}, augmented {rep['mahalanobis_aug_median']:.1f}",
              flush=True)
        return aug, rep

    res["augmentation_paper"] = augment(None, "all N-1 modes (paper)")[1]
    aug, res["augmentation"] = augment(a.aug_modes, f"n_components={a.aug_modes:g}"
                                       + (f", bandwidth {a.aug_bandwidth:g}" if a.aug_bandwidth else "") + " (used for training)",
                                       a.aug_bandwidth)

    # references: the mean shape, the template mesh, a PPCA of the normal training shapes
    mean_shape = P[tr].mean(0)
    template, template_pts = data["vertices"][tr].mean(0), mean_shape
    ppca = PPCA(a.ppca_modes).fit(P[tr][lab[tr] == 0])
    res["scale"]["severity_ppca_modes"] = int(ppca.n_components_)
    preds = dict(test_index=te, labels=lab[te], true=P[te])
    true_auc = severity_auc(ppca, P[te], lab[te])
    near_true, near_idx = lesion_stats(P[te], data, te, a.bump_radius)
    lesion_pts = np.linalg.norm(mean_shape - mean_shape[near_idx], axis=1) < a.bump_radius
    rows = {}

    def evaluate(name, pred, extra):
        r = correspondence_rmse(pred, P[te])
        sd_mean, sd_h = surface_errors(pred, data, te, template, template_pts, a.surface_samples)
        les = lab[te] == 1
        lr = correspondence_rmse(pred[les][:, lesion_pts], P[te][les][:, lesion_pts])
        gd, _ = lesion_stats(pred, data, te, a.bump_radius)
        row = dict(rmse_mm=float(r.mean()), rmse_mm_std=float(r.std()), surface_mean_mm=float(sd_mean.mean()),
                   hausdorff_mm=float(sd_h.mean()), lesion_rmse_mm=float(lr.mean()),
                   severity_auc=severity_auc(ppca, pred, lab[te]), group_difference=gd, **extra)
        rows[name] = row
        print(f"  {name:12s} RMSE {row['rmse_mm']:.2f} +- {row['rmse_mm_std']:.2f} mm, surface {row['surface_mean_mm']:.2f} mm "
              f"(Hausdorff {row['hausdorff_mm']:.2f}), lesion RMSE {row['lesion_rmse_mm']:.2f} mm, AUC {row['severity_auc']:.3f}, "
              f"group diff at lesion {gd['diff_at_lesion_mm']:.2f} mm", flush=True)

    evaluate("mean_shape", np.broadcast_to(mean_shape, P[te].shape), {})
    params = dict(n_components=a.pca_modes, channels=scaled((12, 24, 48, 96, 192), a.width), fc=scaled((384, 96), a.width), kernel_size=a.kernel,
                  epochs=a.epochs, ae_epochs=a.ae_epochs, patience=a.patience, batch_size=a.batch_size, lr=a.lr,
                  device="cpu", random_state=a.seed, progress=not a.no_progress)
    for name in a.models:
        t = time.perf_counter()
        est = DeepSSM(**MODELS[name], **params).fit(X[tr], P[tr], validation=(X[va], P[va]),
                                                     extra=(torch.as_tensor(np.asarray(aug.images)), aug.points))
        train_s = time.perf_counter() - t
        pred = est.predict(X[te]).double().numpy()
        preds[name] = pred
        ms = inference_ms(lambda v: est.predict(v), X[te][:1], a.repeats)
        extra = dict(train_seconds=train_s, inference_ms_per_volume=ms,
                     epochs_run={k: len(h.records) for k, h in est.history_.items()},
                     best_epoch={k: h.best_epoch for k, h in est.history_.items()},
                     focal_c_mm=est.focal_c_, latent_c=est.latent_c_,
                     pca_modes=int(est.pca_.n_components_) if est.kind == "base" else None)
        if est.kind == "tl":   # latent swim from the mean code of the normal test images to that of the lesion ones
            path = est.swim(X[te][lab[te] == 0], X[te][lab[te] == 1], 5).double().numpy()
            extra["swim_lesion_displacement_mm"] = np.linalg.norm(path[:, near_idx] - path[0, near_idx], axis=1).tolist()
            extra["true_group_mean_difference_at_lesion_mm"] = near_true["diff_at_lesion_mm"]
        evaluate(name, pred, extra)
        print(f"    trained in {train_s:.0f} s, epochs {extra['epochs_run']}, inference {ms:.1f} ms/volume"
              + (f", swim lesion displacement {np.round(extra['swim_lesion_displacement_mm'], 2).tolist()} mm"
                 if "swim_lesion_displacement_mm" in extra else ""), flush=True)
    # inference at the paper's full width (untrained weights; time only)
    full = DeepSSMEncoder(64, 3).eval()
    res["inference_ms_full_width_encoder"] = inference_ms(full, X[te][:1], a.repeats)
    res["severity_auc_true_correspondences"] = true_auc
    res["group_difference_true"] = near_true
    res["results"] = rows
    res["_predictions"] = preds
    return res


def table(res):
    s = res["scale"]
    lines = [f"DeepSSM on femurs (CPU, {res['threads']} thread(s), reduced scale: {s['train']} train + {s['n_augment']} augmented, "
             f"{s['test']} test subjects, {s['spacing_mm']} mm volumes {tuple(s['volume'])}, {s['n_points']} points, "
             f"encoder channels {tuple(s['channels'])}, <= {s['epochs']} epochs)",
             f"{'model':12s} {'RMSE mm':>12s} {'surface mm':>10s} {'Hausdorff':>9s} {'lesion RMSE':>11s} {'AUC':>6s} "
             f"{'train s':>8s} {'ms/vol':>7s}"]
    for k, r in res["results"].items():
        lines.append(f"{k:12s} {r['rmse_mm']:6.2f} +-{r['rmse_mm_std']:4.2f} {r['surface_mean_mm']:10.2f} {r['hausdorff_mm']:9.2f} "
                     f"{r['lesion_rmse_mm']:11.2f} {r['severity_auc']:6.3f} {r.get('train_seconds', float('nan')):8.0f} "
                     f"{r.get('inference_ms_per_volume', float('nan')):7.1f}")
    lines.append(f"severity AUC with true correspondences: {res['severity_auc_true_correspondences']:.3f}; "
                 f"full-width (paper) encoder inference {res['inference_ms_full_width_encoder']:.1f} ms/volume")
    for key in ("augmentation_paper", "augmentation"):
        A = res[key]
        lines.append(f"augmentation, {A['modes']}: {A['samples_per_second']:.1f} pairs/s; score std ratio aug/real "
                     f"{np.round(A['std_ratio_first5'], 2).tolist()} (KDE-expected {np.round(A['std_ratio_expected_first5'], 2).tolist()}, "
                     f"last mode {A['std_ratio_last']:.1f}), label residual {A['residual_mm_mean']:.2f} mm, median Mahalanobis "
                     f"real {A['mahalanobis_real_median']:.1f} / augmented {A['mahalanobis_aug_median']:.1f}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-subjects", type=int, default=160)
    ap.add_argument("--spacing", type=float, default=4.0)
    ap.add_argument("--n-points", type=int, default=512)
    ap.add_argument("--n-augment", type=int, default=300)
    ap.add_argument("--n-control", type=int, default=128)
    ap.add_argument("--aug-modes", type=float, default=0.99,
                    help="PCA modes for the augmentation's KDE: variance fraction (< 1) or count (>= 1)")
    ap.add_argument("--aug-bandwidth", type=float, default=None,
                    help="KDE bandwidth of the training augmentation (default: mean nearest-neighbour distance)")
    ap.add_argument("--pca-modes", type=float, default=0.99,
                    help="Base-DeepSSM PCA: variance fraction (< 1) or count (>= 1)")
    ap.add_argument("--ppca-modes", type=float, default=0.9999,
                    help="severity PPCA (fitted on the normal training shapes): variance fraction (< 1) or count (>= 1)")
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
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--tag", default="")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--merge", nargs="+", help="JSON files of runs with different --models: print one table")
    a = ap.parse_args()
    if a.merge:
        runs = [json.loads(Path(f).read_text()) for f in a.merge]
        res = runs[0]
        for r in runs[1:]: res["results"].update({k: v for k, v in r["results"].items() if k != "mean_shape"})
        print(table(res))
        return
    a.models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in a.models if m not in MODELS]
    if bad: ap.error(f"unknown model(s) {bad}; choose from {sorted(MODELS)}")
    if a.quick:
        a.n_subjects, a.spacing, a.n_points, a.n_augment, a.epochs, a.ae_epochs = 40, 6.0, 128, 16, 2, 4
        a.width, a.kernel, a.surface_samples, a.repeats = 0.25, 3, 1000, 2
    if a.aug_modes >= 1: a.aug_modes = int(a.aug_modes)
    if a.pca_modes >= 1: a.pca_modes = int(a.pca_modes)
    if a.ppca_modes >= 1: a.ppca_modes = int(a.ppca_modes)
    res = run(a)
    print()
    print(table(res))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    name = f"deepssm_cpu{'_quick' if a.quick else ''}{('_' + a.tag) if a.tag else ''}.json"
    preds = res.pop("_predictions")
    np.savez_compressed(out / name.replace(".json", "_predictions.npz"), **preds)
    (out / name).write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
