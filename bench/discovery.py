"""Landmark discovery (paper 1) experiments: print a table and write JSON.

    python bench/discovery.py phantoms [--size 128] [--n-train 256] [--n-test 32] [--k 26] [--epochs 40]
    python bench/discovery.py mice     [--size 128] [--k 24] [--epochs 60]
    python bench/discovery.py cells    [--size 96]  [--k 24] [--epochs 40]
    python bench/discovery.py ct3d     [--size 64]  [--k 20] [--epochs 40]
    python bench/discovery.py phantoms --device cuda   # full size on a GPU (any experiment)
    python bench/discovery.py phantoms --quick --device cpu   # a smoke run (seconds)
    python bench/discovery.py phantoms --budget paper [--threads 1] [--seed S]   # the paper's phantom budget

`--budget paper` (phantoms): 64 x 64, 64 training phantoms (8 validation, 16 held out), K = 26 + 4 fixed corners,
lambda = 1e-4 on the *sum* over pixels of the squared whitened difference (the paper's convention; the
per-pixel-mean equivalent is 1e-4 / 4096 = 2.44e-8), 20 epochs over all ordered training pairs; held-out relative
error ||I_T - I_R||^2 / ||I_T||^2 and per-pixel MSE of the [0, 1] images, before / after, beside the oracle (the
true control points) and beside landmarks optimised per pair (what K landmarks and the TPS can reach at all).
JSON: bench/results/discovery_paper_budget_<device>.json.

Common options (bench/benchlib.py): --device auto|cpu|cuda, --threads, --quick (tiny smoke run), --out
bench/results, --seed 0. Real data is read from ../shared/data (or $SHAPE_NB_DATA).
JSON: bench/results/discovery_<experiment>_<device>[_quick].json.
"""
import argparse

import numpy as np
import torch

from shape_nb.discovery import LandmarkDiscovery
from shape_nb.data import all_pairs

import benchlib as bl


def nearest_distance(points, landmarks):
    "For each image: distance from every point (n, P, d) to its nearest landmark (n, K, d) -> (n, P)."
    return torch.cdist(points.double(), landmarks.double()).amin(-1)


def fit_timed(est, train, dev):
    "Seconds of `est.fit(train)`."
    with bl.clock(dev) as c: est.fit(train)
    return c.seconds


def run_phantoms(a, dev):
    from shape_nb.phantoms import tps_phantoms
    n = a.n_train + a.n_test
    imgs, cps = tps_phantoms(n, a.size, sigma=a.sigma, seed=a.seed)
    train, test, cps_test = imgs[:a.n_train], imgs[a.n_train:], cps[a.n_train:]
    est = make_estimator(a, dev)
    secs = fit_timed(est, train, dev)
    steps_pairs = a.epochs * min(a.pairs_per_epoch, a.n_train * (a.n_train - 1))
    test_pairs = all_pairs(a.n_test)
    err = est.registration_error(test, test_pairs)
    oracle = bl.oracle_registration_error(test, cps_test, test_pairs)   # the true control points (+ corners)
    imp = est.compute_importance(test, max_pairs=64)
    half = a.size / 2   # normalised -> pixels
    rows = []
    g = torch.Generator().manual_seed(0)
    for keep in sorted({6, 10, 15, a.k} & set(range(1, a.k + 1))):
        est.prune(n_keep=keep)
        lm = est.predict(test)
        dist = nearest_distance(cps_test, lm) * half
        rand = torch.rand(len(test), keep, 2, generator=g) * 1.6 - 0.8   # baseline: random landmarks
        rdist = nearest_distance(cps_test, rand) * half
        e = est.registration_error(test, test_pairs)["after"]
        rows.append(dict(n_keep=keep, cp_to_nearest_px=dist.mean().item(),
                         cp_to_nearest_px_per_cp=dist.mean(0).tolist(), random_baseline_px=rdist.mean().item(),
                         rel_reg_error_after=e))
    res = dict(experiment="phantoms", size=a.size, n_train=a.n_train, n_test=a.n_test, k=a.k, fixed="4 corners",
               lam=a.lam, epochs=a.epochs, train_seconds=secs, pairs_per_second=steps_pairs / secs,
               rel_reg_error_before=err["before"], rel_reg_error_after=err["after"], rel_reg_error_oracle=oracle,
               importance=imp.tolist(), pruning=rows,
               history=[{k: v for k, v in r.items()} for r in est.history_["train"].records])
    print(f"phantoms {a.size}x{a.size}: {a.n_train} train / {a.n_test} test, K={a.k}+4 corners, lambda={a.lam}, "
          f"{a.epochs} epochs in {secs:.1f} s ({res['pairs_per_second']:.0f} pairs/s) on {dev}")
    print(f"  held-out mean relative registration error ||I_T-I_R||^2/||I_T||^2: before {err['before']:.4%}, "
          f"after {err['after']:.4%} (oracle: the true control points + corners, {oracle:.4%})")
    print(f"  {'kept':>5s} {'cp->nearest (px)':>17s} {'random baseline':>16s} {'rel. error after':>17s}")
    for r in rows:
        print(f"  {r['n_keep']:5d} {r['cp_to_nearest_px']:17.2f} {r['random_baseline_px']:16.2f} "
              f"{r['rel_reg_error_after']:17.4%}")
    return res, est


