"""DeepSSM's file-based entry points as the command line uses them: train_from_files / predict_from_files."""
import csv

import numpy as np
import pytest
import torch

from shape_nb.deepssm import ellipsoid_dataset, predict_from_files, read_points, train_from_files
from shape_nb.io import read_particles, write_image, write_particles

SMALL = dict(channels=(4, 4, 8, 8, 8), kernel_size=3, fc=(16, 8), pool_to=2, batch_size=4, epochs=2,
             progress=False, device="cpu")
SPACING, ORIGIN = (2.0, 1.5, 1.0), (-10.0, 5.0, 3.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """12 ellipsoid volumes as NRRD files with spacing and origin, their correspondences in mm (.particles and CSV)."""
    root = tmp_path_factory.mktemp("deepssm")
    data = ellipsoid_dataset(12, 16, 24, random_state=0)
    vox = (data["points"] + 1) * 8 - 0.5                                  # normalised -> voxel indices (x, y, z)
    mm = vox * np.array(SPACING) + np.array(ORIGIN)
    (root / "img").mkdir(); (root / "pts").mkdir()
    for i in range(12):
        write_image(root / "img" / f"s{i:02d}.nrrd", data["images"][i, 0].numpy(), spacing=SPACING, origin=ORIGIN)
        write_particles(root / "pts" / f"s{i:02d}.particles", mm[i])
    with open(root / "points.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "k", "x", "y", "z"])
        for i in reversed(range(12)):                                      # out of order: matched by name
            for k, p in enumerate(mm[i]):
                w.writerow([f"s{i:02d}", k, *p])
    return root, mm


def test_round_trip(files, tmp_path):
    root, mm = files
    est = train_from_files(root / "img", root / "pts", tmp_path / "model.pt", n_augment=6,
                           augment_kw=dict(n_control=12), **SMALL)
    assert (tmp_path / "model.pt").is_file() and est.augmentation_["n"] == 6
    res = predict_from_files(tmp_path / "model.pt", root / "img", tmp_path / "pred")
    assert len(res["particles"]) == 12 and res["points"].shape == (12, 24, 3)
    first = read_particles(tmp_path / "pred" / "s00.particles")
    np.testing.assert_allclose(first, res["points"][0])
    names, back = read_points(res["csv"])
    assert names == [f"s{i:02d}" for i in range(12)]
    np.testing.assert_allclose(back, res["points"])
    # predictions are in the physical frame of the training points (mm), near the shapes, not in voxels
    assert np.abs(res["points"].mean((0, 1)) - mm.mean((0, 1))).max() < 3.0
    # a folder as `out` gets deepssm.pt; the CSV input (rows out of order) gives the same pairing as the files
    est2 = train_from_files(root / "img", root / "points.csv", tmp_path, **SMALL)
    assert (tmp_path / "deepssm.pt").is_file()
    np.testing.assert_allclose(est2.mean_shape_, est.mean_shape_)


def test_round_trip_tl_with_validation(files, tmp_path):
    root, _ = files
    imgs = sorted((root / "img").iterdir()); pts = sorted((root / "pts").iterdir())
    est = train_from_files(imgs[:9], pts[:9], tmp_path / "tl.pt", val_images=imgs[9:], val_points=pts[9:],
                           kind="tl", latent=4, ae_hidden=(16,), **SMALL)
    assert list(est.history_) == ["autoencoder", "tflank", "joint"]
    assert "val_loss" in est.history_["joint"].records[0]
    res = predict_from_files(tmp_path / "tl.pt", imgs[9:], tmp_path / "out")
    assert res["points"].shape == (3, 24, 3) and np.isfinite(res["points"]).all()


@pytest.mark.parametrize("case,msg", [
    ("count", "got 12 images but 11 points sets"),
    ("dims", "the points have 3 coordinates but the images are 2D"),
    ("val", "give both val_images and val_points"),
    ("missing", "landmark source not found"),
])
def test_bad_training_input(files, tmp_path, case, msg):
    root, mm = files
    kw = dict(SMALL)
    if case == "count":
        args = (root / "img", sorted((root / "pts").iterdir())[:11])
    elif case == "dims":
        (tmp_path / "img2d").mkdir()
        for i in range(12): np.save(tmp_path / "img2d" / f"s{i:02d}.npy", np.random.rand(16, 16).astype(np.float32))
        args = (tmp_path / "img2d", root / "pts")
    elif case == "val":
        args, kw["val_images"] = (root / "img", root / "pts"), root / "img"
    else:
        args = (root / "img", tmp_path / "nowhere")
    with pytest.raises((ValueError, FileNotFoundError), match=None) as e:
        train_from_files(*args, tmp_path / "m.pt", **kw)
    assert msg in str(e.value)


def test_bad_prediction_input(files, tmp_path):
    root, _ = files
    train_from_files(root / "img", root / "pts", tmp_path / "m.pt", **SMALL)
    (tmp_path / "big").mkdir()
    write_image(tmp_path / "big" / "a.nrrd", np.zeros((20, 16, 16), np.float32) + np.arange(16, dtype=np.float32))
    with pytest.raises(ValueError, match=r"pass resize=\(16, 16, 16\)"):
        predict_from_files(tmp_path / "m.pt", tmp_path / "big", tmp_path / "out")
    res = predict_from_files(tmp_path / "m.pt", tmp_path / "big", tmp_path / "out", resize=(16, 16, 16))
    assert res["points"].shape == (1, 24, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict_from_files(tmp_path / "none.pt", root / "img", tmp_path / "out")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable shape_nb checkpoint"):
        predict_from_files(tmp_path / "junk.pt", root / "img", tmp_path / "out")


def test_cli_train_and_predict(files, tmp_path):
    "`shape_nb deepssm train` / `predict` as a user runs them; bad input -> exit 2 with a message."
    import subprocess, sys
    root, _ = files
    cli = [sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", "deepssm"]
    r = subprocess.run(cli + ["train", "--images", str(root / "img"), "--points", str(root / "pts"), "--epochs", "1",
                              "--device", "cpu", "--out", str(tmp_path / "m")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "deepssm.pt").is_file()
    r = subprocess.run(cli + ["predict", str(tmp_path / "m" / "deepssm.pt"), str(root / "img"), "--out", str(tmp_path / "p")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "p").glob("*.particles"))) == 12
    r = subprocess.run(cli + ["train", "--images", str(root / "img"), "--points", str(tmp_path / "nothing"),
                              "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
