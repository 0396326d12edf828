"""Semi-supervised detection from folders of files: train_from_folders / predict_folder round trip and bad inputs."""
import json
import warnings

import numpy as np
import pytest
import torch

from shape_nb.io import read_labelme, read_landmarks_csv, write_image, write_labelme
from shape_nb.semisup import SemiSupervisedDetector, predict_folder, train_from_folders

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
        if i < 6: write_labelme(tmp_path / "json" / f"img{i:02d}.json", pts, LABELS, image_path=f"img{i:02d}.png", image_shape=shape)
        truth[f"img{i:02d}.png"] = (pts, shape)
    return tmp_path, truth


def test_round_trip(folders):
    tmp, truth = folders
    s = train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", size=(32, 32), **FAST)
    assert (s["n_labelled"], s["n_unlabelled"], s["labels"]) == (6, 4, LABELS)
    assert len(s["rounds"]) == 1 and 0 <= s["rounds"][0]["frac_masked_landmarks"] <= 1
    assert json.loads((tmp / "out" / "summary.json").read_text())["labels"] == LABELS
    p = predict_folder(tmp / "out" / "semisup.pt", tmp / "unl", tmp / "pred", labelme=True)
    names, pts = read_landmarks_csv(p["csv"])
    assert names == [f"img{i:02d}.png" for i in range(6, 10)] and pts.shape == (4, 3, 2)
    # coordinates are in each image's own pixels: inside it, and equal to the unlabelled predictions of training
    for n, P in zip(names, pts):
        H, W = truth[n][1]
        assert (P[:, 0] > -0.5).all() and (P[:, 0] < W - 0.5).all() and (P[:, 1] > -0.5).all() and (P[:, 1] < H - 0.5).all()
    _, pts_train = read_landmarks_csv(s["unlabelled_landmarks"])
    np.testing.assert_allclose(pts, pts_train, atol=1e-4)
    # LabelMe output reads back with the training labels
    P, labs = read_labelme(tmp / "pred" / "img06.json", LABELS)
    np.testing.assert_allclose(P, pts[0], atol=1e-6)
    det = SemiSupervisedDetector.load(tmp / "out" / "semisup.pt")
    assert det.image_shape_ == (1, 32, 32) and det.n_landmarks_ == 3 and det.user_["labels"] == LABELS


def test_supervised_without_unlabelled(folders):
    tmp, _ = folders
    s = train_from_folders(tmp / "lab", tmp / "json", None, tmp / "out", size=(32, 32), **{**FAST, "self_training": False})
    assert s["n_unlabelled"] == 0 and s["rounds"] == [] and "unlabelled_landmarks" not in s


def test_bad_labels_error_or_skip(folders):
    tmp, _ = folders
    f = tmp / "json" / "img03.json"
    d = json.loads(f.read_text()); d["shapes"].append(dict(d["shapes"][0])); f.write_text(json.dumps(d))   # duplicate 'tip'
    with pytest.raises(ValueError, match="duplicate label"):
        train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", size=(32, 32), **FAST)
    with pytest.warns(UserWarning, match="skipping img03.png"):
        s = train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", size=(32, 32), on_bad_labels="skip", **FAST)
    assert s["n_labelled"] == 5 and s["skipped"][0]["image"] == "img03.png"


def test_missing_files(folders):
    tmp, _ = folders
    with pytest.raises(FileNotFoundError, match="labels folder not found"):
        train_from_folders(tmp / "lab", tmp / "nope", tmp / "unl", tmp / "out", size=(32, 32), **FAST)
    (tmp / "json" / "img02.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 labelled image\(s\) have no LabelMe file .*img02.json"):
        train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", size=(32, 32), **FAST)


def test_bad_arguments(folders):
    tmp, _ = folders
    with pytest.raises(ValueError, match="needs unlabelled_images"):
        train_from_folders(tmp / "lab", tmp / "json", None, tmp / "out", size=(32, 32), **FAST)
    with pytest.raises(ValueError, match=r"size must be \(H, W\)"):
        train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", size=(8, 32, 32), **FAST)
    with pytest.raises(ValueError, match="on_bad_labels"):
        train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", on_bad_labels="ignore", **FAST)
    with pytest.raises(FileNotFoundError, match="image source not found"):
        train_from_folders(tmp / "missing", tmp / "json", tmp / "unl", tmp / "out", **FAST)
    with pytest.raises(ValueError, match="outside the image"):
        write_labelme(tmp / "json" / "img01.json", [[0, 0], [500, 5], [5, 5]], LABELS)
        train_from_folders(tmp / "lab", tmp / "json", tmp / "unl", tmp / "out", size=(32, 32), **FAST)


def test_predict_folder_bad_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict_folder(tmp_path / "none.pt", tmp_path, tmp_path / "o")
    from shape_nb.train import save_checkpoint
    save_checkpoint(tmp_path / "other.pt", torch.nn.Linear(2, 2), {"a": 1})
    with pytest.raises(ValueError, match="not one of SemiSupervisedDetector.save"):
        predict_folder(tmp_path / "other.pt", tmp_path, tmp_path / "o")


def test_cli_train_and_predict(folders):
    "`shape_nb semisup train` / `predict` as a user runs them (exit codes, files), and a clear error for bad input."
    import subprocess, sys
    tmp, truth = folders
    cli = [sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", "semisup"]
    r = subprocess.run(cli + ["train", "--labelled", str(tmp / "lab"), "--labels", str(tmp / "json"), "--unlabelled",
                              str(tmp / "unl"), "--size", "32", "32", "--epochs-pretrain", "1", "--epochs-round", "1",
                              "--epochs-finetune", "1", "--rounds", "1", "--device", "cpu", "--out", str(tmp / "cli")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp / "cli" / "semisup.pt").exists()
    r = subprocess.run(cli + ["predict", str(tmp / "cli" / "semisup.pt"), str(tmp / "unl"), "--out", str(tmp / "pred")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp / "pred" / "landmarks.csv").exists()
    r = subprocess.run(cli + ["train", "--labelled", str(tmp / "lab"), "--labels", str(tmp / "nope"), "--out", str(tmp / "x")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "labels folder not found" in r.stderr and "Traceback" not in r.stderr
