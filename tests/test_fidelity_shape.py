"""The DeepSSM paper's evaluation formulas on hand-computed cases: eq. 12 (RMSE as the mean of the per-axis RMSEs),
the per-point RMSE, eq. 13 (PPCA noise variance over D - L) and eq. 15 (signed point-wise Mahalanobis value)."""
import math

import numpy as np
import pytest
import sklearn
import torch
from scipy.linalg import sqrtm
from sklearn.decomposition import PCA

from shape_nb.core import InputError
from shape_nb.metrics import correspondence_rmse, pointwise_error
from shape_nb.shape import PPCA


# ---- eq. 12 and the per-point RMSE ----

def three_points():
    "3 points in 3D; errors (x, y, z): (1, 2, 2), (0, 0, 3), (4, 0, 0)."
    true = np.array([[0.0, 0, 0], [1, 1, 1], [2, -1, 0.5]])
    err = np.array([[1.0, 2, 2], [0, 0, 3], [4, 0, 0]])
    return true + err, true


def test_eq12_three_points():
    pred, true = three_points()
    # RMSE_x = sqrt((1 + 0 + 16) / 3), RMSE_y = sqrt((4 + 0 + 0) / 3), RMSE_z = sqrt((4 + 9 + 0) / 3)
    want = (math.sqrt(17 / 3) + math.sqrt(4 / 3) + math.sqrt(13 / 3)) / 3          # 1.8723...
    assert correspondence_rmse(pred, true) == pytest.approx([want], rel=1e-12)
    assert want == pytest.approx(1.87228, abs=1e-5)
    # the Euclidean kind: sqrt((9 + 9 + 16) / 3) = sqrt(34 / 3) = 3.3665
    assert correspondence_rmse(pred, true, kind="euclidean") == pytest.approx([math.sqrt(34 / 3)], rel=1e-12)


def test_eq12_per_shape_then_mean_and_spacing():
    pred, true = three_points()
    P = np.stack([pred, true]); T = np.stack([true, true])                        # shape 1 is exact
    r = correspondence_rmse(P, T)
    assert r.shape == (2,) and r[1] == 0
    assert r.mean() == pytest.approx((math.sqrt(17 / 3) + math.sqrt(4 / 3) + math.sqrt(13 / 3)) / 6, rel=1e-12)
    # spacing (2, 1, 0.5) scales the axes: RMSE_x * 2, RMSE_z / 2
    want = (2 * math.sqrt(17 / 3) + math.sqrt(4 / 3) + 0.5 * math.sqrt(13 / 3)) / 3
    assert correspondence_rmse(pred, true, spacing=(2, 1, 0.5)) == pytest.approx([want], rel=1e-12)
    assert correspondence_rmse(torch.as_tensor(pred), torch.as_tensor(true)) == pytest.approx([r[0]], rel=1e-12)


def test_eq12_2d():
    true = np.zeros((2, 2))
    pred = np.array([[3.0, 0], [0, 4]])                      # RMSE_x = 3/sqrt(2), RMSE_y = 4/sqrt(2)
    assert correspondence_rmse(pred, true) == pytest.approx([3.5 / math.sqrt(2)], rel=1e-12)
    assert correspondence_rmse(pred, true, kind="euclidean") == pytest.approx([math.sqrt(12.5)], rel=1e-12)


def test_eq12_isotropic_ratio():
    r = np.random.default_rng(0)
    t = r.normal(size=(4, 3000, 3))
    p = t + 0.2 * r.normal(size=t.shape)
    ratio = correspondence_rmse(p, t, kind="euclidean") / correspondence_rmse(p, t)
    assert ratio == pytest.approx(np.full(4, math.sqrt(3)), rel=0.01)


