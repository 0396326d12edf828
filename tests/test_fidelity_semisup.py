"""The published formulas of shape-regulated self-training (Chen et al.), pinned on hand-computed cases: eq. 1's
weighting of the labelled and pseudo-labelled sets, the Region Attention loss's radius |delta| ~ N(0.01, 0.005^2) in
normalised coordinates, the +-3 sigma clamp of the shape parameters, the abnormality threshold Z in mm, and the
training protocol (one Adam with a constant learning rate through every phase)."""
import math

import numpy as np
import pytest
import torch

from shape_nb.core import index_to_norm
from shape_nb.shape import Similarity, apply_similarity, invert_similarity
from shape_nb.semisup import (PROTOCOLS, SemiSupervisedDetector, ShapePrior, region_attention_loss, sample_radius,
                              semisupervised_loss, set_weights, train_from_folder)


# ---------------------------------------------------------------- eq. 1
def test_eq1_two_sets_of_different_sizes_hand_computed():
    # 2 labelled images (L1 = 1, 3) and 3 pseudo-labelled ones (RAL = 2, 4, 6); one landmark each
    l1 = torch.tensor([[1.], [3.], [9.], [9.], [9.]])
    ral = torch.tensor([[9.], [9.], [2.], [4.], [6.]])
    pseudo = torch.tensor([False, False, True, True, True])
    w = set_weights(pseudo, n_labelled=2, n_pseudo=3)
    assert torch.allclose(w, torch.tensor([5 / 2, 5 / 2, 5 / 3, 5 / 3, 5 / 3]))
    # L = mean over the labelled set + mean over the pseudo-labelled set = (1 + 3) / 2 + (2 + 4 + 6) / 3 = 6
    assert float(semisupervised_loss(l1, ral, pseudo, weights=w)) == pytest.approx(6.0)
    # lambda scales the pseudo-labelled term only
    assert float(semisupervised_loss(l1, ral, pseudo, weights=w, ral_weight=0.5)) == pytest.approx(2 + 2)
    # w/o RAL (the paper's ablation): L1 on the pseudo labels too, still one mean per set: 2 + 9
    assert float(semisupervised_loss(l1, None, pseudo, weights=w)) == pytest.approx(11.0)
    # the options: one mean over the pooled images; L1 + RAL on every image
    assert float(semisupervised_loss(l1, ral, pseudo)) == pytest.approx((1 + 3 + 2 + 4 + 6) / 5)
    assert float(semisupervised_loss(l1, ral, pseudo, weights=w, ral_on="all")) == pytest.approx((2 + 9) + (9 + 4))
    assert torch.equal(set_weights(pseudo, 2, 3, weighting="pooled"), torch.ones(5))
    assert torch.equal(set_weights(torch.zeros(4, dtype=torch.bool), 4, 0), torch.ones(4))   # supervised phases


def test_eq1_holds_over_an_epoch_of_mixed_batches():
    "Whatever the batches mix, their mean loss over an epoch is eq. 1 (equal batch sizes, nothing masked)."
    g = torch.Generator().manual_seed(0)
    l1, ral = torch.rand(6, 2, generator=g), torch.rand(6, 2, generator=g)
    pseudo = torch.tensor([False, False, True, True, True, True])
    eq1 = float(l1[:2].mean() + ral[2:].mean())
    for s in range(5):
        order = torch.randperm(6, generator=torch.Generator().manual_seed(s))
        losses = [semisupervised_loss(l1[i], ral[i], pseudo[i], weights=set_weights(pseudo[i], 2, 4))
                  for i in order.split(3)]
        assert float(sum(losses) / len(losses)) == pytest.approx(eq1, rel=1e-6)


def test_masked_landmarks_do_not_count():
    l1, ral = torch.tensor([[1., 100.], [3., 5.]]), torch.tensor([[0., 0.], [2., 4.]])
    pseudo, mask = torch.tensor([False, True]), torch.tensor([[True, False], [True, True]])
    w = set_weights(pseudo, 1, 1)      # both weigh 2
    # entries: labelled (1, masked), pseudo (2, 4): (2 * 1 + 2 * (2 + 4)) / 3 unmasked landmarks
    assert float(semisupervised_loss(l1, ral, pseudo, mask, w)) == pytest.approx(14 / 3)


