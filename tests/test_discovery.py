"""Landmark discovery end to end: reproducibility, persistence, 2D and 3D, one-call API."""
import numpy as np
import torch

from shape_nb.discovery import LandmarkDiscovery, discover_landmarks
from shape_nb.phantoms import tps_phantoms, tps_phantoms_3d

SMALL = dict(epochs=2, channels=(4, 8), batch_size=4, pairs_per_epoch=16, progress=False, device="cpu")


def test_same_seed_same_landmarks_on_cpu():
    imgs, _ = tps_phantoms(6, 24, seed=3)
    a = LandmarkDiscovery(k=5, random_state=7, **SMALL).fit(imgs)
    b = LandmarkDiscovery(k=5, random_state=7, **SMALL).fit(imgs)
    c = LandmarkDiscovery(k=5, random_state=8, **SMALL).fit(imgs)
    assert torch.equal(a.landmarks_, b.landmarks_)
    assert not torch.equal(a.landmarks_, c.landmarks_)


def test_one_call_api_and_pruning():
    imgs, _ = tps_phantoms(6, 24, seed=4)
    est = discover_landmarks(imgs, k=6, n_keep=3, **SMALL)
    assert est.importance_.shape == (6,) and len(est.kept_) == 3
    assert est.landmarks_.shape == (6, 3, 2) and est.landmarks_.abs().max() <= 1
    # the kept landmarks are the most important ones
    assert set(est.kept_) == set(np.argsort(-est.importance_)[:3])


def test_3d_save_load(tmp_path):
    vols, _ = tps_phantoms_3d(4, 12, seed=0)
    est = LandmarkDiscovery(k=4, random_state=0, **SMALL).fit(vols)
    assert est.landmarks_.shape == (4, 4, 3)
    est.compute_importance(vols)
    est.save(tmp_path / "d.pt")
    again = LandmarkDiscovery.load(tmp_path / "d.pt")
    assert torch.allclose(again.transform(vols), est.transform(vols), atol=1e-6)
    assert np.allclose(again.importance_, est.importance_)