@torch.no_grad()
def pair_errors(images, pairs, src_lm=None, tgt_lm=None, register=None, batch=64):
    """Per-pair relative error ||I_T - I_R||^2 / ||I_T||^2 and per-pixel MSE (images in [0, 1]) of `pairs`: unregistered
    (no landmarks), registered by `register(s, t)`, or by the TPS through `src_lm[i]` -> `tgt_lm[j]` (+ corners)."""
    from shape_nb.discovery import fixed_points, register_pair, relative_registration_error
    fx = fixed_points("corners", images.ndim - 2, images.dtype)
    rel, mse = [], []
    for p in torch.as_tensor(pairs).split(batch):
        s, t = images[p[:, 0]], images[p[:, 1]]
        if register is not None: s = register(s, t)
        elif src_lm is not None: s = register_pair(s, src_lm[p[:, 0]].to(s.dtype), tgt_lm[p[:, 1]].to(s.dtype), fx)[0]
        rel.append(relative_registration_error(t, s)); mse.append((t - s).flatten(1).pow(2).mean(1))
    return torch.cat(rel).double(), torch.cat(mse).double()


def per_pair_optimum(est, images, pairs, steps=300, lr=2e-3):
    """Landmarks optimised directly for each pair (no network), from the network's own, on the training objective
    (whitened sum + lam kappa_F): the registration K landmarks and the TPS reach on these pairs."""
    from shape_nb.discovery import discovery_loss, fixed_points, register_pair
    xw = est.whitener_.transform(images)
    lm = est.predict(images, all_landmarks=True)
    fx = fixed_points(est.fixed, 2, xw.dtype)
    p = torch.as_tensor(pairs)
    ls, lt = lm[p[:, 0]].clone().requires_grad_(), lm[p[:, 1]].clone().requires_grad_()
    opt = torch.optim.Adam([ls, lt], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = discovery_loss(xw[p[:, 0]], xw[p[:, 1]], ls, lt, est.lam, fx, image_term=est.image_term)
        opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    with torch.no_grad():
        reg = register_pair(images[p[:, 0]], ls.detach(), lt.detach(), fx)[0]
    t = images[p[:, 1]]
    rel = (t - reg).flatten(1).pow(2).sum(1) / t.flatten(1).pow(2).sum(1)
    return rel.double(), (t - reg).flatten(1).pow(2).mean(1).double(), losses


def run_paper_budget(a, dev):
    """The paper's phantom budget: 20 epochs over all ordered training pairs, 64 x 64, K = 26 + 4 corners, lambda 1e-4
    (sum convention); held-out errors beside the oracle and the per-pair optimum."""
    import time
    from shape_nb.phantoms import tps_phantoms
    n = a.n_train + a.n_val + a.n_test
    imgs, cps = tps_phantoms(n, a.size, sigma=a.sigma, seed=a.seed)
    train, val, test = imgs[:a.n_train], imgs[a.n_train:a.n_train + a.n_val], imgs[a.n_train + a.n_val:]
    cps_train, cps_test = cps[:a.n_train], cps[a.n_train + a.n_val:]
    est = LandmarkDiscovery(n_landmarks=a.k, lam=a.lam, image_term="sum", epochs=a.epochs, batch_size=a.batch_size,
                            pairs="all", lr=a.lr, noise_std=a.noise, device=str(dev), random_state=a.seed,
                            progress=not a.no_progress)
    with bl.clock(dev) as c: est.fit(train, validation=val)
    secs = c.seconds
    n_pairs = a.n_train * (a.n_train - 1)
    test_pairs, train_pairs = all_pairs(a.n_test), all_pairs(min(a.n_train, a.n_test))
    rows = {}
    for name, x, pairs, cp in (("held_out", test, test_pairs, cps_test), ("train", train, train_pairs, cps_train)):
        b_rel, b_mse = pair_errors(x, pairs)
        r_rel, r_mse = pair_errors(x, pairs, register=est.register)
        o_rel, o_mse = pair_errors(x, pairs, cp, cp)
        rows[name] = dict(n_pairs=len(pairs), rel_before=b_rel.mean().item(), rel_after=r_rel.mean().item(),
                          rel_oracle=o_rel.mean().item(), mse_before=b_mse.mean().item(),
                          mse_after=r_mse.mean().item(), mse_oracle=o_mse.mean().item(),
                          rel_after_median=r_rel.median().item(), mse_after_median=r_mse.median().item())
    t0 = time.perf_counter()
    opt_pairs = test_pairs[torch.randperm(len(test_pairs), generator=torch.Generator().manual_seed(a.seed))[:16]]
    p_rel, p_mse, p_loss = per_pair_optimum(est, test, opt_pairs)
    n_rel, n_mse = pair_errors(test, opt_pairs, register=est.register)
    o_rel, o_mse = pair_errors(test, opt_pairs, cps_test, cps_test)
    limit = dict(n_pairs=len(opt_pairs), steps=len(p_loss), seconds=time.perf_counter() - t0,
                 rel_network=n_rel.mean().item(), rel_per_pair_optimum=p_rel.mean().item(),
                 rel_oracle=o_rel.mean().item(), mse_network=n_mse.mean().item(),
                 mse_per_pair_optimum=p_mse.mean().item(), mse_oracle=o_mse.mean().item(),
                 loss_first=p_loss[0], loss_last=p_loss[-1])
    imp = est.compute_importance(test, max_pairs=None)
    pruning = []
    for keep in sorted({6, 10, 15, a.k} & set(range(1, a.k + 1))):
        est.prune(n_keep=keep)
        r_rel, r_mse = pair_errors(test, test_pairs, register=est.register)
        pruning.append(dict(n_keep=keep, rel_after=r_rel.mean().item(), mse_after=r_mse.mean().item()))
    recs = est.history_["train"].records
    res = dict(experiment="phantoms, the paper's budget", size=a.size, k=a.k, fixed="4 corners", lam=a.lam,
               lam_convention="sum over pixels of the squared difference of the whitened images (the paper's); "
                              "the per-pixel-mean equivalent is lam / n_pixels",
               lam_mean_equivalent=a.lam / a.size ** 2, epochs=a.epochs, pairs_per_epoch=n_pairs,
               n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, sigma=a.sigma, batch_size=a.batch_size, lr=a.lr,
               noise_std=a.noise, seeds=dict(phantoms=a.seed, estimator=a.seed, torch=a.seed),
               train_seconds=secs, pairs_per_second=a.epochs * n_pairs / secs,
               best_epoch=est.history_["train"].best_epoch,
               errors=rows, limit=limit, importance=imp.tolist(), pruning=pruning,
               paper_reported="0.01% registration error on the phantoms (unit not stated; most likely the per-pixel "
                              "MSE of [0, 1] images)",
               history=[{k: v for k, v in r.items()} for r in recs])
    h, o, L = rows["held_out"], rows["train"], limit
    print(f"paper budget: phantoms {a.size}x{a.size}, {a.n_train} train ({n_pairs} ordered pairs per epoch) / "
          f"{a.n_val} val / {a.n_test} test, K={a.k}+4 corners, lambda={a.lam} (sum), {a.epochs} epochs in "
          f"{secs:.0f} s ({res['pairs_per_second']:.0f} pairs/s) on {dev}, best epoch {res['best_epoch']}")
    print(f"  {'':33s} {'rel. error':>11s} {'MSE [0,1]':>11s}")
    for nm, r in (("held-out", h), ("training pairs", o)):
        print(f"  {nm + ' before':33s} {r['rel_before']:11.4%} {r['mse_before']:11.4%}")
        print(f"  {nm + ' after':33s} {r['rel_after']:11.4%} {r['mse_after']:11.4%}")
        print(f"  {nm + ' oracle (true cps)':33s} {r['rel_oracle']:11.4%} {r['mse_oracle']:11.4%}")
    print(f"  {L['n_pairs']} held-out pairs: network {L['rel_network']:.4%} / {L['mse_network']:.4%}, landmarks "
          f"optimised per pair {L['rel_per_pair_optimum']:.4%} / {L['mse_per_pair_optimum']:.4%}, "
          f"oracle {L['rel_oracle']:.4%} / {L['mse_oracle']:.4%}  (rel. / MSE)")
    for r in pruning:
        print(f"  kept {r['n_keep']:2d}: held-out rel. error {r['rel_after']:.4%}, MSE {r['mse_after']:.4%}")
    return res, est


def blur(x, sigma):
    "Gaussian blur (sigma in pixels) of (n, 1, *S) images: smoother images give the warp useful gradients."
    if not sigma: return x
    r = int(3 * sigma + 0.5)
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype) / sigma) ** 2); k = k / k.sum()
    d = x.ndim - 2
    for ax in range(d):
        shape = [1, 1] + [1] * d; shape[2 + ax] = -1
        conv = torch.nn.functional.conv2d if d == 2 else torch.nn.functional.conv3d
        pad = [0] * (2 * d); pad[2 * (d - 1 - ax)] = pad[2 * (d - 1 - ax) + 1] = r
        x = conv(torch.nn.functional.pad(x, pad, mode="replicate"), k.reshape(shape))
    return x