def test_pointwise_rmse():
    pred, true = three_points()
    pe = pointwise_error(pred[None], true[None])
    # per point sqrt(|e|^2 / 3): |e|^2 = 9, 9, 16
    assert pe.mean == pytest.approx([math.sqrt(3), math.sqrt(3), 4 / math.sqrt(3)], rel=1e-12)
    assert pe.rmse == pytest.approx(pe.mean, rel=1e-12) and pe.std == pytest.approx([0, 0, 0])
    two = pointwise_error(np.stack([pred, true]), np.stack([true, true]))           # errors e and 0 per point
    assert two.mean == pytest.approx(pe.mean / 2, rel=1e-12)
    assert two.std == pytest.approx(pe.mean / 2, rel=1e-12)
    assert two.rmse == pytest.approx(pe.mean / math.sqrt(2), rel=1e-12)
    e = pointwise_error(pred[None], true[None], kind="euclidean")
    assert e.mean == pytest.approx([3, 3, 4], rel=1e-12)
    with pytest.raises(InputError, match="kind must be"):
        pointwise_error(pred[None], true[None], kind="rms")


# ---- eq. 13 ----

def exact_population(n, K, d, lam, seed=0):
    "n shapes whose sample covariance has exactly the eigenvalues `lam` (and zeros)."
    r = np.random.default_rng(seed)
    Q = np.linalg.qr(r.normal(size=(K * d, len(lam))))[0]
    H = np.linalg.qr(np.c_[np.ones(n), r.normal(size=(n, len(lam)))])[0][:, 1:]
    F = r.normal(size=K * d) + (H * np.sqrt((n - 1) * np.asarray(lam))) @ Q.T
    return F.reshape(n, K, d)


LAM = np.array([8.0, 4.0, 2.0, 1.0, 0.5, 0.25])


@pytest.mark.parametrize("L", [1, 2, 4])
def test_eq13_known_eigenvalues(L):
    X = exact_population(12, 6, 3, LAM)                                              # n = 12 < D = 18, rank 6
    D = 18
    want = LAM[L:].sum() / (D - L)
    pp = PPCA(L).fit(X)
    assert pp.noise_average == "full"
    assert pp.noise_variance_ == pytest.approx(want, rel=1e-10)
    ev = np.linalg.eigvalsh(np.cov(X.reshape(12, -1), rowvar=False))[::-1]          # D eigenvalues, 12 of them ~0
    assert pp.noise_variance_ == pytest.approx(ev[L:].sum() / (D - L), rel=1e-10)
    rank = PPCA(L, noise_average="rank").fit(X).noise_variance_
    assert rank == pytest.approx(LAM[L:].mean(), rel=1e-10)
    assert rank / pp.noise_variance_ == pytest.approx((D - L) / (len(LAM) - L), rel=1e-10)


def test_eq13_sklearn_more_shapes_than_dimensions():
    r = np.random.default_rng(1)
    F = r.normal(size=(60, 12)) * np.linspace(3, 0.2, 12)                            # n = 60 > D = 12
    for L in (2, 5):
        sk = PCA(L).fit(F)
        pp = PPCA(L).fit(F.reshape(60, 4, 3))
        assert pp.noise_variance_ == pytest.approx(sk.noise_variance_, rel=1e-10)
        assert PPCA(L, noise_average="rank").fit(F.reshape(60, 4, 3)).noise_variance_ == pytest.approx(
            sk.noise_variance_, rel=1e-10)


@pytest.mark.skipif(tuple(int(v) for v in sklearn.__version__.split(".")[:2]) < (1, 5),
                    reason="svd_solver='covariance_eigh' needs scikit-learn 1.5")
def test_eq13_sklearn_fewer_shapes_than_dimensions():
    X = exact_population(12, 6, 3, LAM)
    F = X.reshape(12, -1)
    L = 2
    pp = PPCA(L).fit(X)
    # the covariance eigen-solver averages all D - L discarded eigenvalues, as eq. 13
    assert pp.noise_variance_ == pytest.approx(PCA(L, svd_solver="covariance_eigh").fit(F).noise_variance_, rel=1e-8)
    # the SVD solver divides by min(n, D) - L = n - L instead
    assert PCA(L, svd_solver="full").fit(F).noise_variance_ == pytest.approx(LAM[L:].sum() / (12 - L), rel=1e-8)


