"""Landmark discovery end to end: reproducibility, persistence, 2D and 3D, one-call API, refitting after pruning."""
import numpy as np
import pytest
import torch
from sklearn.base import clone

from shape_nb.core import InputError
from shape_nb.discovery import LandmarkDiscovery, discover_landmarks
from shape_nb.phantoms import tps_phantoms, tps_phantoms_3d

SMALL = dict(epochs=2, channels=(4, 8), batch_size=4, pairs_per_epoch=16, progress=False, device="cpu")


def test_same_seed_same_landmarks_on_cpu():
    imgs, _ = tps_phantoms(6, 24, seed=3)
    a = LandmarkDiscovery(n_landmarks=5, random_state=7, **SMALL).fit(imgs)
    b = LandmarkDiscovery(n_landmarks=5, random_state=7, **SMALL).fit(imgs)
    c = LandmarkDiscovery(n_landmarks=5, random_state=8, **SMALL).fit(imgs)
    assert torch.equal(a.landmarks_, b.landmarks_)
    assert not torch.equal(a.landmarks_, c.landmarks_)
    assert torch.equal(clone(a).fit(imgs).landmarks_, a.landmarks_)


def test_one_call_api_and_pruning():
    imgs, _ = tps_phantoms(6, 24, seed=4)
    est = discover_landmarks(imgs, n_landmarks=6, n_keep=3, **SMALL)
    assert est.importance_.shape == (6,) and len(est.kept_) == 3 and est.n_landmarks_ == 3
    assert est.landmarks_.shape == (6, 3, 2) and est.landmarks_.abs().max() <= 1
    # the kept landmarks are the most important ones
    assert set(est.kept_) == set(np.argsort(-est.importance_)[:3])


def test_refit_after_prune_stores_every_landmark():
    imgs, _ = tps_phantoms(6, 24, seed=5)
    est = LandmarkDiscovery(n_landmarks=5, **SMALL).fit(imgs)
    est.compute_importance(imgs)
    est.prune(n_keep=2)
    assert est.predict(imgs).shape == (6, 2, 2) and est.n_landmarks_ == 2
    est.fit(imgs)
    assert est.importance_ is None and len(est.kept_) == 5 and est.n_landmarks_ == 5
    assert est.landmarks_.shape == (6, 5, 2)
    assert torch.equal(est.landmarks_, est.predict(imgs))


def test_parameters_stored_verbatim_and_fit_is_self_supervised():
    channels = [4, 8]
    est = LandmarkDiscovery(n_landmarks=3, channels=channels)
    assert est.channels is channels and est.get_params()["n_landmarks"] == 3
    imgs, cps = tps_phantoms(4, 24, seed=6)
    with pytest.raises(InputError, match="learns its own landmarks"):
        est.fit(imgs, cps)


def test_3d_save_load(tmp_path):
    vols, _ = tps_phantoms_3d(4, 12, seed=0)
    est = LandmarkDiscovery(n_landmarks=4, random_state=0, **SMALL).fit(vols)
    assert est.landmarks_.shape == (4, 4, 3) and est.d_ == 3 and est.image_shape_ == (1, 12, 12, 12)
    est.compute_importance(vols)
    est.save(tmp_path / "d.pt")
    again = LandmarkDiscovery.load(tmp_path / "d.pt")
    assert torch.equal(again.predict(vols), est.predict(vols))
    assert np.array_equal(again.importance_, est.importance_)
    assert again.history_["train"].records == est.history_["train"].records
