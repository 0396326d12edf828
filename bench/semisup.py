"""Semi-supervised landmark detection (paper 3) on the Hamedan cephalograms: print tables and write JSON.

    python bench/semisup.py --labels 20 --variants supervised full      # one part of the grid
    python bench/semisup.py --labels 20 --variants naive no_shape no_ral
    python bench/semisup.py --labels 50 --variants supervised full
    python bench/semisup.py --table                                      # print the tables of what has run
    python bench/semisup.py --device cuda --labels 20 --variants full    # benchmark 4 on a GPU (wall time per phase)
    python bench/semisup.py --quick --device cpu                         # a smoke run (seconds)

    python bench/semisup.py --fidelity --size 64 52 --seeds 0 1         # the paper's protocol, one change at a time
    python bench/semisup.py --fidelity --table --size 64 52              # print its table

Options: --size H W (default 128 104), --epochs-pretrain 100, --rounds 3, --epochs-round 3, --epochs-finetune 20,
--lr 3e-3 (better than Adam's default 1e-3 in so few epochs: --fidelity), --batch-size 4, --z 2 (abnormality
threshold Z in mm, the paper's; pixels of 0.1 mm assumed, so 20 original pixels), --protocol paper|restarts
(SemiSupervisedDetector's PROTOCOLS entry, default paper), --cache DIR (pre-trained networks, shared by the variants
of one label count, protocol and device), --train-options JSON (passed as SemiSupervisedDetector(train_options=...)),
--val N (labelled validation images taken from the unlabelled pool; every phase then stops early after --patience
epochs without improvement of their L1, default 10, and keeps its best epoch: the --epochs-* become maxima),
--tag, --table; with --fidelity: --settings NAME ... (default all of FIDELITY), --seeds; the common ones
(bench/benchlib.py): --device auto|cpu|cuda, --threads (default 1), --quick (32x26 images, 2 epochs per phase, 1
round), --out (folder, default bench/results), --seed 0. Results of separate runs are merged into
<out>/semisup_<device>[_quick].json (--fidelity: <out>/semisup_fidelity_<device>[_quick].json).

The variants of one label count start from one cached pre-trained network; with the paper's protocol their Adam
therefore starts afresh after pre-training (same constant learning rate), where a single fit continues it.

--fidelity trains every FIDELITY setting end to end (pre-training, rounds, fine-tuning: no cache) with one change
at a time from the paper's protocol, and records per round the heatmap diagnostics of the unlabelled images (the
pull of the predictions towards the image centre, its spread over landmarks, the heatmap mass far from the truth;
`heatmap_diagnostics`), plus the integral coordinate of a synthetic sigmoid heatmap against its background logit.

Wall time: every result records the seconds of each phase of the protocol (pre-training, self-training rounds,
fine-tuning: the training epochs of each phase; 'pseudo' is the rest of the variant's fit: pseudo-labelling with
shape regulation, set-up and the final evaluation) and the tables end with a wall-time table. The pre-training is
shared by the variants of one label count; its seconds are those of the run that trained it (kept in the cache).

Runs on the CPU at reduced resolution (the network sees --size H W, default 128x104, instead of 1671x1340) and
with few epochs; every number says so in the JSON. Data: ../shared/data/cephalograms_hamedan (or
$SHAPE_NB_DATA/cephalograms_hamedan): 150 PNGs at half the original resolution, 19 landmarks by two
annotators. Ground truth: annotator farhadifar. Image 002 is excluded (both annotators' files are defective:
farhadifar 002 has l17 twice and no l18; mollabashi 002 has l11 twice). The other mollabashi defects (009, 010,
064, 086, 098, 109, 137, 140) only drop those images from the inter-annotator comparison. Split (fixed): the
149 usable images in file order, shuffled with seed 0; 100 form the training pool, 49 the test set. With L
labels, the first L of the pool are labelled and the other 100 - L unlabelled (their truth is hidden from
training and only used to score pseudo labels). Errors are in pixels of the original 1340x1671 images
(the data carry no pixel size); SDR radii are 20, 25, 30 and 40 such pixels (2, 2.5, 3, 4 mm at the 0.1 mm
pixels of the ISBI 2015 images; Hamedan's true pixel size is unknown). The detector works in mm at that assumed
0.1 mm per original pixel (spacing = 0.1 x original pixels per network pixel), so Z = 2 mm is 20 original pixels;
at 64x52 a network pixel is 2.6 mm, at 128x104 1.3 mm, so Z is then one or two pixels: most pseudo labels get
flagged abnormal (the rounds' 'abnormal images' and 'masked landmarks' say how many).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from shape_nb.core import index_to_norm, norm_to_index, pixel_grid
from shape_nb.io import read_images, read_labelme, stack_images
from shape_nb.metrics import detection_report, radial_errors
from shape_nb.semisup import ABLATIONS, PROTOCOLS, SemiSupervisedDetector, integral_coordinates

import benchlib as bl

HALF = (835, 670)         # (H, W) of the PNGs; the originals are twice as large
TO_ORIGINAL = 2.0         # PNG pixels -> original pixels
PIXEL_MM = 0.1            # assumed mm per original pixel (as in ISBI 2015; Hamedan's own is not given)
RADII = (20.0, 25.0, 30.0, 40.0)
LABELS = [f"l{i}" for i in range(1, 20)]
# the paper's ablations, plus one more control: supervised training with L1 + the Region Attention loss on the
# labelled images in fine-tuning (ral_on="all": the paper's protocol puts RAL on pseudo labels only, and there are none)
VARIANTS = {**ABLATIONS, "supervised_ral": dict(self_training=False, shape_regulation=False, region_attention=True,
                                                ral_on="all")}


def load_cephalograms(size, root):
    "Images resized to `size`, farhadifar landmarks (normalised), mollabashi's (PNG pixels, NaN if defective), names."
    d = Path(root) / "cephalograms_hamedan"
    ims = read_images(d / "images", resize=size)
    keep, gt, other, names = [], [], [], []
    for i, im in enumerate(ims):
        stem = Path(im.path).stem
        try:
            a, _ = read_labelme(d / "labelme_farhadifar" / f"{stem}.json", LABELS)
        except ValueError:
            continue                      # 002: both annotators defective -> excluded
        try:
            b, _ = read_labelme(d / "labelme_mollabashi" / f"{stem}.json", LABELS)
        except ValueError:
            b = np.full_like(a, np.nan)   # defective second annotation: left out of the inter-annotator error
        keep.append(i); gt.append(a); other.append(b); names.append(stem)
    x = stack_images([ims[i] for i in keep])
    gt, other = np.stack(gt), np.stack(other)
    return x, torch.tensor(index_to_norm(gt, HALF), dtype=torch.float32), gt, other, names


def split(n, n_pool=100, seed=0):
    perm = np.random.default_rng(seed).permutation(n)
    return perm[:n_pool], perm[n_pool:]


def errors(pred_norm, gt_half):
    "Detection report in original pixels for normalised predictions."
    p = norm_to_index(np.asarray(pred_norm, dtype=np.float64), HALF)
    return detection_report(p, gt_half, spacing=TO_ORIGINAL, radii=RADII)



def heatmap_mass(h, gt_half, radius=RADII[-1]):
    "Mean distance (original px) of the test heatmaps' mass from the true landmark, and the share within `radius` px."
    n, K, H, W = h.shape
    g = norm_to_index(pixel_grid((H, W), dtype=torch.float64).reshape(-1, 2).numpy(), HALF) * TO_ORIGINAL   # (P, 2)
    d = np.linalg.norm(g[None, None] - np.asarray(gt_half)[:, :, None] * TO_ORIGINAL, axis=-1)           # (n, K, P)
    m = h.double().reshape(n, K, -1).numpy()
    m = m / m.sum(-1, keepdims=True)
    return dict(spread_px=float((m * d).sum(-1).mean()), within_px=radius,
                share_within=float((m * (d <= radius)).sum(-1).mean()))


def wilcoxon_vs(per_image_a, per_image_b):
    "Two-sided Wilcoxon signed-rank p-value of paired per-image MREs (None when scipy refuses)."
    from scipy.stats import wilcoxon
    try: return float(wilcoxon(per_image_a, per_image_b).pvalue)
    except ValueError: return None


def to_px(v):
    "Lengths in mm (round diagnostics: errors, shifts, Z) in original pixels of the assumed PIXEL_MM."
    if v is None: return None
    if isinstance(v, list): return [to_px(r) for r in v]
    if isinstance(v, dict):
        mm = lambda k: k.startswith("mre") or k in ("mean_shift", "z_threshold")
        return {k: x / PIXEL_MM if mm(k) else x for k, x in v.items()}
    return v / PIXEL_MM


def pretrained(a, xl, yl, L, spacing, val=None):
    "The shared pre-trained detector for L labels (cached on disk) and its seconds and epochs."
    kw = dict(epochs_pretrain=a.epochs_pretrain, batch_size=a.batch_size, random_state=a.seed, device=a.device,
              progress=False, spacing=spacing, **a.protocol_params, **a.extra)
    dev = a.dev.type + ("" if a.dev.type == "cpu" else f"_{a.dev.index or 0}")
    cache = Path(a.cache) / (f"v3_pre_L{L}_{a.size[0]}x{a.size[1]}_e{a.epochs_pretrain}_lr{a.lr:g}_b{a.batch_size}"
                             f"_{a.protocol}_s{a.seed}_{dev}{stop_key(a)}.pt")   # v3: protocols, schedule
    if cache.exists() and cache.with_suffix(".json").exists():
        print(f"  pre-trained network from {cache}")
        info = json.loads(cache.with_suffix(".json").read_text())
        return SemiSupervisedDetector.load(cache, device=a.device), info["seconds"], info.get("epochs")
    with bl.clock(a.dev) as c:
        det = SemiSupervisedDetector(**ABLATIONS["supervised"], epochs_finetune=0, **kw).fit(xl, yl, validation=val)
    secs, ep = c.seconds, epochs_run(det)["pretrain"]
    det.save(cache); cache.with_suffix(".json").write_text(json.dumps(dict(seconds=secs, epochs=ep)))
    return det, secs, ep


def stop_key(a) -> str:
    "Cache-name part of the early-stopping settings ('' without a validation split)."
    return f"_val{a.val}_pat{a.patience}" if a.val else ""


def epochs_run(det) -> dict:
    "Per phase of a fit: epochs trained, the best validation epoch (kept weights) and why it stopped."
    return {k: dict(run=len(h.records), best=h.best_epoch, stopped=h.stopped) for k, h in det.history_.items()}


def phase_seconds(det, total, pre_secs):
    "Seconds per phase of one fit: the training epochs of each phase, the rest of the fit as 'pseudo'."
    ph = {"pretrain": pre_secs}
    for k, h in det.history_.items():
        if k == "pretrain": continue
        ph[k] = float(sum(r.get("seconds", 0.0) for r in h.records))
    ph["pseudo"] = total - sum(v for k, v in ph.items() if k != "pretrain")
    ph["variant_total"] = total
    ph["protocol_total"] = total + (pre_secs or 0.0)
    return ph


def run(a):
    x, y, gt, other, names = load_cephalograms(tuple(a.size), bl.require_data(a, "cephalograms_hamedan"))
    pool, test = split(len(x))
    H, W = a.size
    spacing = [PIXEL_MM * TO_ORIGINAL * HALF[1] / W, PIXEL_MM * TO_ORIGINAL * HALF[0] / H]   # mm per network pixel
    ok = np.isfinite(other).all((1, 2))
    inter = detection_report(other[ok], gt[ok], spacing=TO_ORIGINAL, radii=RADII)
    inter_test = detection_report(other[test][ok[test]], gt[test][ok[test]], spacing=TO_ORIGINAL, radii=RADII)
    where = (f"{a.dev} ({torch.cuda.get_device_name(a.dev)})" if a.dev.type == "cuda" else f"cpu, {a.threads} threads")
    meta = dict(device=where, threads=a.threads, torch=torch.__version__, network_input=list(a.size),
                original_size=[1671, 1340], units="pixels of the original 1340x1671 images (no pixel size given)",
                sdr_radii_px=list(RADII), n_images=len(x), n_pool=len(pool), n_test=len(test),
                test_names=[names[i] for i in test],
                ground_truth="farhadifar; 002 excluded (both annotators defective)",
                backbone="UNet 16-32-64-128, sigmoid heatmaps, integral coordinates",
                notes=("One training seed per row unless tagged _seed1. 'pretrained' = the shared pre-trained network "
                       "(L1 on the labelled images) every variant of a label count starts from. supervised: + "
                       "fine-tuning epochs with L1; supervised_ral: + fine-tuning with L1 + Region Attention loss (a "
                       "control, not in the paper). Tag _matched: fine-tuning lengthened to 65 epochs so that the "
                       "supervised network makes as many optimizer steps as the full method (500 pre-training + 3 "
                       "rounds x 3 epochs x 25 steps + 100 fine-tuning = 825). Pseudo-label MREs use the hidden truth "
                       "of the unlabelled pool, for diagnosis only."),
                reduced=f"{where}, network input {H}x{W} (original 1671x1340), few epochs (per-result 'settings')",
                inter_annotator=dict(all_141=dict(mre=inter["mre"], sd=inter["sd"], sdr=inter["sdr"]),
                                     test=dict(mre=inter_test["mre"], sd=inter_test["sd"], sdr=inter_test["sdr"],
                                               n_images=int(ok[test].sum()))))
    bl.write_results(a, a.dev, {"meta": meta}, merge=True)
    for L in a.labels:
        lab, vi, unl = pool[:L], pool[L:L + a.val], pool[L + a.val:]
        val = (x[vi], y[vi]) if a.val else None
        print(f"== {L} labelled, {len(unl)} unlabelled, {a.val} validation, {len(test)} test images ({H}x{W} network "
              f"input, {where})")
        settings = dict(network_input=list(a.size), epochs_pretrain=a.epochs_pretrain, rounds=a.rounds,
                        epochs_round=a.epochs_round, epochs_finetune=a.epochs_finetune, lr=a.lr,
                        batch_size=a.batch_size, z_threshold_mm=a.z, protocol=a.protocol, seed=a.seed,
                        threads=a.threads, validation_images=a.val, patience=a.patience,
                        epochs_are="maxima (early stopping on the validation split)" if a.val else "fixed")
        base, pre_secs, pre_epochs = pretrained(a, x[lab], y[lab], L, spacing, val)
        pb = base.predict(x[test])
        rb = errors(pb, gt[test])
        ptag = f"_seed{a.seed}" if a.seed else ""   # the pre-trained network depends on the seed only
        rec = dict(labels=L, variant="pretrained only", tag=ptag, mre=rb["mre"], sd=rb["sd"], sdr=rb["sdr"],
                   seconds=pre_secs, settings=settings, epochs={"pretrain": pre_epochs})
        bl.write_results(a, a.dev, {"runs": {f"{L}/pretrained{ptag}": rec}}, merge=True)
        print(f"  pre-trained only: test MRE {rb['mre']:.1f} ({rb['sd']:.1f})")
        for v in a.variants:
            with bl.clock(a.dev) as c:
                det = SemiSupervisedDetector(backbone=base.model_, epochs_pretrain=0, rounds=a.rounds,
                                             epochs_round=a.epochs_round, epochs_finetune=a.epochs_finetune,
                                             batch_size=a.batch_size, z_threshold=a.z, spacing=spacing,
                                             random_state=a.seed, device=a.device, progress=False,
                                             **{**a.protocol_params, **VARIANTS[v]}, **a.extra)
                det.fit(x[lab], y[lab], unlabelled=x[unl] if VARIANTS[v]["self_training"] else None,
                        unlabelled_landmarks=y[unl] if VARIANTS[v]["self_training"] else None, validation=val)
            secs = c.seconds
            p = det.predict(x[test])
            r = errors(p, gt[test])
            per_img = radial_errors(norm_to_index(p.double().numpy(), HALF), gt[test], TO_ORIGINAL).mean(1)
            mass = heatmap_mass(det.predict_heatmaps(x[test]), gt[test])
            rec = dict(labels=L, variant=v, tag=a.tag, flags=VARIANTS[v], settings=settings, mre=r["mre"], sd=r["sd"],
                       sdr=r["sdr"], mre_per_landmark=r["mre_per_landmark"], per_image_mre=per_img.tolist(),
                       rounds=to_px(det.rounds_), unlabelled_final_mre=to_px(getattr(det, "unlabelled_mre_", None)),
                       seconds=secs,
                       pretrain_seconds=pre_secs, phase_seconds=phase_seconds(det, secs, pre_secs), device=where,
                       epochs={"pretrain": pre_epochs, **{k: e for k, e in epochs_run(det).items() if k != "pretrain"}},
                       train_options=a.extra.get("train_options"), test_heatmaps=mass)
            bl.write_results(a, a.dev, {"runs": {f"{L}/{v}{a.tag}": rec}}, merge=True)
            print(f"  {v + a.tag:<11s} test MRE {r['mre']:.1f} ({r['sd']:.1f})  SDR@20/25/30/40 px "
                  + " ".join(f"{100 * r['sdr'][k]:.1f}" for k in r["sdr"]) + f"  [{secs:.0f} s]")
            for rd in rec["rounds"]:
                print(f"     round {rd['round']}: pseudo-label MRE raw {rd.get('mre_raw', float('nan')):.1f} -> used "
                      f"{rd.get('mre_pseudo', float('nan')):.1f} (kept only "
                      f"{rd.get('mre_pseudo_kept', float('nan')):.1f}), "
                      f"abnormal images {100 * rd['frac_abnormal_images']:.0f}%, masked landmarks "
                      f"{100 * rd['frac_masked_landmarks']:.1f}%")
    print(f"wrote {bl.result_path(a, a.dev)}")
    tables(bl.result_path(a, a.dev))


def tables(path):
    "Print the tables of the results file `path` (all the runs merged into it)."
    doc = json.loads(Path(path).read_text())
    if "script" not in doc: raise SystemExit(f"{path} holds results in an older layout")
    m, res = doc["results"]["meta"], doc["results"].get("runs", {})
    ia = m["inter_annotator"]
    print(f"\nSemi-supervised landmark detection, Hamedan cephalograms: {m['reduced']}; {m['n_test']} test images;")
    print(f"errors in {m['units']}; SDR radii {m['sdr_radii_px']} px.")
    for L in sorted({r["labels"] for r in res.values()}):
        st = next(r["settings"] for r in res.values() if r["labels"] == L)
        print(f"  {L} labels: epochs pre-train {st['epochs_pretrain']}, {st['rounds']} rounds x {st['epochs_round']}, "
              f"fine-tune {st['epochs_finetune']}; lr {st['lr']:g}, batch {st['batch_size']}, "
              + (f"Z = {st['z_threshold_mm']:g} mm, {st['protocol']} protocol" if "z_threshold_mm" in st else
                 f"Z = {st['z_threshold_px']:g} px"))
    print(f"Inter-annotator floor: MRE {ia['all_141']['mre']:.1f} ({ia['all_141']['sd']:.1f}) on 141 images, "
          f"{ia['test']['mre']:.1f} ({ia['test']['sd']:.1f}) on {ia['test']['n_images']} test images\n")
    head = f"{'labels':>6} {'method':<44} {'MRE (SD)':>14} " + " ".join(f"SDR{r:g}".rjust(7) for r in m["sdr_radii_px"])
    names = {"supervised": "U-Net (supervised)", "naive": "naive self-training (L1)",
             "no_shape": "ours w/o shape regulation", "no_ral": "ours w/o region attention loss",
             "full": "U-Net + ours (full)", "pretrained only": "pre-trained only",
             "supervised_ral": "supervised, RAL in fine-tuning"}
    def row(r):
        nm = names[r["variant"]] + (f" {r['tag']}" if r.get("tag") else "")
        return (f"{r['labels']:>6} {nm:<44} {r['mre']:>7.1f} ({r['sd']:.1f}) "
                + " ".join(f"{100 * v:7.1f}" for v in r["sdr"].values()))
    print("Table 2 (supervised U-Net vs U-Net + ours)"); print(head)
    for L in sorted({r["labels"] for r in res.values()}):
        for v in ("supervised", "full"):
            if f"{L}/{v}" in res: print(row(res[f"{L}/{v}"]))
        s, f = res.get(f"{L}/supervised"), res.get(f"{L}/full")
        if s and f:
            p = wilcoxon_vs(s["per_image_mre"], f["per_image_mre"])
            print(f"{'':>6} full - supervised: {f['mre'] - s['mre']:+.1f} px, Wilcoxon signed-rank p = {p:.3g} "
                  "(per-image MRE, paired)")
    abl = sorted({r["labels"] for k, r in res.items() if r.get("variant") in ("naive", "no_shape", "no_ral")})
    for L in abl:
        print(f"\nAblation, {L} labels"); print(head)
        for v in ("pretrained", "supervised", "supervised_ral", "naive", "no_shape", "no_ral", "full"):
            if f"{L}/{v}" in res: print(row(res[f"{L}/{v}"]))
        for k, r in res.items():
            if r["labels"] == L and r.get("tag"): print(row(r))
        for k, r in res.items():      # each row against the full method trained with the same seed
            seed = r.get("settings", {}).get("seed", 0)
            fk = f"{L}/full" + (f"_seed{seed}" if seed else "")
            f = res.get(fk)
            if f and r["labels"] == L and k != fk and "per_image_mre" in r:
                p = wilcoxon_vs(r["per_image_mre"], f["per_image_mre"])
                print(f"{'':>6} {fk.split('/')[1]} - {k.split('/')[1]}: {f['mre'] - r['mre']:+.1f} px "
                      f"(Wilcoxon p = {p:.2g})")
    print("\nPseudo labels on the unlabelled pool per round (MRE vs hidden truth, px; "
          "abnormal = some landmark moved > Z)")
    print(f"{'labels':>6} {'variant':<10} {'round':>5} {'raw':>7} {'used':>7} {'kept':>7} {'abn.img%':>9} "
          f"{'masked%':>8}")
    for k, r in res.items():
        for rd in r.get("rounds") or []:
            print(f"{r['labels']:>6} {r['variant'] + r.get('tag', ''):<10} {rd['round']:>5} "
                  f"{rd.get('mre_raw', float('nan')):7.1f} {rd.get('mre_pseudo', float('nan')):7.1f} "
                  f"{rd.get('mre_pseudo_kept', float('nan')):7.1f} "
                  f"{100 * rd['frac_abnormal_images']:9.1f} {100 * rd['frac_masked_landmarks']:8.1f}")
        if r.get("unlabelled_final_mre") is not None:
            print(f"{r['labels']:>6} {r['variant'] + r.get('tag', ''):<10} {'final':>5} "
                  f"{r['unlabelled_final_mre']:7.1f}")
    stopped = [r for r in res.values() if r.get("epochs") and r.get("variant") != "pretrained only"]
    if stopped:
        print("\nEpochs trained per phase (best validation epoch, counted from 0, in brackets)")
        fmt = lambda e: "-" if not e or not e["run"] else f"{e['run']} ({e['best']})"
        phases = ["pretrain", "round_1", "round_2", "round_3", "finetune"]
        print(f"{'labels':>6} {'variant':<16} " + " ".join(f"{ph:>10}" for ph in phases))
        for r in stopped:
            print(f"{r['labels']:>6} {r['variant'] + r.get('tag', ''):<16} "
                  + " ".join(f"{fmt(r['epochs'].get(ph)):>10}" for ph in phases))
    timed = [r for r in res.values() if r.get("phase_seconds")]
    if timed:
        n_rounds = max(len([k for k in r["phase_seconds"] if k.startswith("round_")]) for r in timed)
        print(f"\nWall time of the protocol, seconds per phase ({m['device']}; pre-training shared by the variants; "
              f"'pseudo' = pseudo-labelling, regulation, set-up)")
        print(f"{'labels':>6} {'variant':<16} {'pre-train':>9} "
              + " ".join(f"{'round ' + str(i + 1):>8}" for i in range(n_rounds))
              + f" {'pseudo':>7} {'fine-tune':>9} {'total':>8}")
        fmt = lambda v: f"{v:.1f}" if v is not None else "-"
        for r in timed:
            ph = r["phase_seconds"]
            print(f"{r['labels']:>6} {r['variant'] + r.get('tag', ''):<16} {fmt(ph.get('pretrain')):>9} "
                  + " ".join(f"{fmt(ph.get(f'round_{i + 1}')):>8}" for i in range(n_rounds))
                  + f" {fmt(ph.get('pseudo')):>7} {fmt(ph.get('finetune')):>9} {fmt(ph.get('protocol_total')):>8}")


# -- fidelity experiments: the paper's protocol against the earlier one, one change at a time ---------------------
PAPER = dict(PROTOCOLS["paper"], lr=1e-3)
RESTARTS = dict(PROTOCOLS["restarts"], lr=3e-3)
FIDELITY = {   # name -> SemiSupervisedDetector settings (on top of the shared epochs, batch size and Z = 2 mm)
    "restarts_z4mm": dict(RESTARTS, z_threshold=4.0),            # the earlier protocol with Z = 40 original px
    "restarts": RESTARTS,                                        # the earlier protocol, Z = 2 mm
    "paper": PAPER,                                              # eq. 1, RAL on pseudo labels, one Adam, noise
    "paper_lr3e-3": dict(PAPER, lr=3e-3),
    "paper_cosine": dict(PAPER, schedule="cosine", lr=3e-3),     # new Adam + cosine in every phase
    "paper_pooled": dict(PAPER, loss_weighting="pooled"),
    "paper_ral_all": dict(PAPER, ral_on="all"),                  # L1 + RAL on every image
    "paper_scale": dict(PAPER, aug_scale=0.1, aug_noise=0.0),    # scaling instead of noise
    "paper_softmax": dict(PAPER, normalisation="softmax"),
    "paper_bias-8": dict(PAPER, out_bias=-8.0),
    "paper_no_ral": dict(PAPER, region_attention=False),         # the paper's "w/o RAL": L1 on the pseudo labels
    "paper_ral0.02": dict(PAPER, ral_mean=0.02, ral_std=0.01),   # the radius read in [0, 1] coordinates
    "paper_supervised": dict(PAPER, **ABLATIONS["supervised"]),
    "restarts_supervised": dict(RESTARTS, **ABLATIONS["supervised"]),
    "paper_softmax_supervised": dict(PAPER, normalisation="softmax", **ABLATIONS["supervised"]),
}


def heatmap_diagnostics(det, x, y):
    """Centre pull and concentration of the heatmaps of images `x` with truth `y` (normalised): `centre_slope`, the
    least-squares b in (prediction - truth) = b (image centre - truth) (0: no pull towards the centre, 1: every
    landmark at the centre), per landmark (`centre_slope_per_landmark`), and the median fraction of heatmap mass
    farther than 3 network pixels from the truth (`far_mass`)."""
    h = det.predict_heatmaps(x).double()
    B, K, H, W = h.shape
    p = h.reshape(B, K, -1)
    p = p / p.sum(-1, keepdim=True)
    g = pixel_grid((H, W), dtype=torch.float64).reshape(-1, 2)
    half = torch.tensor([W / 2, H / 2], dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    dist = (((g[None, None] - yt[:, :, None]) * half) ** 2).sum(-1).sqrt()
    pred = (p @ g) - yt                                         # (B, K, 2) error, normalised
    slope = lambda e, c: float((e * c).sum() / (c * c).sum())
    per = [slope(pred[:, k], -yt[:, k]) for k in range(K)]
    return dict(centre_slope=slope(pred, -yt), centre_slope_per_landmark=per,
                centre_slope_landmark_sd=float(np.std(per)), far_mass=float((p * (dist > 3)).sum(-1).median()))


class _Diagnosed(SemiSupervisedDetector):
    "A detector that records the heatmap diagnostics of the unlabelled images at the start of every round."
    def _round(self, r, xlw, yl, xuw, truth=None, val=None):
        self.model_.eval()
        with torch.no_grad(): _, h = self._predict_norm(xuw, heatmaps=True)
        self._diag = getattr(self, "_diag", []) + [_diag_of(h, truth)]
        rec, hist = super()._round(r, xlw, yl, xuw, truth, val)
        return {**rec, **self._diag[-1]}, hist


def _diag_of(h, truth):
    "`heatmap_diagnostics` from heatmaps already computed."
    class _H:
        def predict_heatmaps(self, x): return h
    return heatmap_diagnostics(_H(), None, truth)


def synthetic_centre_bias(size=(128, 104), peak=4.0, width=1.5, biases=(-4, -6, -8, -10, -12, -14)):
    """Error of the integral coordinate of one sigmoid heatmap: a Gaussian bump of logits rising from the background
    logit `b` to `peak` (width in pixels) at (20, 30), on an image of `size`; the same logits under a spatial softmax.
    Errors in original pixels (network pixel = 1340 / W by 1671 / H original pixels)."""
    H, W = size
    scale = np.array([1340 / W, 1671 / H])
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    bump = torch.exp(-((xx - 20) ** 2 + (yy - 30) ** 2) / (2 * width ** 2))
    out = {}
    for b in biases:
        logit = b + (peak - b) * bump
        err = lambda hm: float(np.sqrt((((norm_to_index(integral_coordinates(hm[None, None])[0][0, 0].numpy(),
                                                        (H, W)) - [20, 30]) * scale) ** 2).sum()))
        sig = torch.sigmoid(logit)
        soft = torch.softmax(logit.flatten(), 0).view(H, W)
        out[str(b)] = dict(background_mass=float(torch.sigmoid(torch.tensor(float(b))) * H * W / sig.sum()),
                           error_sigmoid_px=err(sig), error_softmax_px=err(soft))
    return out


def fidelity(a):
    "Run the FIDELITY settings (end to end: pre-training, rounds, fine-tuning) and the centre-bias measurements."
    x, y, gt, other, names = load_cephalograms(tuple(a.size), bl.require_data(a, "cephalograms_hamedan"))
    pool, test = split(len(x))
    lab, unl = pool[:a.labels[0]], pool[a.labels[0]:]
    H, W = a.size
    spacing = [PIXEL_MM * TO_ORIGINAL * HALF[1] / W, PIXEL_MM * TO_ORIGINAL * HALF[0] / H]   # mm per network pixel
    name = "semisup_fidelity"
    synthetic = dict(size=[128, 104], by_background_logit=synthetic_centre_bias())
    bl.write_results(a, a.dev, {"synthetic_centre_bias": synthetic}, name=name, merge=True)
    for s in a.settings:
        for seed in a.seeds:
            kw = dict(epochs_pretrain=a.epochs_pretrain, rounds=a.rounds, epochs_round=a.epochs_round,
                      epochs_finetune=a.epochs_finetune, batch_size=a.batch_size, z_threshold=a.z, spacing=spacing,
                      random_state=seed, device=a.device, progress=False)
            kw.update(FIDELITY[s])
            st = kw.get("self_training", True)
            with bl.clock(a.dev) as c:
                det = _Diagnosed(**kw).fit(x[lab], y[lab], unlabelled=x[unl] if st else None,
                                           unlabelled_landmarks=y[unl] if st else None)
            r = errors(det.predict(x[test]), gt[test])
            rec = dict(setting=s, seed=seed, params={k: v for k, v in kw.items() if k != "spacing"}, mre=r["mre"],
                       sd=r["sd"], sdr=r["sdr"], rounds=det.rounds_,
                       test_heatmaps=heatmap_diagnostics(det, x[test], y[test]),
                       unlabelled_final_mre_mm=getattr(det, "unlabelled_mre_", None), seconds=c.seconds)
            bl.write_results(a, a.dev, {"runs": {f"{s}/seed{seed}": rec}}, name=name, merge=True)
            sdr20 = 100 * next(iter(r["sdr"].values()))
            print(f"{s:<26s} seed {seed}: test MRE {r['mre']:.1f} ({r['sd']:.1f}) px, SDR@20 {sdr20:.1f}%"
                  f", centre slope {rec['test_heatmaps']['centre_slope']:+.3f} [{c.seconds:.0f} s]"
                  + "".join(f"\n    round {d['round']}: raw {d['mre_raw'] / PIXEL_MM:.1f} px, slope "
                            f"{d['centre_slope']:+.3f} (sd over landmarks {d['centre_slope_landmark_sd']:.3f}), far "
                            f"mass {d['far_mass']:.2f}" for d in det.rounds_), flush=True)


def fidelity_table(path):
    "Print the FIDELITY results of `path`: per setting, the mean over seeds (and each seed's value)."
    doc = json.loads(Path(path).read_text())["results"]
    syn = doc.get("synthetic_centre_bias")
    if syn:
        print(f"Integral coordinate of one synthetic heatmap on {syn['size'][0]}x{syn['size'][1]} (error, original px)")
        print(f"{'background logit':>16} {'background mass':>15} {'sigmoid, sum':>12} {'softmax':>8}")
        for b, r in syn["by_background_logit"].items():
            print(f"{b:>16} {r['background_mass']:15.3f} {r['error_sigmoid_px']:12.1f} {r['error_softmax_px']:8.1f}")
    runs = doc.get("runs", {})
    by = {}
    for r in runs.values(): by.setdefault(r["setting"], []).append(r)
    mean = lambda v: sum(v) / len(v)
    each = lambda v, f="{:.1f}": "/".join(f.format(x) for x in v)
    print(f"\n{'setting':<26} {'test MRE px':>18} {'SDR@20 %':>16} {'pseudo raw px, rounds 1-3 (mean)':>34} "
          f"{'final unl.':>10} {'slope':>6}")
    for name, rs in by.items():
        m = [r["mre"] for r in rs]
        sdr = [100 * next(iter(r["sdr"].values())) for r in rs]
        raw = [mean([r["rounds"][i]["mre_raw"] / PIXEL_MM for r in rs]) for i in range(len(rs[0]["rounds"]))]
        fin = [r["unlabelled_final_mre_mm"] for r in rs if r.get("unlabelled_final_mre_mm") is not None]
        print(f"{name:<26} {mean(m):6.1f} ({each(m)}) {mean(sdr):5.1f} ({each(sdr)}) {each(raw):>34} "
              f"{mean(fin) / PIXEL_MM if fin else float('nan'):10.1f} "
              f"{mean([r['test_heatmaps']['centre_slope'] for r in rs]):+6.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=2, default=[128, 104], metavar=("H", "W"))
    p.add_argument("--labels", type=int, nargs="+", default=[20])
    p.add_argument("--variants", nargs="+", default=["supervised", "full"], choices=list(VARIANTS))
    p.add_argument("--epochs-pretrain", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs-round", type=int, default=3)
    p.add_argument("--epochs-finetune", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default 3e-3)")
    p.add_argument("--protocol", default="paper", choices=["paper", "restarts"],
                   help="SemiSupervisedDetector PROTOCOLS entry (default paper)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val", type=int, default=0, help="labelled validation images taken from the unlabelled pool: "
                   "every phase stops early on their L1 and keeps its best epoch (the --epochs-* are then maxima)")
    p.add_argument("--patience", type=int, default=10, help="with --val: epochs without validation improvement")
    p.add_argument("--z", type=float, default=2.0, help="abnormality threshold Z in mm (paper: 2 mm; 0.1 mm pixels)")
    p.add_argument("--train-options", default=None, help="JSON dict for SemiSupervisedDetector(train_options=...)")
    p.add_argument("--cache", default="/tmp/semisup_cache")
    p.add_argument("--tag", default="",
                   help="suffix of the result keys, e.g. '_long' for a variant with other settings")
    p.add_argument("--table", action="store_true", help="only print the tables of <out>/semisup_<device>[_quick].json")
    p.add_argument("--fidelity", action="store_true",
                   help="run the FIDELITY settings end to end into <out>/semisup_fidelity_<device>[_quick].json")
    p.add_argument("--settings", nargs="+", default=list(FIDELITY), choices=list(FIDELITY), help="with --fidelity")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="with --fidelity: training seeds")
    bl.common_args(p, quick_help="smoke run: 32x26 input, 2 epochs per phase, 1 round", threads=1)
    a = p.parse_args()
    a.dev = bl.setup(a)
    a.device = str(a.dev)
    a.extra = {"train_options": json.loads(a.train_options)} if a.train_options else {}
    if a.val: a.extra["train_options"] = {"patience": a.patience, **a.extra.get("train_options", {})}
    a.protocol_params = dict(PROTOCOLS[a.protocol], lr=a.lr)
    if a.quick:
        a.size, a.epochs_pretrain, a.rounds, a.epochs_round, a.epochs_finetune = [32, 26], 2, 1, 1, 2
    if a.table and a.fidelity: fidelity_table(bl.result_path(a, a.dev, "semisup_fidelity"))
    elif a.table: tables(bl.result_path(a, a.dev))
    elif a.fidelity: fidelity(a)
    else: run(a)