# ---- eq. 15 ----

@pytest.mark.parametrize("K,d,n", [(6, 3, 9), (10, 3, 40), (8, 2, 12)])
def test_eq15_against_dense(K, d, n):
    r = np.random.default_rng(K * d)
    modes = r.normal(size=(K * d, K * d)) * 0.7 ** np.arange(K * d)
    X = r.normal(size=(K, d)) + (r.normal(size=(n, K * d)) @ modes.T).reshape(n, K, d) * 0.1
    Y = X[:3] + 0.05 * r.normal(size=(3, K, d))
    pp = PPCA(3).fit(X)
    # S from its definition, not from the model's helpers
    F = X.reshape(n, -1)
    mu = F.mean(0)
    w, V = np.linalg.eigh(np.cov(F, rowvar=False))
    w, V = w[::-1], V[:, ::-1]
    s2 = w[3:].clip(0, None).sum() / (K * d - 3)
    S = (V[:, :3] * w[:3]) @ V[:, :3].T + s2 * np.eye(K * d)
    assert pp.noise_variance_ == pytest.approx(s2, rel=1e-8)
    S_ih = np.real(sqrtm(np.linalg.inv(S)))
    normals = r.normal(size=(K, d))
    unit = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    dev = Y.reshape(3, -1) - mu
    want = np.array([[unit[k] @ (S_ih[k * d:(k + 1) * d] @ v) for k in range(K)] for v in dev])
    got = pp.pointwise_mahalanobis(Y, normals)
    assert got.shape == (3, K)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert (got < 0).any() and (got > 0).any()                                       # signed
    np.testing.assert_allclose(pp.whiten(Y).reshape(3, -1), dev @ S_ih, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    # the whitened slices add up to the whole-shape distance
    wh = pp.pointwise_mahalanobis(Y, kind="whitened")
    np.testing.assert_allclose((wh ** 2).sum(1), pp.mahalanobis(Y) ** 2, rtol=1e-8)
    # per-shape normals
    per = np.broadcast_to(normals, (3, K, d)).copy()
    per[1] *= -1
    got2 = pp.pointwise_mahalanobis(Y, per)
    np.testing.assert_allclose(got2, want * np.array([1, -1, 1])[:, None], rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_eq15_needs_normals_and_severity_reductions():
    X = exact_population(12, 6, 3, LAM)
    pp = PPCA(2).fit(X)
    Y = X[:4] + 0.1
    normals = np.tile([0.0, 0, 1], (6, 1))
    with pytest.raises(InputError, match="pass normals"):
        pp.pointwise_mahalanobis(Y)
    with pytest.raises(InputError, match="normals are used by kind='normal' only"):
        pp.pointwise_mahalanobis(Y, normals, kind="whitened")
    with pytest.raises(InputError, match="reduce must be"):
        pp.severity(Y, "median", normals)
    with pytest.raises(TypeError):
        pp.severity(Y)                                                               # the reduction is not implied
    pw = pp.pointwise_mahalanobis(Y, normals)
    np.testing.assert_allclose(pp.severity(Y, "max", normals), pw.max(1))
    np.testing.assert_allclose(pp.severity(Y, "mean", normals), pw.mean(1))
    np.testing.assert_allclose(pp.severity(Y, "max_abs", normals), np.abs(pw).max(1))
    np.testing.assert_allclose(pp.severity(Y, "mean_abs", normals), np.abs(pw).mean(1))


def test_rank_checkpoint_restores_rank():
    X = exact_population(12, 6, 3, LAM)
    old = PPCA(2, noise_average="rank").fit(X)
    back = PPCA.from_state_dict(old.state_dict())
    assert back.noise_average == "rank" and back.noise_variance_ == old.noise_variance_