def make_estimator(a, dev, d=2):
    "The LandmarkDiscovery of the experiments (narrower network in 3D)."
    return LandmarkDiscovery(n_landmarks=a.k, lam=a.lam, epochs=a.epochs, batch_size=a.batch_size,
                             pairs_per_epoch=a.pairs_per_epoch, lr=a.lr, noise_std=a.noise, device=str(dev),
                             random_state=a.seed, progress=not a.no_progress,
                             channels=(16, 32, 64, 128) if d == 2 else (8, 16, 32))


def outline_experiment(a, dev, name, outlines, groups_by, lm_index=None, flip_y=False, per_shape="none"):
    """Rasterise outlines, discover landmarks on the training split, evaluate on held-out images.

    `lm_index`: vertices of the outlines that are true landmarks (predicted from the discovered ones by ridge
    regression fitted on the training images; error on the test images, in pixels)."""
    from sklearn.linear_model import RidgeCV
    from shape_nb.data import fit_to_frame, rasterize_polygons, split_indices
    from shape_nb.discovery import ShapeClusters
    from shape_nb.metrics import clustering_scores
    norm, _ = fit_to_frame(outlines, margin=0.15, per_shape=per_shape, flip_y=flip_y)
    imgs = blur(rasterize_polygons(norm, a.size), a.blur)
    n = len(imgs)
    tr, _, te = split_indices(n, (0.8, 0.0, 0.2), seed=a.seed)
    est = make_estimator(a, dev)
    secs = fit_timed(est, imgs[tr], dev)
    err = est.registration_error(imgs[te], all_pairs(len(te))[:400])
    est.compute_importance(imgs[tr], max_pairs=64)
    lm_tr, lm_te = est.predict(imgs[tr]).double().numpy(), est.predict(imgs[te]).double().numpy()
    half = a.size / 2
    res = dict(experiment=name, n=n, n_train=len(tr), n_test=len(te), size=a.size, k=a.k, epochs=a.epochs, blur=a.blur,
               train_seconds=secs, rel_reg_error_before=err["before"], rel_reg_error_after=err["after"],
               importance=est.importance_.tolist(), clustering={})
    if lm_index is not None:
        Y = np.stack([np.asarray(o)[lm_index] for o in norm])                       # (n, L, 2) normalised
        reg = RidgeCV(alphas=np.logspace(-6, 1, 15)).fit(lm_tr.reshape(len(tr), -1), Y[tr].reshape(len(tr), -1))
        pred = reg.predict(lm_te.reshape(len(te), -1)).reshape(len(te), -1, 2)
        err_px = np.linalg.norm(pred - Y[te], axis=-1) * half
        base_px = np.linalg.norm(Y[tr].mean(0) - Y[te], axis=-1) * half
        res.update(true_landmark_error_px=float(err_px.mean()), true_landmark_error_px_per_lm=err_px.mean(0).tolist(),
                   mean_position_baseline_px=float(base_px.mean()))
    full = np.stack([np.asarray(o) for o in norm]) if len({len(o) for o in norm}) == 1 else None
    for label_name, labels in groups_by.items():
        labels = np.asarray(labels)
        k = len(np.unique(labels))
        cl = ShapeClusters(k, align="rigid").fit(lm_tr)
        ours = dict(train=clustering_scores(labels[tr], cl.labels_),
                    test=clustering_scores(labels[te], cl.predict(lm_te)))
        ref = None
        if full is not None:   # the same clustering on the full outlines (a reference)
            clo = ShapeClusters(k, align="rigid").fit(full[tr])
            ref = dict(train=clustering_scores(labels[tr], clo.labels_),
                       test=clustering_scores(labels[te], clo.predict(full[te])))
        res["clustering"][label_name] = dict(landmarks=ours, outlines=ref)
    print(f"{name}: {n} outlines rasterised to {a.size}x{a.size} (blur {a.blur} px), {len(tr)} train / {len(te)} test, "
          f"K={a.k}, {a.epochs} epochs in {secs:.0f} s on {dev}")
    print(f"  held-out relative registration error: before {err['before']:.4f}, after {err['after']:.4f}")
    if lm_index is not None:
        print(f"  true landmarks predicted from discovered ones (ridge on train, test error): "
              f"{res['true_landmark_error_px']:.2f} px (train-mean baseline {res['mean_position_baseline_px']:.2f} px)")
    for label_name, c in res["clustering"].items():
        o = c["outlines"]
        print(f"  spectral clustering vs {label_name}: ARI train {c['landmarks']['train']['ari']:.3f}, held-out "
              f"{c['landmarks']['test']['ari']:.3f}"
              + (f"   (same on full outlines: {o['train']['ari']:.3f} / {o['test']['ari']:.3f})" if o else ""))
    return res, est


