"""DeepSSM's folder pipeline as the command line uses it: train_from_folder / predict_folder."""
import csv
import json

import numpy as np
import pytest
import torch

from shape_nb.core import InputError
from shape_nb.deepssm import DeepSSM, ellipsoid_dataset, predict_folder, read_points, train_from_folder
from shape_nb.estimator import STATE_DIR
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
    est = train_from_folder(root / "img", root / "pts", tmp_path / "run", n_augment=6,
                            augment_kw=dict(n_control=12), **SMALL)
    listing = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert listing == [".results.json", "deepssm.pt", "report.html", "summary.json"]
    assert est.augmentation_["n"] == 6 and est.n_landmarks_ == 24 and est.d_ == 3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary == est.summary_
    assert (summary["n_images"], summary["image_shape"], summary["kind"], summary["n_landmarks"]) == (12, [16, 16, 16],
                                                                                                     "base", 24)
    assert summary["checkpoint"] == str(tmp_path / "run" / "deepssm.pt")
    assert summary["stages"]["base"]["epochs"] == 2 and summary["stages"]["base"]["val_rmse"] > 0
    res = predict_folder(tmp_path / "run" / "deepssm.pt", root / "img", tmp_path / "pred")
    assert len(res["particles"]) == 12 and res["points"].shape == (12, 24, 3)
    assert res["n_images"] == 12 and res["n_landmarks"] == 24 and res["csv"] == str(tmp_path / "pred" / "landmarks.csv")
    assert json.loads((tmp_path / "pred" / "summary.json").read_text()) == {k: v for k, v in res.items()
                                                                           if k != "points"}
    first = read_particles(tmp_path / "pred" / "s00.particles")
    np.testing.assert_allclose(first, res["points"][0])
    names, back = read_points(res["csv"])
    assert names == [f"s{i:02d}" for i in range(12)]
    np.testing.assert_allclose(back, res["points"])
    # predictions are in the physical frame of the training landmarks (mm), near the shapes, not in voxels
    assert np.abs(res["points"].mean((0, 1)) - mm.mean((0, 1))).max() < 3.0
    # the CSV input (rows out of order) gives the same pairing as the files
    est2 = train_from_folder(root / "img", root / "points.csv", tmp_path / "run2", **SMALL)
    np.testing.assert_allclose(est2.mean_shape_, est.mean_shape_)


def test_loaded_checkpoint_predicts_the_same(files, tmp_path):
    root, _ = files
    data = ellipsoid_dataset(12, 16, 24, random_state=0)
    for kind in ("base", "tl"):
        est = DeepSSM(kind, latent=4, ae_hidden=(16,), **SMALL).fit(data["images"], data["points"])
        est.save(tmp_path / f"{kind}.pt")
        back = DeepSSM.load(tmp_path / f"{kind}.pt")
        assert torch.equal(back.predict(data["images"]), est.predict(data["images"]))
        assert torch.equal(back.encode(data["images"]), est.encode(data["images"]))
        assert back.get_params() == est.get_params() and back.image_shape_ == (1, 16, 16, 16)


def test_round_trip_tl_with_validation(files, tmp_path):
    root, _ = files
    imgs = sorted((root / "img").iterdir()); pts = sorted((root / "pts").iterdir())
    est = train_from_folder(imgs[:9], pts[:9], tmp_path / "tl", validation_images=imgs[9:],
                            validation_landmarks=pts[9:], kind="tl", latent=4, ae_hidden=(16,), **SMALL)
    assert list(est.history_) == ["autoencoder", "tflank", "joint"]
    assert "val_loss" in est.history_["joint"].records[0]
    assert est.summary_["n_images"] == 9 and est.summary_["n_validation"] == 3
    assert list(est.summary_["stages"]) == ["autoencoder", "tflank", "joint"]
    assert not (tmp_path / "tl" / STATE_DIR).exists()            # the training state goes once the run is written
    res = predict_folder(tmp_path / "tl" / "deepssm.pt", imgs[9:], tmp_path / "out")
    assert res["points"].shape == (3, 24, 3) and np.isfinite(res["points"]).all()