def test_bad_loss_options():
    with pytest.raises(ValueError, match="weighting must be"):
        set_weights(torch.tensor([True]), 1, 1, weighting="mean")
    with pytest.raises(ValueError, match="ral_on must be"):
        semisupervised_loss(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([True]), ral_on="labelled")


# ---------------------------------------------------------------- Region Attention loss
def test_ral_radius_is_drawn_from_n_0_01_0_005_squared():
    r = sample_radius((400_000,), generator=torch.Generator().manual_seed(0)).double()
    # N(0.01, 0.005^2) clipped at 0: P(r = 0) = Phi(-2); above 0 the quantiles are the normal's
    assert float((r == 0).double().mean()) == pytest.approx(0.5 * math.erfc(2 / math.sqrt(2)), abs=1e-3)
    for q, z in ((0.5, 0.0), (0.8413447, 1.0), (0.1586553, -1.0), (0.9772499, 2.0)):
        assert float(torch.quantile(r[:100_000], q)) == pytest.approx(0.01 + 0.005 * z, abs=1.5e-4)
    # the loss draws one radius per landmark and image: with a one-pixel heatmap on its label (spread 0) the loss of
    # each landmark is its radius
    S = (4, 4)
    h = torch.zeros(2000, 3, *S); h[:, :, 1, 2] = 1.0
    tgt = index_to_norm(torch.tensor([2.0, 1.0]), S).expand(2000, 3, 2)
    torch.manual_seed(1)
    per = region_attention_loss(h, tgt, reduce=False)
    assert per.shape == (2000, 3) and float(per.mean()) == pytest.approx(0.01, abs=3e-4)
    assert float(per.std()) == pytest.approx(0.005, abs=3e-4)


def test_ral_radius_unit_is_normalised_coordinates():
    "The spread (and so |delta|) is in eq. 2's coordinates, [-1, 1] across the image: 0.01 = 0.5 % of the width."
    h = torch.zeros(1, 1, 1, 100); h[0, 0, 0, 60] = 1.0                          # one pixel, 10 pixels right of ...
    tgt = index_to_norm(torch.tensor([[[50.0, 0.0]]]), (1, 100))                 # ... the label
    _, spread = region_attention_loss(h, tgt, radius=torch.zeros(1, 1), return_spread=True)
    assert float(spread) == pytest.approx(10 * 2 / 100)                         # 10 px of 100 = 0.2 normalised


# ---------------------------------------------------------------- shape regulation
def _shapes(n, K=6, seed=0):
    "Shapes of a two-mode model (sd 2 and 1) under random rotations and shifts."
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, K, endpoint=False)
    base = np.stack([np.cos(t), np.sin(t)], 1) * 20
    m1, m2 = np.stack([np.cos(t), np.zeros(K)], 1), np.stack([np.zeros(K), np.sin(2 * t)], 1)
    b = rng.normal(size=(n, 2)) * [2.0, 1.0]
    X = base + b[:, :1, None] * m1 + b[:, 1:, None] * m2
    a = rng.uniform(-0.3, 0.3, n)
    R = np.stack([np.stack([np.cos(a), -np.sin(a)], 1), np.stack([np.sin(a), np.cos(a)], 1)], 1)
    return np.einsum("nij,nkj->nki", R, X) + rng.uniform(-5, 5, (n, 1, 2))


def test_projection_clamps_every_mode_to_3_sigma():
    "X_beta = T^-1 (mean + P clip(b_alpha, +-3 sigma_k)), with b_alpha the scores of the GPA-aligned pseudo label."
    prior = ShapePrior().fit(_shapes(200))
    pca, sd = prior.pca_, prior.pca_.std_
    assert prior.n_std == 3.0 and np.allclose(sd ** 2, pca.explained_variance_)
    b = pca.transform(_shapes(1, seed=5))
    b[0, 0], b[0, 1] = 10 * sd[0], -2.5 * sd[1]                                   # mode 1 far out, mode 2 inside
    X = apply_similarity(pca.inverse_transform(b), Similarity(np.full(1, 40.0), np.array([[[0.8, -0.6], [0.6, 0.8]]]),
                                                              np.array([[3.0, -4.0]])))   # into an image frame
    b_alpha = pca.transform(X)
    _, T = prior.gpa_.transform(X, return_transform=True)
    clip = np.clip(b_alpha, -3 * sd, 3 * sd)                                       # by hand
    assert b_alpha[0, 0] > 5 * sd[0] and clip[0, 0] == 3 * sd[0] and clip[0, 1] == b_alpha[0, 1]
    expected = apply_similarity(pca.inverse_transform(clip), invert_similarity(T))
    np.testing.assert_allclose(prior.project(X), expected, atol=1e-9)
    # a shape inside +-3 sigma in every mode is its own projection (all modes kept)
    b_in = pca.transform(_shapes(1, seed=6))
    assert (np.abs(b_in) < 3 * sd).all()
    X_in = apply_similarity(pca.inverse_transform(b_in), Similarity(np.full(1, 40.0), np.eye(2)[None],
                                                                    np.array([[10.0, 20.0]])))
    np.testing.assert_allclose(prior.project(X_in), X_in, atol=1e-6)


