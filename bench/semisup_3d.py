"""Semi-supervised landmark detection (paper 3) on 3D folders: TPS-warped copies of the real head CT, written as NIfTI
files with 3D Slicer markups and run through `train_from_folder` / `predict_folder`; print a table and write JSON.

    python bench/semisup_3d.py                      # the default run: ~13 min on one CPU thread
    python bench/semisup_3d.py --quick --device cpu # a smoke run (seconds)

Data: ../shared/data/head_ct/cranium_ct.nrrd (or $SHAPE_NB_DATA/head_ct), one head CT of 256 x 256 x 108 voxels of
0.957 x 0.957 x 1.5 mm, padded with air (PAD) to give the head room to move. Eight landmarks are placed on it once
(LANDMARKS: voxel indices of the file, found as the extreme points of its bone / skin masks: the vertex, the
opisthocranion and the nasion on the midline, the nose tip, the two euryons, the two zygions). The CT is resampled to
--template (D H W, default 64 80 80) and warped into --labelled + --unlabelled + --test copies by one thin-plate spline
each: its control points are the eight landmarks and a 3 x 3 x 3 grid, moved by a random similarity in mm (scale
0.9..1.1, rotation about the vertical and the lateral axis, shift) and independent offsets of --sigma (normalised
units), the image corners fixed. The TPS moves the anatomy at each landmark exactly to its moved control point, so
the moved landmarks are the truth of each copy. Each copy is a NIfTI file of the template's spacing with its own
origin and, for every other copy, an oblique direction; the labelled copies get a `.mrk.json` (LPS mm, through the
file's geometry), the test copies keep their truth in memory.

Variants (same data, network and seed; `random_state` fixes the initialisation, batches and augmentation):
  supervised          train_from_folder(self_training=False): pre-training + fine-tuning on the labelled copies
  supervised_matched  the same with a longer fine-tuning: as many more optimiser steps as full's rounds take (a
                      control: does self-training help, or only its extra steps?)
  full                train_from_folder(unlabelled=...): pre-training, --rounds rounds of shape-regulated
                      self-training with the Region Attention loss on labelled + unlabelled copies, fine-tuning
  mean_shape          every test copy gets the mean of the labelled landmarks (normalised), as a baseline
The test copies go through predict_folder(markups=True); the errors are the distances in mm between the markups it
writes (LPS, through each file's geometry) and the truth. MRE, SD and SDR at 2, 4 and 8 mm (metrics.detection_report),
and the paired Wilcoxon signed-rank p-values of the per-image MREs of full against the two supervised variants.

Options: --size D H W (network input, default 32 40 40: voxels of about 6.1 x 7.3 x 6.6 mm), --labelled 10,
--unlabelled 40, --test 20, --epochs-pretrain 150, --epochs-round 5, --rounds 3, --epochs-finetune 30, --lr 3e-3,
--batch-size 4, --channels 8 16 32 64, --z 10 (abnormal-landmark threshold Z in mm; the paper's 2 mm is a third of a
voxel here), --sigma 0.03, --keep DIR (keep the files there instead of a temporary folder); the common ones
(bench/benchlib.py): --device, --threads (default 1), --quick, --out (default bench/results), --seed 0.
Writes <out>/semisup_3d_<device>[_quick].json.
"""
import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shape_nb.core import index_to_norm
from shape_nb.io import Image, file_stem, read_image, resize_image, write_image
from shape_nb.markups import norm_to_markups, read_markups, write_markups
from shape_nb.metrics import detection_report, radial_errors
from shape_nb.phantoms import image_corners
from shape_nb.semisup import predict_folder, train_from_folder
from shape_nb.tps import tps_warp_image

import benchlib as bl

# (x, y, z) voxel indices in cranium_ct.nrrd (y grows towards the face, z towards the vertex): the centroid of the
# extreme voxels of the largest bone (HU > 250) or skin (HU > -300) component, as the comment says
LANDMARKS = {
    "vertex": (131.0, 109.8, 103.0),          # bone, highest z
    "opisthocranion": (132.1, 17.0, 42.5),    # bone, lowest y within 4 voxels of the midline, z 30..80
    "nasion": (129.0, 215.0, 40.0),           # bone, highest y within 4 voxels of the midline, z 40..70
    "pronasale": (128.6, 243.0, 23.4),        # skin, highest y (the nose tip)
    "euryon_xmin": (58.0, 89.6, 59.3),        # bone, lowest x for z 40..70
    "euryon_xmax": (203.0, 90.1, 51.9),       # bone, highest x for z 40..70
    "zygion_xmin": (64.0, 158.8, 26.8),       # bone, lowest x for z 15..32 and y >= 150
    "zygion_xmax": (197.0, 152.0, 28.0),      # bone, highest x for z 15..32 and y >= 150
}
NAMES = list(LANDMARKS)
PAD = ((16, 16), (24, 24), (0, 0))   # slices of air added (array order z, y, x): the head fills the CT in z and y
RADII = (2.0, 4.0, 8.0)


