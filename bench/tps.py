"""TPS fit + warp: shape_nb side by side with kornia and torch-tps on the same inputs.

    python bench/tps.py --device cuda                  # benchmark 1 on a GPU (2D B=32 256x256, 3D B=4 128^3)
    python bench/tps.py --device cpu --threads 2       # the CPU table
    python bench/tps.py --quick --device cpu           # CPU smoke run (seconds)

Options: --repeats N, and the common ones (bench/benchlib.py): --device auto|cpu|cuda, --threads, --quick,
--out bench/results, --seed 0. JSON: bench/results/tps_<device>[_quick].json.

Cases (issue defaults): GPU 2D B=32 256x256 K=30, 3D B=4 128^3 K=64; CPU 2D B=8 256x256 K=30, 3D B=4 64^3
K=64. Every method warps the same images with the same landmark pairs (structure at src -> dst). Accuracy
columns compare each method's sampling positions with the float64 reference (shape_nb in float64, which
matches scipy's RBFInterpolator to < 1e-8; checked here on one image with scipy itself): the positions are
read back by warping a coordinate image (channels = normalised x, y[, z]) with border padding. Times are
medians over repeats, after warm-up, with device synchronisation. `grid_sample on a ready grid` is the floor
that no TPS warp can beat.
"""
import argparse

import numpy as np
import torch
import torch.nn.functional as F

from shape_nb.core import pixel_grid
from shape_nb.tps import tps_grid, tps_warp_image

import benchlib as bl