# ---------------------------------------------------------------- Z in mm
def _regulated(spacing, z=2.0, shift_px=25.0):
    "Fit a detector's shape prior on 32x32 images with `spacing` mm per pixel; move one landmark by `shift_px`."
    P = _shapes(40) + 16
    P_norm = index_to_norm(P * 0.6 + 6.4, (32, 32))                                # inside a 32x32 image
    det = SemiSupervisedDetector(spacing=spacing, z_threshold=z, device="cpu", progress=False, channels=(4, 8))
    det._check_params()
    det._setup(torch.rand(len(P), 1, 32, 32), torch.as_tensor(P_norm, dtype=torch.float32))
    moved = det.to_physical(P_norm[:1]).copy()
    moved[0, 0, 0] += shift_px * det.spacing_[0]                                   # shift_px pixels to the right
    return det._regulate(torch.as_tensor(det.from_physical(moved), dtype=torch.float32))[2]


def test_z_threshold_is_in_mm_with_the_papers_2mm_default():
    assert SemiSupervisedDetector().z_threshold == 2.0                            # paper: 2 mm
    # the same 25-pixel displacement is twice as many mm at 0.1 mm per pixel as at 0.05 mm; Z = 1 mm lies between
    a, b = _regulated((0.1, 0.1), z=1.0), _regulated((0.05, 0.05), z=1.0)
    np.testing.assert_allclose(a.moved, 2 * b.moved, rtol=1e-6)
    assert a.moved.max() > 1.0 > b.moved.max()
    assert a.abnormal[0] and not b.abnormal[0]
    np.testing.assert_array_equal(a.keep[0], a.moved[0] <= 1.0)                  # landmarks moved more than Z masked
    assert not _regulated((0.1, 0.1)).abnormal[0]                                 # under the default 2 mm