def run_mice(a, dev):
    "Mouse T2 vertebrae: rigidly aligned (GPA without scaling keeps the size groups apart), rasterised."
    from shape_nb.data import load_mice_vertebrae
    from shape_nb.shape import GPA
    d = load_mice_vertebrae(bl.require_data(a, "mice_vertebrae"))
    aligned = GPA(scaling=False).fit(d["outlines"]).aligned_
    return outline_experiment(a, dev, "mice vertebrae", aligned, {"group": d["groups"]},
                              lm_index=list(d["landmark_index"]))


def run_cells(a, dev):
    "Osteosarcoma cells: centred in their frames, one common scale, rasterised."
    from shape_nb.data import load_osteosarcoma_cells
    d = load_osteosarcoma_cells(bl.require_data(a, "osteosarcoma_cells"))
    return outline_experiment(a, dev, "osteosarcoma cells", [np.asarray(c, dtype=float) for c in d["contours"]],
                              {"cell line": d["cell_line"], "treatment": d["treatment"]}, flip_y=True,
                              per_shape="center")


def run_ct3d(a, dev):
    """3D: (1) warped 3D phantoms with a deformed subgroup -> registration error and Z-scores; (2) TPS-warped copies
    of the real head CT -> registration error."""
    from shape_nb.phantoms import tps_phantoms_3d, tps_population
    from shape_nb.discovery import shape_zscores
    from shape_nb.metrics import abnormality_auc
    from shape_nb.nets import grid_points
    res = dict(experiment="3D", size=a.size, k=a.k, epochs=a.epochs)
    S, n_tr = a.size, a.n_train
    shift = torch.zeros(6, 3); shift[2, 2] = a.shift          # move one dark ellipsoid's end along z
    normal, cp_n = tps_phantoms_3d(n_tr + 12, S, sigma=0.04, seed=a.seed)
    deformed, cp_d = tps_phantoms_3d(12 + 12, S, sigma=0.04, shift=shift, seed=a.seed + 1)
    train = torch.cat([normal[:n_tr], deformed[:12]])
    test_n, test_d = normal[n_tr:], deformed[12:]
    est = make_estimator(a, dev, d=3)
    secs = fit_timed(est, train, dev)
    test = torch.cat([test_n, test_d])
    err = est.registration_error(test, all_pairs(len(test))[:200])
    lm_ref = est.predict(normal[:n_tr]); lm_test = est.predict(test)
    z = shape_zscores(lm_ref, lm_test, n_components=0.9)
    y = np.r_[np.zeros(len(test_n)), np.ones(len(test_d))]
    z_true = shape_zscores(cp_n[:n_tr], torch.cat([cp_n[n_tr:], cp_d[12:]]), n_components=0.9)
    res["phantom3d"] = dict(n_train=len(train), n_test=len(test), train_seconds=secs,
                            rel_reg_error_before=err["before"], rel_reg_error_after=err["after"],
                            z_normal=float(z[y == 0].mean()), z_deformed=float(z[y == 1].mean()),
                            auc=abnormality_auc(z, y), z_true_cp_normal=float(z_true[y == 0].mean()),
                            z_true_cp_deformed=float(z_true[y == 1].mean()), auc_true_cp=abnormality_auc(z_true, y))
    r = res["phantom3d"]
    print(f"3D phantoms {S}^3: {len(train)} train ({n_tr} normal + 12 deformed) / {len(test)} test, K={a.k}+8 corners, "
          f"{a.epochs} epochs in {secs:.0f} s on {dev}")
    print(f"  held-out relative registration error: before {r['rel_reg_error_before']:.4f}, "
          f"after {r['rel_reg_error_after']:.4f}")
    print(f"  Mahalanobis Z vs the normal training group: normal {r['z_normal']:.2f}, deformed {r['z_deformed']:.2f}, "
          f"AUC {r['auc']:.3f}  (true control points: {r['z_true_cp_normal']:.2f} / {r['z_true_cp_deformed']:.2f}, "
          f"AUC {r['auc_true_cp']:.3f})")
    # the real head CT, downsampled, warped by random TPS perturbations of 8 interior control points
    from shape_nb.io import read_image, resize_image, shared_data_dir
    root = shared_data_dir()
    if root is None or not (root / "head_ct").is_dir():
        print("  head CT: ../shared/data/head_ct not found, skipped"); return res, est
    ct = resize_image(read_image(root / "head_ct" / "cranium_ct.nrrd"), (S, S, S))
    vol = torch.from_numpy(ct.array).clamp(-1000, 2000)[None, None].float()
    vol = (vol + 1000) / 3000
    cps = grid_points(8, 3, 0.45)
    pop, _ = tps_population(vol, cps, n_tr + 12, sigma=0.05, seed=a.seed, padding_mode="border")
    est2 = make_estimator(a, dev, d=3)
    secs2 = fit_timed(est2, pop[:n_tr], dev)
    err2 = est2.registration_error(pop[n_tr:], all_pairs(12)[:132])
    res["head_ct"] = dict(shape=[S] * 3, source_spacing_mm=list(ct.spacing), n_train=n_tr, n_test=12,
                          train_seconds=secs2, rel_reg_error_before=err2["before"], rel_reg_error_after=err2["after"])
    print(f"head CT resampled to {S}^3 ({ct.spacing[0]:.2f}x{ct.spacing[1]:.2f}x{ct.spacing[2]:.2f} mm), "
          f"{n_tr} warped copies train / 12 test, {a.epochs} epochs in {secs2:.0f} s")
    print(f"  held-out relative registration error: before {err2['before']:.4f}, after {err2['after']:.4f}")
    return res, est2