@pytest.mark.parametrize("case,msg", [
    ("count", "got 12 images but 11 sets of landmarks"),
    ("dims", "the landmarks have 3 coordinates but the images are 2D"),
    ("val", "give both validation_images and validation_landmarks"),
    ("missing", "landmark source not found"),
    ("param", "unknown DeepSSM parameter(s) ['n_points']"),
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
        args, kw["validation_images"] = (root / "img", root / "pts"), root / "img"
    elif case == "param":
        args, kw["n_points"] = (root / "img", root / "pts"), 3
    else:
        args = (root / "img", tmp_path / "nowhere")
    with pytest.raises(InputError) as e:
        train_from_folder(*args, tmp_path / "m", **kw)
    assert msg in str(e.value)
    assert not (tmp_path / "m").exists()                          # nothing written for input that cannot train


def test_output_folders(files, tmp_path):
    root, _ = files
    train_from_folder(root / "img", root / "pts", tmp_path / "run", **SMALL)
    with pytest.raises(InputError, match="already holds results"):
        train_from_folder(root / "img", root / "pts", tmp_path / "run", **SMALL)
    with pytest.raises(InputError, match="holds no training state"):
        train_from_folder(root / "img", root / "pts", tmp_path / "run", resume=True, **SMALL)
    est = train_from_folder(root / "img", root / "pts", tmp_path / "run", overwrite=True,
                            train_options=dict(checkpoint_every=1), **SMALL)
    assert est.train_options == dict(checkpoint_every=1)          # the user's options, not the run's state file
    predict_folder(tmp_path / "run" / "deepssm.pt", root / "img", tmp_path / "pred")
    with pytest.raises(InputError, match="already holds results"):
        predict_folder(tmp_path / "run" / "deepssm.pt", root / "img", tmp_path / "pred")
    predict_folder(tmp_path / "run" / "deepssm.pt", root / "img", tmp_path / "pred", overwrite=True)


def test_bad_prediction_input(files, tmp_path):
    root, _ = files
    train_from_folder(root / "img", root / "pts", tmp_path / "m", **SMALL)
    ckpt = tmp_path / "m" / "deepssm.pt"
    (tmp_path / "big").mkdir()
    write_image(tmp_path / "big" / "a.nrrd", np.zeros((20, 16, 16), np.float32) + np.arange(16, dtype=np.float32))
    with pytest.raises(InputError, match=r"pass resize=\(16, 16, 16\)"):
        predict_folder(ckpt, tmp_path / "big", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    res = predict_folder(ckpt, tmp_path / "big", tmp_path / "out", resize=(16, 16, 16))
    assert res["points"].shape == (1, 24, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        predict_folder(tmp_path / "none.pt", root / "img", tmp_path / "out2")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable shape_nb checkpoint"):
        predict_folder(tmp_path / "junk.pt", root / "img", tmp_path / "out3")


def test_cli_train_and_predict(files, tmp_path):
    "`shape_nb deepssm train` / `predict` as a user runs them; bad input -> exit 2 with a message."
    import subprocess
    import sys
    root, _ = files
    cli = [sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", "deepssm"]
    r = subprocess.run(cli + ["train", "--images", str(root / "img"), "--points", str(root / "pts"), "--epochs", "1",
                              "--device", "cpu", "--out", str(tmp_path / "m")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "deepssm.pt").is_file() and (tmp_path / "m" / "summary.json").is_file()
    r = subprocess.run(cli + ["predict", str(tmp_path / "m" / "deepssm.pt"), str(root / "img"),
                              "--out", str(tmp_path / "p")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "p").glob("*.particles"))) == 12 and (tmp_path / "p" / "landmarks.csv").is_file()
    r = subprocess.run(cli + ["train", "--images", str(root / "img"), "--points", str(tmp_path / "nothing"),
                              "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
