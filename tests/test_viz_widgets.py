"""Figures and interactive viewers, headless: every figure function's traces and data, and every viewer driven
through its controls from Python (no browser; see test_browser.py for the same in chromium)."""
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("plotly")
pytest.importorskip("ipywidgets")
pytest.importorskip("anywidget")   # plotly's FigureWidget needs it

from shape_nb import viz, widgets
from shape_nb.core import index_to_norm, norm_to_index, pixel_grid
from shape_nb.phantoms import image_corners, phantom_3d, tps_phantoms, tps_phantoms_3d
from shape_nb.shape import ShapePCA
from shape_nb.tps import tps_warp_image


@pytest.fixture(scope="module")
def phantoms():
    imgs, cps = tps_phantoms(4, 48)
    lm = torch.cat([image_corners().expand(4, 4, 2), cps], 1)
    return imgs, cps, lm


@pytest.fixture(scope="module")
def volume():
    vol = phantom_3d((20, 32, 28))[0, 0].numpy()
    lm = index_to_norm(np.array([[14.0, 16.0, 10.0], [3.0, 16.0, 10.0], [14.0, 4.0, 2.0]]), vol.shape)   # (x, y, z)
    g = pixel_grid((10, 16, 14), dtype=torch.float64).numpy()
    hm = np.exp(-((g[None] - lm[:, None, None, None]) ** 2).sum(-1) / (2 * 0.15**2)).astype(np.float32)
    return vol, lm, hm


# ---------------------------------------------------------------- figures
def test_registration_figure_traces_and_warp(phantoms):
    imgs, _, lm = phantoms
    fig = viz.registration_figure(imgs[0], imgs[2], lm[0], lm[2], n_lines=6)
    assert [t.type for t in fig.data] == ["heatmap", "scatter", "scatter", "heatmap", "scatter", "heatmap", "scatter",
                                          "scatter"]
    want = tps_warp_image(imgs[:1].double(), lm[:1].double(), lm[2:3].double())[0, 0].numpy()
    np.testing.assert_allclose(fig.data[5].z, want, atol=1e-5)
    assert sum(v is None for v in fig.data[6].x) == 12            # 2 x 6 warped grid lines
    np.testing.assert_allclose(fig.data[7].x, norm_to_index(lm[2].numpy(), (48, 48))[:, 0], atol=1e-6)


def test_heatmap_figure_modes(phantoms):
    imgs, cps, _ = phantoms
    g = pixel_grid((48, 48), dtype=torch.float64)
    hm = torch.exp(-((g[None] - cps[0, :, None, None].double()) ** 2).sum(-1) / 0.01)
    f = viz.heatmap_figure(imgs[0], hm, cps[0])
    assert [t.type for t in f.data] == ["heatmap", "heatmap", "scatter"]
    np.testing.assert_allclose(f.data[1].z, hm.max(0).values.numpy(), atol=1e-6)
    f = viz.heatmap_figure(imgs[0], hm, cps[0], mode="each")
    assert len(f.data) == 3 * len(cps[0])
    np.testing.assert_allclose(f.data[3 * 4 + 1].z, hm[4].numpy(), atol=1e-6)


def test_slices_and_3d_figures(volume):
    vol, lm, hm = volume
    f = viz.slices_figure(vol, {"a": lm}, index=(10, 16, 14), heatmap=hm, spacing=(1, 1, 2))
    assert [t.type for t in f.data] == ["heatmap", "heatmap", "scatter"] * 3
    np.testing.assert_allclose(f.data[0].z, vol[10])                # axial slice z = 10
    np.testing.assert_allclose(f.data[3].z, vol[:, 16])             # coronal slice y = 16
    assert f.data[2].text == ("a 0", "a 1")                         # landmarks 0 and 1 lie on z = 10
    np.testing.assert_allclose(f.data[2].x, [14.0, 3.0])            # in mm (x spacing 1)
    f = viz.landmarks_3d_figure({"a": lm}, vol, spacing=(1, 1, 2), level=0.5, surface="isosurface", max_size=16)
    assert [t.type for t in f.data] == ["isosurface", "scatter3d"]
    np.testing.assert_allclose(f.data[1].z, [20.0, 20.0, 4.0])      # z index * 2 mm
    f = viz.heatmap_volume_figure(hm, vol, volume_level=0.5, landmarks=lm, max_size=12)
    assert [t.type for t in f.data][1:] == ["isosurface"] * 3 + ["scatter3d"]
    assert f.data[0].name == "anatomy"
    assert [t.type for t in viz.heatmap_volume_figure(hm, kind="volume", max_size=12).data] == ["volume"]