def rotation(axis, deg):
    "3 x 3 rotation about coordinate axis 0 (x), 1 (y) or 2 (z)."
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    i, j = [k for k in range(3) if k != axis]
    R = np.eye(3); R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def population(template, points, half, n, sigma, seed):
    "`n` TPS-warped copies of `template` (1, 1, D, H, W) and the moved `points` (n, K, 3), normalised."
    rng = np.random.default_rng(seed)
    g = np.linspace(-0.5, 0.5, 3)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    cp = np.concatenate([points, grid])                                    # (K + 27, 3) control points
    moved = []
    for _ in range(n):
        A = rotation(2, rng.uniform(-8, 8)) @ rotation(0, rng.uniform(-5, 5)) * rng.uniform(0.9, 1.1)   # in mm
        moved.append((cp * half) @ A.T / half + rng.uniform(-0.04, 0.04, 3) + sigma * rng.standard_normal(cp.shape))
    moved = torch.tensor(np.stack(moved))
    corners = image_corners(3, torch.float64).expand(n, -1, -1)
    src = torch.cat([corners, torch.tensor(cp).expand(n, -1, -1)], 1)
    dst = torch.cat([corners, moved], 1)
    out = [tps_warp_image(template.expand(len(s), -1, -1, -1, -1), s, t, field_shape=(16, 20, 20))
           for s, t in zip(src.split(10), dst.split(10))]
    return torch.cat(out).float(), moved[:, :len(points)].numpy()


def write_set(folder, vols, pts, spacing, seed, offset, labelled):
    "NIfTI files (every other one oblique) of the copies; their markups when `labelled`; the truth in LPS mm by stem."
    rng, truth = np.random.default_rng(seed + offset), {}
    for i, (v, p) in enumerate(zip(vols, pts)):
        D = rotation(2, rng.uniform(-30, 30)) @ rotation(0, rng.uniform(-20, 20)) if i % 2 else None
        f = write_image(folder / f"ct{offset + i:03d}.nii.gz", v[0].numpy(), spacing=spacing,
                        origin=tuple(rng.uniform(-100, 100, 3)), direction=D)
        im = read_image(f)                                          # the geometry as stored (float32 in NIfTI)
        truth[file_stem(f)] = mm = norm_to_markups(p, im)
        if labelled: write_markups(folder.parent / "marks" / f"{file_stem(f)}.mrk.json", mm, NAMES)
    return truth


def test_errors(pred_dir, truth):
    "(n, K, 3) predicted and true LPS mm of the test copies, from the markups predict_folder wrote."
    stems = sorted(truth)
    pred = np.stack([read_markups(pred_dir / f"{s}.mrk.json").points for s in stems])
    return pred, np.stack([truth[s] for s in stems])


def report(pred, true):
    "Detection report (MRE, SD, SDR at RADII mm) and the per-image MREs."
    r = detection_report(pred, true, radii=RADII)
    r["per_image_mre"] = np.nanmean(radial_errors(pred, true), 1).tolist()
    return r


