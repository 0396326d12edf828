"""The one estimator contract, checked for every estimator in one parametrised test, and the notebook house rules.

For each paper estimator: `sklearn.base.clone` works and gives the same parameters, `fit` on tiny data returns
self and sets `n_landmarks_`, `d_`, `image_shape_` and `history_` ({stage: History}), `predict(images)` returns
landmarks (n, K, d), and `save` / `Class.load` round-trips to identical predictions. The shape-layer estimators
are scikit-learn estimators too.
"""
import json
import re
from pathlib import Path

import pytest
import torch
from sklearn.base import clone

from shape_nb import DeepSSM, LandmarkDiscovery, SemiSupervisedDetector
from shape_nb.core import InputError
from shape_nb.estimator import Estimator
from shape_nb.phantoms import tps_phantoms
from shape_nb.shape import GPA, PPCA, GMMSampler, GaussianSampler, KDESampler, ShapePCA
from shape_nb.train import History

ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(progress=False, device="cpu", random_state=0)


def _discovery():
    x, _ = tps_phantoms(6, 24, seed=1)
    return LandmarkDiscovery(n_landmarks=4, epochs=1, batch_size=4, **QUIET), (x,), {}, x[:3], 4


def _deepssm(kind):
    def make():
        g = torch.Generator().manual_seed(0)
        x = torch.rand(6, 1, 8, 8, 8, generator=g)
        P = torch.rand(6, 5, 3, generator=g) * 2 - 1
        est = DeepSSM(kind=kind, epochs=1, batch_size=3, channels=(2, 2, 2, 2, 2), fc=(8, 8), latent=4,
                      ae_hidden=(8, 8), **QUIET)
        return est, (x, P), {}, x[:2], 5
    return make


def _semisup():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 16, 16, generator=g)
    y = torch.rand(4, 3, 2, generator=g) * 1.2 - 0.6
    xu = torch.rand(3, 1, 16, 16, generator=g)
    est = SemiSupervisedDetector(epochs_pretrain=1, epochs_round=1, epochs_finetune=1, rounds=1, batch_size=4,
                                 channels=(4, 8), **QUIET)
    return est, (x, y), dict(unlabelled=xu), xu, 3


CASES = {"discovery": _discovery, "deepssm-base": _deepssm("base"), "deepssm-tl": _deepssm("tl"),
         "semisup": _semisup}


@pytest.mark.parametrize("case", list(CASES))
def test_estimator_contract(case, tmp_path):
    est, args, kw, new, K = CASES[case]()
    assert isinstance(est, Estimator)
    params = est.get_params(deep=False)
    twin = clone(est)
    assert type(twin) is type(est) and twin.get_params(deep=False).keys() == params.keys()
    assert repr(twin) == repr(est)
    with pytest.raises(RuntimeError, match="not fitted"):
        est.predict(new)
    assert est.fit(*args, **kw) is est
    assert est.get_params(deep=False).keys() == params.keys()       # fit leaves the parameters alone
    d = new.ndim - 2
    assert (est.n_landmarks_, est.d_, tuple(est.image_shape_)) == (K, d, tuple(new.shape[1:]))
    assert isinstance(est.history_, dict) and est.history_
    assert all(isinstance(h, History) for h in est.history_.values())
    pred = est.predict(new)
    assert torch.is_tensor(pred) and tuple(pred.shape) == (len(new), K, d) and torch.isfinite(pred).all()
    path = est.save(tmp_path / "est.pt")
    back = type(est).load(path, device="cpu")
    assert torch.equal(back.predict(new), pred)
    assert back.get_params(deep=False) == {k: v for k, v in est.get_params(deep=False).items()}
    assert list(back.history_) == list(est.history_)
    other = next(c for c in (LandmarkDiscovery, DeepSSM, SemiSupervisedDetector) if c is not type(est))
    with pytest.raises(InputError, match=f"holds a {type(est).__name__} checkpoint"):
        other.load(path)


@pytest.mark.parametrize("est", [GPA(), ShapePCA(0.9), PPCA(2), KDESampler(), GaussianSampler(), GMMSampler(2)],
                         ids=lambda e: type(e).__name__)
def test_shape_layer_estimators_clone(est):
    twin = clone(est)
    assert twin.get_params() == est.get_params() and repr(twin) == repr(est)


def _export_cells():
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        for i, c in enumerate(json.loads(nb.read_text())["cells"]):
            s = "".join(c["source"])
            if c["cell_type"] == "code" and s.lstrip().startswith("#| export"):
                yield nb.name, i, s


def test_export_cells_are_short():
    long = [f"{nb} cell {i}: {s.count(chr(10)) + 1} lines" for nb, i, s in _export_cells() if s.count("\n") + 1 > 80]
    assert not long, "export cells over 80 lines (split them, methods with @patch): " + "; ".join(long)


def test_no_hand_written_all():
    hand = [f"{nb} cell {i}" for nb, i, s in _export_cells() if re.search(r"^__all__\s*=", s, re.M)]
    assert not hand, "nbdev generates __all__; remove the hand-written copies: " + ", ".join(hand)