def test_correspondence_animation_embedding():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(30, 3))
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    f = viz.correspondence_figure(pts, np.arange(30.0), faces, value_name="RMSE")
    assert f.data[0].type == "mesh3d" and f.data[0].intensitymode == "vertex"
    np.testing.assert_allclose(f.data[0].intensity, np.arange(30.0))
    shapes = rng.normal(size=(10, 12, 2, 2)).sum(2)
    pca = ShapePCA(n_components=2).fit(shapes)
    f = viz.shape_animation(pca.mode_shapes(0, np.linspace(-2, 2, 5)), mean=pca.mean_)
    assert len(f.frames) == 5 and [t.name for t in f.data] == ["mean", "shape"]
    np.testing.assert_allclose(f.frames[4].data[0].x[:12], pca.mode_shapes(0, [2.0])[0][:, 0], atol=1e-5)
    f = viz.embedding_figure(pca.transform(shapes), labels=[0, 1] * 5)
    assert len(f.data) == 2 and sum(len(t.x) for t in f.data) == 10


def test_training_curves_take_any_history():
    from shape_nb.train import History
    recs = [dict(epoch=e, train_loss=1.0 / (e + 1), val_loss=2.0 / (e + 1)) for e in range(3)]
    one = viz.training_curves(recs)
    assert [t.name for t in one.data] == ["train_loss", "val_loss"] and list(one.data[0].x) == [0, 1, 2]
    assert viz.training_curves(History(records=recs)).to_dict() == one.to_dict()
    # an estimator's history_: {stage: History} in training order, one curve per stage and column
    hist = {"autoencoder": History(records=recs), "tflank": History(records=recs[:2]),
            "joint": History(records=[dict(epoch=0, train_loss=0.1)])}
    f = viz.training_curves(hist)
    assert [t.name for t in f.data] == ["autoencoder: train_loss", "autoencoder: val_loss", "tflank: train_loss",
                                        "tflank: val_loss", "joint: train_loss"]
    assert list(f.data[2].x) == [3, 4] and list(f.data[4].x) == [5]           # the stages follow each other
    assert len(f.layout.shapes) == 2                                          # a line where each later stage starts
    f = viz.training_curves({"train": History(records=recs)}, keys=["val_loss"], log_y=False)
    assert [t.name for t in f.data] == ["train: val_loss"] and f.layout.yaxis.type == "linear"
    assert len(viz.training_curves([]).data) == 0


# ---------------------------------------------------------------- viewers
def test_volume_viewer_controls(volume):
    vol, lm, hm = volume
    v = widgets.VolumeViewer(vol, {"a": lm}, heatmap=hm, spacing=(1, 1, 2))
    assert [t.type for t in v.figure.data] == ["heatmap", "heatmap", "scatter"]
    assert v.slice.value == 10 and v.slice.max == 19
    v.slice.value = 4
    np.testing.assert_allclose(v.figure.data[0].z, vol[4])
    assert len(v.figure.data[2].x) == 0                             # no landmark near z = 4
    v.picker.value = ("a", 2)                                       # landmark 2 is at z = 2
    assert v.slice.value == 2
    np.testing.assert_allclose(v.figure.data[0].z, vol[2])
    assert v.figure.data[2].text == ("a 2",)
    v.window.value = (0.2, 0.6)
    assert (v.figure.data[0].zmin, v.figure.data[0].zmax) == (0.2, 0.6)
    v.opacity.value = 0.25
    assert v.figure.data[1].opacity == 0.25
    v.show_landmarks.value = False
    assert len(v.figure.data[2].x) == 0
    v.show_landmarks.value = True
    v.axis.value = 1                                                # coronal: (z, x) slices, slider over y
    assert v.slice.max == 31 and v.slice.value == 16
    np.testing.assert_allclose(v.figure.data[0].z, vol[:, 16])
    assert v.figure.layout.annotations[0].text == "coronal (y)"
    v.picker.value = ("a", 1)                                       # jumps along the current axis (y = 16)
    assert v.slice.value == 16 and "a 1" in v.figure.data[2].text