def test_train_from_folder_gives_z_in_mm_with_pixel_size(tmp_path):
    import warnings
    from shape_nb.io import write_image, write_labelme
    rng = np.random.default_rng(0)
    for sub in ("lab", "json", "unl"): (tmp_path / sub).mkdir()
    for i in range(6):
        pts = np.array([[10, 8], [30, 12], [20, 30]]) + rng.normal(0, 1, (3, 2))
        img = rng.integers(0, 255, (40, 48)).astype(np.uint8)
        write_image(tmp_path / ("lab" if i < 4 else "unl") / f"{i}.png", img)
        if i < 4: write_labelme(tmp_path / "json" / f"{i}.json", pts, ["a", "b", "c"], image_shape=(40, 48))
    kw = dict(size=(20, 24), unlabelled=tmp_path / "unl", rounds=1, epochs_pretrain=1, epochs_round=1,
              epochs_finetune=0, channels=(4, 8), device="cpu", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                           # no warning: Z is in mm
        det = train_from_folder(tmp_path / "lab", tmp_path / "json", tmp_path / "o1", pixel_size=0.1, **kw)
    assert np.allclose(det.spacing_, [0.2, 0.2]) and det.summary_["units"] == "mm"     # 2 file pixels per input pixel
    assert det.summary_["z_threshold"] == 2.0 and det.summary_["rounds"][0]["z_threshold"] == 2.0
    with pytest.warns(UserWarning, match="no pixel size, so z_threshold"):
        det = train_from_folder(tmp_path / "lab", tmp_path / "json", tmp_path / "o2", **kw)
    assert np.allclose(det.spacing_, [2.0, 2.0]) and det.summary_["units"] == "pixels"
    with pytest.raises(ValueError, match="pixel_size must be"):
        train_from_folder(tmp_path / "lab", tmp_path / "json", tmp_path / "o3", pixel_size=-1, **kw)


# ---------------------------------------------------------------- training protocol
def test_the_defaults_are_the_papers_protocol():
    params = SemiSupervisedDetector().get_params()
    assert {k: params[k] for k in PROTOCOLS["paper"]} == PROTOCOLS["paper"]
    assert params["lr"] == 1e-3 and params["n_std"] == 3.0 and params["z_threshold"] == 2.0     # Adam's default lr
    assert (params["ral_mean"], params["ral_std"]) == (0.01, 0.005)
    assert PROTOCOLS["paper"]["aug_scale"] == 0 and PROTOCOLS["paper"]["aug_noise"] > 0       # noise, no scaling


def test_one_adam_with_a_constant_learning_rate_through_every_phase():
    g = torch.Generator().manual_seed(0)
    x, xu = torch.rand(4, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)
    y = torch.rand(4, 3, 2, generator=g) * 1.2 - 0.6
    kw = dict(rounds=2, epochs_pretrain=3, epochs_round=2, epochs_finetune=2, batch_size=2, channels=(4, 8),
              device="cpu", progress=False, z_threshold=50.0)
    steps = []
    det = SemiSupervisedDetector(**kw)
    real = det._train
    def spy(*a, **k):
        h = real(*a, **k)
        steps.append(int(det._adam_state["state"][0]["step"]))
        return h
    det._train = spy
    det.fit(x, y, unlabelled=xu)
    assert steps == [6, 14, 22, 26]     # 3 x 2, 2 x 4, 2 x 4, 2 x 2 batches: counted on from phase to phase
    assert {r["lr"] for h in det.history_.values() for r in h.records} == {1e-3}
    old = SemiSupervisedDetector(**kw, **PROTOCOLS["restarts"]).fit(x, y, unlabelled=xu)
    lrs = old.history_["round_1"].column("lr")
    assert lrs[0] == 1e-3 and lrs[1] < 1e-3            # cosine, restarted in every phase


def test_resume_after_a_finished_phase_continues_the_same_adam(tmp_path, monkeypatch):
    "Stopped between pre-training and round 1: the resumed run takes Adam's state from pre-training's saved state."
    import shape_nb.semisup as semisup
    g = torch.Generator().manual_seed(1)
    x, xu = torch.rand(4, 1, 16, 16, generator=g), torch.rand(4, 1, 16, 16, generator=g)
    y = torch.rand(4, 3, 2, generator=g) * 1.2 - 0.6
    kw = dict(rounds=1, epochs_pretrain=2, epochs_round=2, epochs_finetune=1, batch_size=2, channels=(4, 8),
              device="cpu", progress=False, z_threshold=50.0)
    ref = SemiSupervisedDetector(**kw).fit(x, y, unlabelled=xu)

    def stop(*a, **k): raise KeyboardInterrupt
    def interrupted_and_resumed(folder):
        opts = dict(checkpoint=str(tmp_path / folder / "state.pt"))
        with monkeypatch.context() as m:
            m.setattr(SemiSupervisedDetector, "_round", stop)
            with pytest.raises(KeyboardInterrupt):
                SemiSupervisedDetector(**kw, train_options=opts).fit(x, y, unlabelled=xu)
        return SemiSupervisedDetector(**kw, train_options=opts | dict(resume=True)).fit(x, y, unlabelled=xu)
    det = interrupted_and_resumed("a")
    assert det.history_["pretrain"].resumed_from == 2                               # pre-training was not re-run
    for stage in ref.history_:
        assert det.history_[stage].column("train_loss") == ref.history_[stage].column("train_loss"), stage
    assert torch.equal(det.predict(x), ref.predict(x))
    # without the saved optimiser state, round 1 would start a fresh Adam and train differently
    with monkeypatch.context() as m:
        m.setattr(semisup, "load_train_state", lambda path: dict(optimizer=None))
        lost = interrupted_and_resumed("b")
    assert lost.history_["round_1"].column("train_loss") != ref.history_["round_1"].column("train_loss")
