"""What the DeepSSM paper specifies, pinned: the image encoder's layer list (flatten, batch norm after every hidden
layer), TL-DeepSSM's autoencoder (two linear layers a side, a fixed learning rate of 1e-4), the summed losses of
eqs. 5-6, the latent focal loss of eq. 11 on the norm of the latent error vector, and the augmentation's KDE."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from shape_nb.deepssm import DeepSSM, _sample_shapes, ellipsoid_dataset, focal_loss, focal_threshold
from shape_nb.nets import BaseDeepSSM, CorrespondenceAE, DeepSSMEncoder, TLDeepSSM

TINY = dict(channels=(2, 2, 4, 4, 4), kernel_size=3, fc=(8, 6), batch_size=4, progress=False, device="cpu",
            patience=None)


def layer_list(module):
    return [type(m).__name__ for m in module.modules() if not isinstance(m, (nn.Sequential, DeepSSMEncoder))]


# ---- the image encoder ----

def test_encoder_is_the_papers_by_default():
    """Five conv-BN-PReLU blocks of 12..192 channels (5^3 kernels), max pools after the 1st, 3rd and 5th, flatten,
    then 384 and 96 wide fully connected layers each followed by batch norm and PReLU, and the output layer."""
    kw = DeepSSM()._enc_kw((64, 48, 40))
    assert (kw["pool_to"], kw["fc_norm"]) == (None, True)
    enc = DeepSSMEncoder(10, 3, **kw)
    block = ["Conv3d", "BatchNorm3d", "PReLU"]
    assert layer_list(enc) == (block + ["MaxPool3d"] + block * 2 + ["MaxPool3d"] + block * 2 + ["MaxPool3d"]
                               + ["Identity", "Flatten"] + ["Linear", "BatchNorm1d", "PReLU"] * 2 + ["Linear"])
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv3d)]
    assert [c.out_channels for c in convs] == [12, 24, 48, 96, 192] and {c.kernel_size for c in convs} == {(5, 5, 5)}
    lin = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(192 * 8 * 6 * 5, 384), (384, 96), (96, 10)]
    assert not any(isinstance(m, (nn.AdaptiveAvgPool3d, nn.AdaptiveAvgPool2d)) for m in enc.modules())


def test_fitted_models_carry_the_papers_encoder():
    d = ellipsoid_dataset(10, 16, 12, random_state=0)
    for kind in ("base", "tl"):
        est = DeepSSM(kind, epochs=1, latent=4, **TINY).fit(d["images"], d["points"])
        enc = est.model_.encoder if kind == "base" else est.model_.tflank
        assert enc.image_size == (16, 16, 16) and sum(isinstance(m, nn.BatchNorm1d) for m in enc.modules()) == 2


def test_reference_code_geometry_is_an_option():
    "Unpadded 5^3 convolutions and floor pooling (the ShapeWorks code): 118x69x88 volumes leave 8x2x4 cells."
    enc = DeepSSMEncoder(10, 3, **{**DeepSSM(conv_padding="valid")._enc_kw((118, 69, 88))})
    assert {m.padding for m in enc.modules() if isinstance(m, nn.Conv3d)} == {(0, 0, 0)}
    assert enc.head[1].in_features == 192 * 8 * 2 * 4
    small = DeepSSMEncoder(10, 3, **DeepSSM()._enc_kw((59, 35, 44)))                   # padded: ceil(size / 8)
    assert small.head[1].in_features == 192 * 8 * 5 * 6


def test_the_other_encoder_heads_stay_available():
    enc = DeepSSMEncoder(5, 3, pool_to=3, fc_norm=False)
    assert "AdaptiveAvgPool3d" in layer_list(enc) and "BatchNorm1d" not in layer_list(enc)
    assert enc(torch.randn(2, 1, 20, 24, 28)).shape == (2, 5)          # any size


# ---- TL-DeepSSM's autoencoder ----

def test_autoencoder_has_two_linear_layers_a_side():
    ae = CorrespondenceAE(30, 3, latent=8)
    lin = lambda s: [(m.in_features, m.out_features) for m in s if isinstance(m, nn.Linear)]
    assert lin(ae.encoder) == [(90, 1024), (1024, 8)] and lin(ae.decoder) == [(8, 1024), (1024, 90)]
    assert DeepSSM().ae_hidden == (1024,)
    net = TLDeepSSM(30, latent=8, hidden=DeepSSM().ae_hidden, channels=(2, 2, 2, 2, 2), pool_to=2)
    assert sum(isinstance(m, nn.Linear) for m in net.ae.modules()) == 4


def test_autoencoder_stage_runs_at_a_fixed_1e_4():
    d = ellipsoid_dataset(10, 16, 12, random_state=0)
    est = DeepSSM("tl", epochs=3, latent=4, ae_hidden=(16,), **TINY).fit(d["images"], d["points"])
    lrs = {k: [r["lr"] for r in h.records] for k, h in est.history_.items()}
    assert lrs["autoencoder"] == [1e-4] * 3
    assert lrs["tflank"][0] == pytest.approx(1e-3) and lrs["tflank"][-1] < 1e-3          # cosine, as before
    old = DeepSSM("tl", epochs=3, latent=4, ae_hidden=(16,), ae_lr=None, **TINY).fit(d["images"], d["points"])
    assert old.history_["autoencoder"].records[-1]["lr"] < 1e-3


# ---- eqs. 5, 6 and 11 ----

def test_eq5_eq6_sum_over_a_shape_and_average_the_batch():
    pred = torch.zeros(2, 2, 3)
    true = torch.tensor([[[1.0, 2, 2], [0, 0, 3]], [[0, 0, 0], [1, 0, 0]]])     # squared sums 9 + 9, 0 + 1
    est = DeepSSM("tl")
    assert est._point_loss(pred, true, "sum").item() == pytest.approx((18 + 1) / 2)
    assert est._point_loss(pred, true, "mean").item() == pytest.approx((9 + 9 + 0 + 1) / 4)   # eq. 2: per point
    z, zt = torch.zeros(2, 4), torch.tensor([[1.0, 1, 1, 1], [2, 0, 0, 0]])
    assert est._latent_loss(z, zt, "sum").item() == pytest.approx((4 + 4) / 2)
    assert est._latent_loss(z, zt, "mean").item() == pytest.approx(8 / 8)
    assert DeepSSM().tl_reduction == "sum"


def test_eq11_uses_the_norm_of_the_latent_error():
    est = DeepSSM("tl", focal=True, focal_a_latent=2.0)
    est.latent_c_ = 4.0
    z, zt = torch.zeros(1, 3), torch.tensor([[3.0, 0.0, 4.0]])                  # ||z - zt|| = 5
    want = 25 / (1 + math.exp(2.0 * (4.0 - 5.0)))                               # l^2 / (1 + exp(a (c - l)))
    assert est._latent_loss(z, zt, "sum").item() == pytest.approx(want, rel=1e-6)
    assert focal_loss(z, zt, 2.0, 4.0, "point").item() == pytest.approx(want, rel=1e-6)
    # per element, as before: each entry's own |error| (3, 0, 4) in the formula
    per_el = (9 / (1 + math.exp(2.0 * 1.0)) + 16 / (1 + math.exp(0.0))) / 3
    est.focal_latent_per = "element"
    assert est._latent_loss(z, zt, "mean").item() == pytest.approx(per_el, rel=1e-6)
    # c of the vector form: a percentile of the codes' distances to their mean
    codes = np.array([[0.0, 0], [3, 4], [-3, -4]])
    assert focal_threshold(codes, 50, "point") == pytest.approx(5.0)


def test_sum_and_mean_differ_under_adam_only_through_eps_and_weight_decay():
    "A constant factor k on the loss: Adam's steps are the same (up to eps) without weight decay, not with it."
    def train(k, wd):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 6))
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=wd)
        x = torch.randn(16, 6)
        for _ in range(50):
            opt.zero_grad(); (k * ((net(x) - x) ** 2).mean()).backward(); opt.step()
        return torch.cat([p.detach().flatten() for p in net.parameters()])
    assert (train(1.0, 0.0) - train(90.0, 0.0)).abs().max() < 1e-4
    assert (train(1.0, 0.05) - train(90.0, 0.05)).abs().max() > 1e-3


# ---- the augmentation's KDE ----

def test_kde_bandwidth_rules():
    "'paper': every mode gets noise of std = the mean NN distance; 'radius': std = that / sqrt(L)."
    from scipy.spatial import cKDTree
    P = ellipsoid_dataset(40, 8, 20, random_state=0)["points"]
    rng = np.random.default_rng(0)
    pca, kde, scores, base = _sample_shapes(P, 4000, None, None, rng, noise="paper")
    B = pca.transform(P)
    nn_mean = cKDTree(B).query(B, k=2)[0][:, 1].mean()
    L = B.shape[1]
    assert kde.bandwidth_ == pytest.approx(nn_mean) and L == 6
    assert np.std(scores - B[base], 0) == pytest.approx(np.full(L, nn_mean), rel=0.06)
    _, kde_r, scores_r, base_r = _sample_shapes(P, 4000, None, None, np.random.default_rng(0), noise="radius")
    assert kde_r.bandwidth_ == pytest.approx(nn_mean / math.sqrt(L))
    assert np.linalg.norm(scores_r - B[base_r], axis=1).mean() == pytest.approx(nn_mean, rel=0.1)
    _, _, s_n, base_n = _sample_shapes(P, 50, None, None, np.random.default_rng(0), noise="paper",
                                       base_image="nearest")
    assert (base_n == cKDTree(B).query(s_n)[1]).all()


def test_base_model_uses_the_papers_encoder_end_to_end():
    d = ellipsoid_dataset(9, 16, 12, random_state=1)
    est = DeepSSM(epochs=1, **TINY).fit(d["images"], d["points"])
    assert isinstance(est.model_, BaseDeepSSM) and est.predict(d["images"][:2]).shape == (2, 12, 3)