def make_case(B, shape, K, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = len(shape)
    src = torch.rand(B, K, d, generator=g) * 1.6 - 0.8
    dst = src + 0.04 * torch.randn(B, K, d, generator=g)
    img = torch.rand(B, 1, *shape, generator=g)
    img = F.avg_pool2d(img, 5, 1, 2) if d == 2 else F.avg_pool3d(img, 5, 1, 2)
    return img.to(device), src.to(device), dst.to(device)


def coord_image(B, shape, device):
    "Image whose channels are the normalised pixel coordinates: warping it reads back the sampling grid."
    g = pixel_grid(shape, device=device)
    return g.movedim(-1, 0)[None].expand(B, -1, *[-1] * len(shape)).contiguous()


def grid_error(warp, B, shape, device, ref_grid):
    "Max |sampling position - reference| (normalised units) of a warp function image -> image."
    got = warp(coord_image(B, shape, device)).movedim(1, -1)
    ok = (ref_grid.abs() < 1 - 2 / min(shape)).all(-1)   # ignore positions clamped by border padding
    return float((got.double() - ref_grid)[ok].abs().max())


def kornia_warp(img, src, dst, centers="src"):
    "kornia as documented (kernel centres = src), or with the centres of its own fit (dst: the textbook TPS)."
    from kornia.geometry.transform import get_tps_transform, warp_image_tps
    kw, aw = get_tps_transform(dst, src)
    return warp_image_tps(img, src if centers == "src" else dst, kw, aw, align_corners=False, padding_mode="border")


def torch_tps_warp(img, src, dst):
    from torch_tps import ThinPlateSpline
    shape = img.shape[2:]
    q = pixel_grid(shape, device=img.device).reshape(-1, len(shape))
    grids = []
    for b in range(img.shape[0]):   # torch-tps fits one point set at a time
        tps = ThinPlateSpline(alpha=0.0, device=img.device)
        tps.fit(dst[b], src[b])
        grids.append(tps.transform(q).reshape(*shape, len(shape)))
    return F.grid_sample(img, torch.stack(grids).to(img.dtype), align_corners=False, padding_mode="border")


def run_case(name, B, shape, K, device, repeats, seed=0):
    img, src, dst = make_case(B, shape, K, device, seed)
    d = len(shape)
    ref = tps_grid(src.double(), dst.double(), shape)                      # float64 reference positions
    if d == 2:  # independent check of the reference on one image
        from scipy.interpolate import RBFInterpolator
        q = pixel_grid(shape, dtype=torch.float64).reshape(-1, 2).numpy()
        sc = RBFInterpolator(dst[0].double().cpu().numpy(), src[0].double().cpu().numpy(),
                             kernel="thin_plate_spline", degree=1)(q)
        ref_vs_scipy = float(np.abs(ref[0].reshape(-1, 2).cpu().numpy() - sc).max())
    else:
        ref_vs_scipy = None
    ours_img = tps_warp_image(img, src, dst)
    ready = tps_grid(src, dst, shape)
    methods = {
        "shape_nb fit+warp": lambda im=img: tps_warp_image(im, src, dst),
        "shape_nb fit+warp, field 1/2":
            lambda im=img: tps_warp_image(im, src, dst, field_shape=[s // 2 for s in shape]),
        "shape_nb, no input checks": lambda im=img: tps_warp_image(im, src, dst, validate=False),
        "kornia fit+warp": (lambda im=img: kornia_warp(im, src, dst)) if d == 2 else None,
        "kornia, centres = its fit's (textbook)": (lambda im=img: kornia_warp(im, src, dst, "dst")) if d == 2 else None,
        "torch-tps fit+transform+grid_sample": lambda im=img: torch_tps_warp(im, src, dst),
        "grid_sample on a ready grid (floor)":
            lambda im=img: F.grid_sample(im, ready, align_corners=False, padding_mode="border"),
    }
    rows = []
    for m, fn in methods.items():
        if fn is None:
            rows.append(dict(case=name, method=m, ms=None, note="2D only")); continue
        try:
            ms = bl.median(bl.timed(fn, device, warmup=2, repeats=repeats)) * 1e3
            out = fn()
            img_diff = float((out - ours_img).abs().max())
            gerr = grid_error(lambda ci: fn(ci), B, shape, device, ref)
            rows.append(dict(case=name, method=m, ms=ms, max_grid_err=gerr, max_img_diff_vs_shape_nb=img_diff))
        except Exception as e:   # a peer failing (e.g. out of memory) is reported, not fatal
            rows.append(dict(case=name, method=m, ms=None, note=f"{type(e).__name__}: {str(e)[:80]}"))
    return rows, ref_vs_scipy


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed calls per method (default 20 on CUDA, 5 on the CPU, 2 with --quick)")
    bl.common_args(ap, quick_help="tiny sizes (a smoke test of this script)")
    a = ap.parse_args()
    dev = bl.setup(a)
    gpu = dev.type == "cuda"
    if a.quick:
        cases = [("2D B=2 32x32 K=10", 2, (32, 32), 10), ("3D B=1 12^3 K=12", 1, (12, 12, 12), 12)]
    elif gpu:
        cases = [("2D B=32 256x256 K=30", 32, (256, 256), 30), ("3D B=4 128^3 K=64", 4, (128, 128, 128), 64)]
    else:
        cases = [("2D B=8 256x256 K=30", 8, (256, 256), 30), ("3D B=4 64^3 K=64", 4, (64, 64, 64), 64)]
    repeats = a.repeats or (2 if a.quick else 20 if gpu else 5)
    print(f"TPS fit+warp benchmark on {bl.describe(dev)}, median of {repeats}")
    all_rows, checks = [], {}
    for name, B, shape, K in cases:
        rows, chk = run_case(name, B, shape, K, dev, repeats, a.seed)
        all_rows += rows; checks[name] = chk
        print(f"\n{name}"
              + (f"   (float64 reference vs scipy RBFInterpolator: max {chk:.1e})" if chk is not None else ""))
        base = next(r["ms"] for r in rows if r["method"] == "shape_nb fit+warp")
        print(f"  {'method':40s} {'ms':>9s} {'vs shape_nb':>12s} {'max grid err':>13s} {'max img diff':>13s}")
        for r in rows:
            if r["ms"] is None:
                print(f"  {r['method']:40s} {'n/a':>9s}   {r.get('note', '')}"); continue
            print(f"  {r['method']:40s} {r['ms']:9.2f} {r['ms'] / base:11.2f}x {r['max_grid_err']:13.2e} "
                  f"{r['max_img_diff_vs_shape_nb']:13.2e}")
    print()
    bl.write_results(a, dev, dict(repeats=repeats, reference_vs_scipy=checks, rows=all_rows))


if __name__ == "__main__":
    main()