def wilcoxon(a, b):
    "Two-sided Wilcoxon signed-rank p-value of paired per-image MREs (None when scipy refuses)."
    from scipy.stats import wilcoxon as test
    try: return float(test(a, b).pvalue)
    except ValueError: return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=3, default=(32, 40, 40), metavar=("D", "H", "W"))
    ap.add_argument("--template", type=int, nargs=3, default=(64, 80, 80), metavar=("D", "H", "W"))
    ap.add_argument("--labelled", type=int, default=10)
    ap.add_argument("--unlabelled", type=int, default=40)
    ap.add_argument("--test", type=int, default=20)
    ap.add_argument("--epochs-pretrain", type=int, default=150)
    ap.add_argument("--epochs-round", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs-finetune", type=int, default=30)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--channels", type=int, nargs="+", default=(8, 16, 32, 64))
    ap.add_argument("--z", type=float, default=10.0, help="abnormal-landmark threshold Z, mm (default 10)")
    ap.add_argument("--sigma", type=float, default=0.03, help="control-point offsets, normalised units")
    ap.add_argument("--keep", default=None, help="write the files into this folder (default: a temporary one)")
    bl.common_args(ap, quick_help="a smoke run: 8 x 16 x 16 input, 4 + 4 + 4 copies, 2 epochs per phase",
                   threads=1)
    a = ap.parse_args()
    if a.quick:
        a.size, a.template, a.labelled, a.unlabelled, a.test = (8, 16, 16), (16, 24, 24), 4, 4, 4
        a.epochs_pretrain, a.epochs_round, a.rounds, a.epochs_finetune, a.channels = 2, 1, 1, 1, (4, 8)
    dev = bl.setup(a)
    root = bl.require_data(a, "head_ct")
    t0 = time.perf_counter()
    ct = read_image(root / "head_ct" / "cranium_ct.nrrd")
    hu = np.pad(np.clip(ct.array, -1000, 2000), PAD, constant_values=-1000.0)   # room to move: air around the head
    before = np.array([p[0] for p in PAD][::-1], dtype=float)                  # (x, y, z) voxels added before
    tpl = resize_image(Image(hu, ct.spacing, ct.to_mm(-before), ct.path, ct.direction), a.template)
    points = index_to_norm(np.array(list(LANDMARKS.values())) + before, hu.shape)   # normalised: any resampling
    n = a.labelled + a.unlabelled + a.test
    half = np.array(tpl.shape[::-1]) * np.array(tpl.spacing) / 2          # mm per normalised unit (x, y, z)
    vols, pts = population(torch.from_numpy(tpl.array).double()[None, None], points, half, n, a.sigma, a.seed)
    print(f"head CT {ct.shape} -> template {tuple(a.template)} ({', '.join(f'{s:.2f}' for s in tpl.spacing)} mm), "
          f"{n} TPS-warped copies in {time.perf_counter() - t0:.0f} s; network input {tuple(a.size)}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.keep or tmp)
        for sub in ("lab", "unl", "test", "marks"): (work / sub).mkdir(parents=True, exist_ok=True)
        L, U = a.labelled, a.labelled + a.unlabelled
        write_set(work / "lab", vols[:L], pts[:L], tpl.spacing, a.seed, 0, True)
        write_set(work / "unl", vols[L:U], pts[L:U], tpl.spacing, a.seed, L, False)
        truth = write_set(work / "test", vols[U:], pts[U:], tpl.spacing, a.seed, U, False)
        common = dict(size=a.size, epochs_pretrain=a.epochs_pretrain, epochs_finetune=a.epochs_finetune,
                      channels=tuple(a.channels), lr=a.lr, batch_size=a.batch_size, z_threshold=a.z,
                      random_state=a.seed, device=str(dev), progress=False, overwrite=True)
        steps = lambda m: math.ceil(m / a.batch_size)                   # optimiser steps per epoch on m copies
        extra = round(a.rounds * a.epochs_round * steps(U) / steps(L))    # labelled epochs with the rounds' steps
        results = {}
        for name, kw in (("supervised", dict(self_training=False)),
                         ("supervised_matched", dict(self_training=False, epochs_finetune=a.epochs_finetune + extra)),
                         ("full", dict(unlabelled=work / "unl", rounds=a.rounds, epochs_round=a.epochs_round))):
            with bl.clock(dev) as c:
                det = train_from_folder(work / "lab", work / "marks", work / name, **{**common, **kw})
            predict_folder(work / name / "semisup.pt", work / "test", work / f"{name}_pred", markups=True,
                           device=str(dev), overwrite=True)
            results[name] = report(*test_errors(work / f"{name}_pred", truth))
            results[name].update(train_seconds=c.seconds, epochs_finetune=det.epochs_finetune,
                                 spacing_mm=det.spacing_.tolist(), rounds=det.rounds_)
            print(f"  {name}: trained in {c.seconds:.0f} s")
        lab = json.loads((work / "supervised" / "summary.json").read_text())
        mean = pts[:L].mean(0)                                           # normalised mean of the labelled shapes
        stems = sorted(truth)
        pred = np.stack([norm_to_markups(mean, read_image(work / "test" / f"{s}.nii.gz")) for s in stems])
        results["mean_shape"] = report(pred, np.stack([truth[s] for s in stems]))
    full = results["full"]["per_image_mre"]
    paired = {f"full_vs_{k}": wilcoxon(full, results[k]["per_image_mre"]) for k in ("supervised", "supervised_matched")}
    res = dict(data=dict(source="head_ct/cranium_ct.nrrd", landmarks=LANDMARKS, template=list(a.template),
                         template_spacing_mm=list(tpl.spacing), network_input=list(a.size),
                         network_spacing_mm=lab["spacing"], n_labelled=a.labelled, n_unlabelled=a.unlabelled,
                         n_test=a.test, sigma=a.sigma, radii_mm=list(RADII)),
               variants=results, wilcoxon_p=paired, seconds=time.perf_counter() - t0)
    print(f"\ntest copies ({a.test}), errors in mm (network voxels {' x '.join(f'{s:.1f}' for s in lab['spacing'])}"
          f" mm):")
    print(f"  {'variant':<18} {'MRE':>6} {'SD':>6} " + " ".join(f"{'SDR ' + f'{r:g}':>7}" for r in RADII))
    for name in ("mean_shape", "supervised", "supervised_matched", "full"):
        r = results[name]
        print(f"  {name:<18} {r['mre']:6.2f} {r['sd']:6.2f} " + " ".join(f"{r['sdr'][f'{z:g}']:7.3f}" for z in RADII))
    print("  paired Wilcoxon p (per-image MRE): " + ", ".join(f"{k} {v:.3g}" for k, v in paired.items()
                                                              if v is not None))
    bl.write_results(a, dev, res)


if __name__ == "__main__":
    main()