def test_volume_viewer_downsamples_once():
    v = widgets.VolumeViewer(np.random.rand(40, 200, 100).astype(np.float32), max_size=50)
    assert v.volume_.shape == (10, 50, 25) and v.slice.max == 9
    np.testing.assert_allclose(v.spacing_, [4.0, 4.0, 4.0])
    assert np.asarray(v.figure.data[0].z).shape == (50, 25)


def test_pair_viewer(phantoms):
    imgs, _, lm = phantoms
    pv = widgets.PairViewer(imgs, lm)
    before = np.array(pv.figure.data[5].z)
    pv.target.value = 3
    after = np.array(pv.figure.data[5].z)
    assert not np.allclose(before, after)
    want = tps_warp_image(imgs[:1].double(), lm[:1].double(), lm[3:4].double())[0, 0].numpy()
    np.testing.assert_allclose(after, want, atol=1e-5)
    np.testing.assert_allclose(pv.figure.data[3].z, imgs[3, 0].numpy())
    assert pv.errors_[1] < pv.errors_[0]
    pv.source.value = 2
    np.testing.assert_allclose(pv.figure.data[0].z, imgs[2, 0].numpy())


def test_shape_mode_explorer():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 2 * np.pi, 20, endpoint=False)
    shapes = np.stack([np.stack([(1 + 0.2 * rng.normal()) * np.cos(t), (1 + 0.1 * rng.normal()) * np.sin(t)], 1)
                       for _ in range(15)])
    pca = ShapePCA(n_components=2).fit(shapes)
    ex = widgets.ShapeModeExplorer(pca, n_modes=2)
    assert len(ex.sliders) == 2
    ex.sliders[0].value = 1.5
    np.testing.assert_allclose(ex.figure.data[1].x[:20], pca.mode_shapes(0, [1.5])[0][:, 0], atol=1e-5)
    assert ex.figure.data[1].x[20] == ex.figure.data[1].x[0]         # closed outline
    ex.reset.click()
    np.testing.assert_allclose(ex.figure.data[1].x[:20], pca.mean_[:, 0], atol=1e-5)
    # 3D points
    pca3 = ShapePCA(n_components=2).fit(rng.normal(size=(8, 15, 3)))
    ex3 = widgets.ShapeModeExplorer(pca3)
    assert [t.type for t in ex3.figure.data] == ["scatter3d", "scatter3d"] and len(ex3.sliders) == 2
    ex3.sliders[1].value = -2.0
    np.testing.assert_allclose(ex3.figure.data[1].z, pca3.mode_shapes(1, [-2.0])[0][:, 2], atol=1e-5)


def test_dataset_browser_2d_and_3d(phantoms):
    imgs, cps, _ = phantoms
    pred = cps + 0.04
    db = widgets.DatasetBrowser(imgs, cps, pred)
    db.index.value = 3
    np.testing.assert_allclose(db.figure.data[0].z, imgs[3, 0].numpy())
    np.testing.assert_allclose(db.figure.data[1].x, norm_to_index(cps[3].numpy(), (48, 48))[:, 0], atol=1e-5)
    np.testing.assert_allclose(db.figure.data[2].y, norm_to_index(pred[3].numpy(), (48, 48))[:, 1], atol=1e-5)
    np.testing.assert_allclose(db.errors(3), np.full(6, np.hypot(0.96, 0.96)), atol=1e-4)   # 0.04 * 48 / 2 px per axis
    vols, c3 = tps_phantoms_3d(2, 16)
    db3 = widgets.DatasetBrowser(vols, c3)
    assert [t.type for t in db3.figure.data] == ["heatmap", "scatter"] * 3
    db3.index.value = 1
    z = int(np.round(norm_to_index(c3[1, 0].numpy(), (16, 16, 16))[2]))
    np.testing.assert_allclose(db3.figure.data[0].z, vols[1, 0, z].numpy())


def test_view_itk_reports_missing_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "itkwidgets", None)            # never imports the real package
    with pytest.raises(ImportError, match=r"shape_nb\[itk\]"):
        widgets.view_itk(np.zeros((4, 4, 4)))