EXPERIMENTS = dict(phantoms=run_phantoms, mice=run_mice, cells=run_cells, ct3d=run_ct3d)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--n-train", type=int, default=None, help="default 256 (--budget paper: 64)")
    ap.add_argument("--n-test", type=int, default=None, help="default 32 (--budget paper: 16)")
    ap.add_argument("--n-val", type=int, default=8, help="--budget paper: validation phantoms (early stopping)")
    ap.add_argument("--budget", choices=["paper"], default=None,
                    help="phantoms: the paper's budget (64 x 64, K=26, 20 epochs over all ordered pairs)")
    ap.add_argument("--k", type=int, default=None)
    ap.add_argument("--lam", type=float, default=1e-4)
    ap.add_argument("--sigma", type=float, default=0.05)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--epochs", type=int, default=None, help="default 40 (--budget paper: 20)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--pairs-per-epoch", type=int, default=1024)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--blur", type=float, default=1.0, help="Gaussian blur (pixels) of rasterised outlines")
    ap.add_argument("--shift", type=float, default=0.15,
                    help="3D: displacement of one control point in the deformed subgroup")
    bl.common_args(ap, quick_help="tiny smoke run: 32x32 images (3D: 16^3), 12 train / 4 test, 2 epochs, K <= 8")
    a = ap.parse_args()
    if a.budget and a.experiment != "phantoms": ap.error("--budget paper applies to the phantoms")
    defaults = dict(phantoms=(128, 26), mice=(128, 24), cells=(96, 24), ct3d=(32, 16))[a.experiment]
    if a.budget: defaults = (64, 26)
    a.size = a.size or defaults[0]; a.k = a.k or defaults[1]
    a.epochs = a.epochs or (20 if a.budget else 40)
    a.n_test = a.n_test or (16 if a.budget else 32)
    a.n_train = a.n_train or (64 if a.budget else 256)
    if a.quick:
        a.size = 16 if a.experiment == "ct3d" else 32
        a.n_train, a.n_test, a.epochs, a.pairs_per_epoch, a.k = 12, 4, 2, 16, min(a.k, 8)
    dev = bl.setup(a)
    if a.budget:
        res, _ = run_paper_budget(a, dev)
        bl.write_results(a, dev, res, "discovery_paper_budget")
        return
    res, _ = EXPERIMENTS[a.experiment](a, dev)
    bl.write_results(a, dev, res, f"discovery_{a.experiment}")


if __name__ == "__main__":
    main()
