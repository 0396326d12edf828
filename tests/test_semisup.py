"""Semi-supervised detection: the estimator API (fit/predict/save/load, validation, clone) and the folder pipeline
train_from_folder / predict_folder (round trip, output-folder rules, bad inputs)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.base import clone

from shape_nb.core import InputError
from shape_nb.estimator import STATE_DIR
from shape_nb.io import read_labelme, read_landmarks_csv, write_image, write_labelme
from shape_nb.semisup import ABLATIONS, SemiSupervisedDetector, coordinate_l1, predict_folder, train_from_folder

LABELS = ["tip", "left", "right"]
FAST = dict(rounds=1, epochs_pretrain=2, epochs_round=1, epochs_finetune=1, channels=(4, 8), batch_size=4,
            device="cpu", progress=False, z_threshold=5.0)


def blob_image(points, shape, rng):
    "uint8 image (H, W) with a Gaussian blob of a different width at each (x, y) pixel index."
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (1.0 + k) ** 2)) for k, (x, y) in enumerate(points))
    img = img + 0.05 * rng.random((H, W))
    return (255 * img / img.max()).astype(np.uint8)


@pytest.fixture
def folders(tmp_path):
    "6 labelled images of two sizes with LabelMe files, 4 unlabelled images, a triangle of 3 landmarks each."
    rng = np.random.default_rng(0)
    for sub in ("lab", "json", "unl"): (tmp_path / sub).mkdir()
    truth = {}
    for i in range(10):
        shape = (40, 48) if i % 2 else (44, 52)
        H, W = shape
        c = np.array([W / 2, H / 2]) + rng.uniform(-4, 4, 2)
        pts = c + np.array([[0, -10], [-10, 8], [10, 8]]) + rng.normal(0, 1, (3, 2))
        folder = "lab" if i < 6 else "unl"
        write_image(tmp_path / folder / f"img{i:02d}.png", blob_image(pts, shape, rng))
        if i < 6:
            write_labelme(tmp_path / "json" / f"img{i:02d}.json", pts, LABELS, image_path=f"img{i:02d}.png",
                          image_shape=shape)
        truth[f"img{i:02d}.png"] = (pts, shape)
    return tmp_path, truth


@pytest.fixture
def arrays():
    "Random images and landmarks: 4 labelled, 3 unlabelled, 2 validation images of 16x16, 3 landmarks."
    g = torch.Generator().manual_seed(0)
    x, xu, xv = (torch.rand(n, 1, 16, 16, generator=g) for n in (4, 3, 2))
    y, yv = (torch.rand(n, 3, 2, generator=g) * 1.2 - 0.6 for n in (4, 2))
    return x, y, xu, xv, yv


def test_round_trip(folders):
    tmp, truth = folders
    det = train_from_folder(tmp / "lab", tmp / "json", tmp / "out", unlabelled=tmp / "unl", size=(32, 32), **FAST)
    s = det.summary_
    assert isinstance(det, SemiSupervisedDetector) and det.landmark_names_ == LABELS
    assert (s["n_labelled"], s["n_unlabelled"], s["labels"]) == (6, 4, LABELS)
    assert len(s["rounds"]) == 1 and 0 <= s["rounds"][0]["frac_masked_landmarks"] <= 1
    assert json.loads((tmp / "out" / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert sorted(p.name for p in (tmp / "out").iterdir()) == [".results.json", "report.html", "semisup.pt",
                                                               "summary.json", "unlabelled_landmarks.csv"]
    p = predict_folder(tmp / "out" / "semisup.pt", tmp / "unl", tmp / "pred", labelme=True)
    assert json.loads((tmp / "pred" / "summary.json").read_text()) == p and p["labels"] == LABELS
    names, pts = read_landmarks_csv(p["csv"])
    assert names == [f"img{i:02d}.png" for i in range(6, 10)] and pts.shape == (4, 3, 2)
    # coordinates are in each image's own pixels: inside it, and equal to the unlabelled predictions of training
    for n, P in zip(names, pts):
        H, W = truth[n][1]
        assert (P > -0.5).all() and (P[:, 0] < W - 0.5).all() and (P[:, 1] < H - 0.5).all()
    _, pts_train = read_landmarks_csv(s["unlabelled_landmarks"])
    np.testing.assert_allclose(pts, pts_train, atol=1e-4)
    # LabelMe output reads back with the training labels
    P, labs = read_labelme(tmp / "pred" / "img06.json", LABELS)
    np.testing.assert_allclose(P, pts[0], atol=1e-6)
    back = SemiSupervisedDetector.load(tmp / "out" / "semisup.pt")
    assert back.image_shape_ == (1, 32, 32) and back.n_landmarks_ == 3 and back.landmark_names_ == LABELS
    assert back.train_options is None and back.get_params() == det.get_params()


def test_output_folder_rules(folders):
    tmp, _ = folders
    kw = dict(size=(32, 32), **{**FAST, "self_training": False})
    train_from_folder(tmp / "lab", tmp / "json", tmp / "out", **kw)
    assert not (tmp / "out" / STATE_DIR).exists()
    with pytest.raises(InputError, match="already holds results"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", **kw)
    with pytest.raises(InputError, match="holds no training state"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", resume=True, **kw)
    assert train_from_folder(tmp / "lab", tmp / "json", tmp / "out", overwrite=True, **kw).summary_["n_labelled"] == 6
    predict_folder(tmp / "out" / "semisup.pt", tmp / "unl", tmp / "pred")
    with pytest.raises(InputError, match="already holds results"):
        predict_folder(tmp / "out" / "semisup.pt", tmp / "unl", tmp / "pred")
    assert predict_folder(tmp / "out" / "semisup.pt", tmp / "unl", tmp / "pred", overwrite=True)["n_images"] == 4


def test_labels_default_to_the_images_folder(folders):
    tmp, _ = folders
    for f in (tmp / "json").iterdir(): f.rename(tmp / "lab" / f.name)
    det = train_from_folder(tmp / "lab", None, tmp / "out", size=(32, 32), **{**FAST, "self_training": False})
    assert det.summary_["n_labelled"] == 6 and det.summary_["n_unlabelled"] == 0


def test_supervised_without_unlabelled(folders):
    tmp, _ = folders
    det = train_from_folder(tmp / "lab", tmp / "json", tmp / "out", size=(32, 32), **{**FAST, "self_training": False})
    s = det.summary_
    assert s["n_unlabelled"] == 0 and s["rounds"] == [] and "unlabelled_landmarks" not in s


def test_bad_labels_error_or_skip(folders):
    tmp, _ = folders
    f = tmp / "json" / "img03.json"
    d = json.loads(f.read_text())
    d["shapes"].append(dict(d["shapes"][0]))   # a duplicate 'tip'
    f.write_text(json.dumps(d))
    kw = dict(unlabelled=tmp / "unl", size=(32, 32), **FAST)
    with pytest.raises(ValueError, match="duplicate label"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", **kw)
    with pytest.warns(UserWarning, match="skipping img03.png"):
        s = train_from_folder(tmp / "lab", tmp / "json", tmp / "out", on_bad_labels="skip", **kw).summary_
    assert s["n_labelled"] == 5 and s["skipped"][0]["image"] == "img03.png"


def test_missing_files(folders):
    tmp, _ = folders
    kw = dict(unlabelled=tmp / "unl", size=(32, 32), **FAST)
    with pytest.raises(FileNotFoundError, match="labels folder not found"):
        train_from_folder(tmp / "lab", tmp / "nope", tmp / "out", **kw)
    (tmp / "json" / "img02.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 labelled image\(s\) have no LabelMe file .*img02.json"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", **kw)


def test_bad_arguments(folders):
    tmp, _ = folders
    with pytest.raises(ValueError, match="needs unlabelled images"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", size=(32, 32), **FAST)
    kw = dict(unlabelled=tmp / "unl", **FAST)
    with pytest.raises(ValueError, match=r"size must be \(H, W\)"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", size=(8, 32, 32), **kw)
    with pytest.raises(ValueError, match="on_bad_labels"):
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", on_bad_labels="ignore", **kw)
    with pytest.raises(FileNotFoundError, match="image source not found"):
        train_from_folder(tmp / "missing", tmp / "json", tmp / "out", **kw)
    with pytest.raises(ValueError, match="outside the image"):
        write_labelme(tmp / "json" / "img01.json", [[0, 0], [500, 5], [5, 5]], LABELS)
        train_from_folder(tmp / "lab", tmp / "json", tmp / "out", size=(32, 32), **kw)


def test_predict_folder_bad_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict_folder(tmp_path / "none.pt", tmp_path, tmp_path / "o")
    from shape_nb.train import save_checkpoint
    save_checkpoint(tmp_path / "other.pt", torch.nn.Linear(2, 2), {"a": 1})
    with pytest.raises(ValueError, match="not a SemiSupervisedDetector one"):
        predict_folder(tmp_path / "other.pt", tmp_path, tmp_path / "o2")


def test_predict_and_heatmaps(arrays, tmp_path):
    x, y, xu, xv, _ = arrays
    det = SemiSupervisedDetector(**FAST).fit(x, y, unlabelled=xu)
    p, h = det.predict(xv), det.predict_heatmaps(xv, batch_size=1)
    assert torch.is_tensor(p) and p.shape == (2, 3, 2) and h.shape == (2, 3, 16, 16) and (h >= 0).all()
    assert list(det.history_) == ["pretrain", "round_1", "finetune"] and len(det.rounds_) == 1
    labels, keep, reg = det.pseudo_labels(xu)
    assert labels.shape == (3, 3, 2) and keep.shape == (3, 3) and reg.abnormal.shape == (3,)
    back = SemiSupervisedDetector.load(det.save(tmp_path / "d.pt"))
    assert torch.equal(back.predict(xv), p) and torch.equal(back.predict_heatmaps(xv), det.predict_heatmaps(xv))
    assert back.rounds_ == det.rounds_ and back.landmark_names_ is None


def test_validation_keeps_the_best_epoch(arrays):
    x, y, xu, xv, yv = arrays
    plain = SemiSupervisedDetector(**FAST).fit(x, y, unlabelled=xu)
    det = SemiSupervisedDetector(**FAST).fit(x, y, unlabelled=xu, validation=(xv, yv))
    for stage, h in det.history_.items():
        assert "val_loss" in h.records[-1] and h.best_val == min(h.column("val_loss")), stage
    # validation draws no random numbers: pre-training is the same as without it
    assert det.history_["pretrain"].column("train_loss") == plain.history_["pretrain"].column("train_loss")
    best = det.history_["finetune"].best_val
    assert abs(float(coordinate_l1(det.predict(xv), yv)) - best) < 1e-6
    assert "val_loss" not in plain.history_["pretrain"].records[-1]
    with pytest.raises(InputError, match="validation must be a pair"):
        SemiSupervisedDetector(**FAST).fit(x, y, unlabelled=xu, validation=xv)


def test_parameters_clone_and_custom_backbone(arrays, tmp_path):
    x, y, _, xv, _ = arrays
    det = SemiSupervisedDetector(channels=[4, 8])
    assert det.channels == [4, 8] and det.set_params(**ABLATIONS["naive"]).region_attention is False
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.Softplus())
    twin = clone(SemiSupervisedDetector(net, **ABLATIONS["supervised"], epochs_pretrain=1, epochs_finetune=0,
                                        device="cpu", progress=False))
    assert twin.backbone is not net and isinstance(twin.backbone, torch.nn.Sequential)
    twin.fit(x, y)
    path = twin.save(tmp_path / "c.pt")
    with pytest.raises(InputError, match="custom backbone"):
        SemiSupervisedDetector.load(path)
    assert torch.equal(SemiSupervisedDetector.load(path, backbone=net).predict(xv), twin.predict(xv))


def test_cli_train_and_predict(folders):
    "`shape_nb semisup train` / `predict` as a user runs them (exit codes, files), and a clear error for bad input."
    tmp, truth = folders
    cli = [sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", "semisup"]
    run = lambda *args: subprocess.run(cli + [str(a) for a in args], capture_output=True, text=True, timeout=600)
    r = run("train", "--labelled", tmp / "lab", "--labels", tmp / "json", "--unlabelled", tmp / "unl", "--size", 32, 32,
            "--epochs-pretrain", 1, "--epochs-round", 1, "--epochs-finetune", 1, "--rounds", 1, "--device", "cpu",
            "--out", tmp / "cli")
    assert r.returncode == 0, r.stderr
    assert (tmp / "cli" / "semisup.pt").exists() and not (tmp / "cli" / STATE_DIR).exists()
    r = run("predict", tmp / "cli" / "semisup.pt", tmp / "unl", "--out", tmp / "pred")
    assert r.returncode == 0, r.stderr
    assert (tmp / "pred" / "landmarks.csv").exists()
    r = run("train", "--labelled", tmp / "lab", "--labels", tmp / "nope", "--out", tmp / "x")
    assert r.returncode == 2 and "labels folder not found" in r.stderr and "Traceback" not in r.stderr


def test_protocol_options_softmax_heatmaps_and_older_checkpoints(arrays, tmp_path):
    from shape_nb.semisup import PROTOCOLS
    x, y, xu, xv, _ = arrays
    bad = (("ral_on", "labelled"), ("loss_weighting", "mean"), ("schedule", "step"), ("normalisation", "max"),
           ("aug_scale", 1.0), ("aug_noise", -0.1))
    for k, v in bad:
        with pytest.raises(InputError, match=k):
            SemiSupervisedDetector(**{**FAST, k: v}).fit(x, y, unlabelled=xu)
    soft = SemiSupervisedDetector(**FAST, normalisation="softmax").fit(x, y, unlabelled=xu)
    h = soft.predict_heatmaps(xv)
    assert soft.model_.activation is None and torch.allclose(h.sum((-2, -1)), torch.ones(2, 3))
    back = SemiSupervisedDetector.load(soft.save(tmp_path / "s.pt"))
    assert back.normalisation_ == "softmax" and torch.equal(back.predict(xv), soft.predict(xv))
    # a checkpoint written before `normalisation` existed holds a sigmoid UNet: its heatmaps are used as they are
    det = SemiSupervisedDetector(**FAST, **PROTOCOLS["restarts"]).fit(x, y, unlabelled=xu)
    ck = torch.load(det.save(tmp_path / "d.pt"), weights_only=True)
    del ck["extra"]["state"]["normalisation"]; del ck["config"]["normalisation"]
    torch.save(ck, tmp_path / "old.pt")
    old = SemiSupervisedDetector.load(tmp_path / "old.pt")
    assert old.normalisation_ == "sum" and torch.equal(old.predict(xv), det.predict(xv))
