"""Landmark discovery (Bhalodia et al., MICCAI 2020) against hand-computed cases: kappa_F = ||L||_F ||L^-1||_F of a
TPS system built by hand with numpy, the sum/mean image-term conventions (lam_mean = lam_sum / n_pixels gives the
same loss and gradients up to the factor n_pixels, and the same training), and the leave-one-out importance over
all ordered pairs against a brute-force loop."""
import numpy as np
import pytest
import torch

from shape_nb.core import InputError
from shape_nb.data import all_pairs
from shape_nb.discovery import (LandmarkDiscovery, discovery_loss, fixed_points, image_match, register_pair,
                                shape_zscores)
from shape_nb.phantoms import tps_phantoms
from shape_nb.shape import PPCA, ShapePCA
from shape_nb.tps import tps_condition, tps_fit

SMALL = dict(channels=(4, 8), batch_size=4, progress=False, device="cpu", random_state=0)


# ---- kappa_F on a hand-made TPS system ----

def tps_system_by_hand(points):
    "L = [[K, P], [P^T, 0]] with K_ij = r_ij^2 log r_ij (0 on the diagonal) and P = [1, x, y], in numpy."
    n = len(points)
    r = np.linalg.norm(points[:, None] - points[None], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        K = np.where(r > 0, r ** 2 * np.log(r), 0.0)
    P = np.c_[np.ones(n), points]
    return np.block([[K, P], [P.T, np.zeros((3, 3))]])


def test_kappa_f_matches_numpy_norms():
    pts = np.array([[-0.5, -0.4], [0.6, -0.3], [0.1, 0.7], [-0.2, 0.1], [0.45, 0.5]])
    L = tps_system_by_hand(pts)
    want = np.linalg.norm(L, "fro") * np.linalg.norm(np.linalg.inv(L), "fro")
    assert want == pytest.approx(np.linalg.cond(L, "fro"), rel=1e-12)
    t = torch.as_tensor(pts)[None]
    params = tps_fit(t, t + 0.05)
    np.testing.assert_allclose(params.L[0].numpy(), L, rtol=1e-12, atol=1e-15)
    assert tps_condition(params.L).item() == pytest.approx(want, rel=1e-10)


def test_kappa_f_in_the_loss_is_the_target_system_with_the_fixed_points():
    imgs, _ = tps_phantoms(2, 16, seed=0)
    pts = np.array([[-0.5, -0.4], [0.6, -0.3], [0.1, 0.7], [-0.2, 0.1]])
    corners = fixed_points("corners", 2, torch.float64)
    L = tps_system_by_hand(np.r_[corners.numpy(), pts])                   # the target set: corners first
    want = np.linalg.norm(L, "fro") * np.linalg.norm(np.linalg.inv(L), "fro")
    lt = torch.as_tensor(pts)[None]
    ls = lt + 0.03
    loss, parts = discovery_loss(imgs[:1].double(), imgs[1:].double(), ls, lt, lam=0.5, fixed=corners)
    assert parts["kappa"].item() == pytest.approx(want, rel=1e-10)
    assert loss.item() == pytest.approx(parts["match"].item() + 0.5 * want, rel=1e-12)


# ---- the sum / mean conventions of the image term ----

def test_image_term_sum_and_mean():
    a, b = torch.rand(3, 1, 8, 6, dtype=torch.float64), torch.rand(3, 1, 8, 6, dtype=torch.float64)
    d2 = ((a - b) ** 2).flatten(1).numpy()
    np.testing.assert_allclose(image_match(a, b).numpy(), d2.sum(1), rtol=1e-12)
    np.testing.assert_allclose(image_match(a, b, image_term="mean").numpy(), d2.mean(1), rtol=1e-12)
    with pytest.raises(InputError, match="'sum' or 'mean'"):
        image_match(a, b, image_term="median")


def test_lambda_conversion_same_loss_and_gradients_up_to_n_pixels():
    imgs, cps = tps_phantoms(4, 32, seed=1)
    corners = fixed_points("corners", 2, torch.float64)
    n_pix, lam_sum = 32 * 32, 1e-4
    got = {}
    for term, lam in (("sum", lam_sum), ("mean", lam_sum / n_pix)):
        ls = (cps[:2].double() + 0.02).requires_grad_()
        lt = cps[2:].double().requires_grad_()
        loss, parts = discovery_loss(imgs[:2].double(), imgs[2:].double(), ls, lt, lam, corners, image_term=term)
        loss.backward()
        got[term] = (loss.detach(), ls.grad.clone(), lt.grad.clone(), parts["kappa"])
    for s, m in zip(got["sum"][:3], got["mean"][:3]):
        torch.testing.assert_close(s, n_pix * m, rtol=1e-12, atol=0)
    assert got["sum"][3] == got["mean"][3]                          # kappa_F does not depend on the convention
    # the same lam with the mean weighs kappa_F n_pix times more, relative to the image term: not the same optimum
    ls = (cps[:2].double() + 0.02).requires_grad_()
    loss_m, parts_m = discovery_loss(imgs[:2].double(), imgs[2:].double(), ls, cps[2:].double(), lam_sum, corners,
                                     image_term="mean")
    share_sum = lam_sum * got["sum"][3] / got["sum"][0]
    share_mean = lam_sum * parts_m["kappa"] / loss_m.detach()
    assert share_mean > 100 * share_sum


def test_lambda_conversion_trains_the_same():
    imgs, _ = tps_phantoms(5, 24, seed=2)
    n_pix = 24 * 24
    a = LandmarkDiscovery(n_landmarks=4, epochs=1, pairs="all", lam=1e-4, **SMALL).fit(imgs)
    b = LandmarkDiscovery(n_landmarks=4, epochs=1, pairs="all", lam=1e-4 / n_pix, image_term="mean", **SMALL).fit(imgs)
    ra, rb = a.history_["train"].records[0], b.history_["train"].records[0]
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
    assert rb["train_match"] == pytest.approx(ra["train_match"] / n_pix, rel=1e-5)
    torch.testing.assert_close(a.landmarks_, b.landmarks_, rtol=0, atol=1e-4)
    with pytest.raises(InputError, match="image_term must be"):
        LandmarkDiscovery(n_landmarks=4, image_term="max", **SMALL).fit(imgs)


# ---- leave-one-out importance over all pairs ----

def brute_force_importance(est, images):
    "Mean over all ordered pairs (i != j) of image_match(without landmark k) - image_match(all), one by one."
    x = est.whitener_.transform(images).double()
    lm = est.predict(images, all_landmarks=True).double()
    fx = fixed_points(est.fixed, 2, torch.float64)
    K, total, n_pairs = lm.shape[1], np.zeros(lm.shape[1]), 0
    for i in range(len(x)):
        for j in range(len(x)):
            if i == j: continue
            full = image_match(register_pair(x[i:i + 1], lm[i:i + 1], lm[j:j + 1], fx)[0], x[j:j + 1]).item()
            for k in range(K):
                keep = [m for m in range(K) if m != k]
                reg = register_pair(x[i:i + 1], lm[i:i + 1, keep], lm[j:j + 1, keep], fx)[0]
                total[k] += image_match(reg, x[j:j + 1]).item() - full
            n_pairs += 1
    return total / n_pairs, n_pairs


def test_importance_over_all_pairs_matches_brute_force():
    imgs, _ = tps_phantoms(5, 24, seed=3)
    est = LandmarkDiscovery(n_landmarks=5, epochs=1, pairs_per_epoch=16, **SMALL).fit(imgs)
    want, n_pairs = brute_force_importance(est, imgs)
    assert n_pairs == 20 == len(all_pairs(5))
    got = est.compute_importance(imgs)                              # default: all 20 ordered pairs (<= max_pairs)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(est.compute_importance(imgs, max_pairs=None), got)
    assert not np.allclose(est.compute_importance(imgs, max_pairs=5), want, rtol=1e-3)   # a random subset differs
    with pytest.raises(InputError, match="max_pairs must be"):
        est.compute_importance(imgs, max_pairs=0)


# ---- Z-scores: the Mahalanobis distance over the kept PCA modes ----

def test_zscores_pca_space_by_hand():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(20, 4, 2)) * [1.0, 0.3] + rng.normal(size=(1, 4, 2))
    new = rng.normal(size=(5, 4, 2)) + ref.mean(0)
    F = ref.reshape(20, -1)
    mu = F.mean(0)
    w, V = np.linalg.eigh(np.cov(F.T))
    w, V = w[::-1], V[:, ::-1]
    L = int(np.searchsorted(np.cumsum(w) / w.sum(), 0.9, side="right")) + 1
    b = (new.reshape(5, -1) - mu) @ V[:, :L]
    want = np.sqrt((b ** 2 / w[:L]).sum(1))
    np.testing.assert_allclose(shape_zscores(ref, new), want, rtol=1e-8)
    assert ShapePCA(0.9).fit(ref).n_components_ == L
    # the PPCA variants add the residual outside the kept modes
    for noise in ("full", "rank"):
        np.testing.assert_allclose(shape_zscores(ref, new, noise=noise),
                                   PPCA(0.9, noise_average=noise).fit(ref).mahalanobis(new), rtol=1e-12)
    # translation: the same as centring every shape first
    shifted = new + rng.normal(size=(5, 1, 2))
    np.testing.assert_allclose(shape_zscores(ref, shifted, align="translation"),
                               shape_zscores(ref - ref.mean(1, keepdims=True), new - new.mean(1, keepdims=True)),
                               rtol=1e-10)
    with pytest.raises(InputError, match="align must be one of"):
        shape_zscores(ref, new, align="affine")
