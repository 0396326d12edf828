"""LandmarkAnnotator without a browser: driven through its Python API (place, click, select, move, delete, undo, redo,
next/previous/goto, accept, save), started from LabelMe files, a LabelMe folder, an estimator or an array; the
LabelMe and CSV files it writes (exact round trip, missing landmarks, what semi-supervised training reads), the
overwrite rules and the autosave modes; detector_doubt on a corrupted prediction and a corrupted image."""
import json
import warnings

import numpy as np
import pytest
import torch

from shape_nb.annotate import LandmarkAnnotator, detector_doubt
from shape_nb.core import InputError, index_to_norm
from shape_nb.io import read_labelme, read_landmarks_csv, write_image, write_labelme
from shape_nb.semisup import SemiSupervisedDetector, train_from_folder

NAMES = ["a", "b", "c"]
SHAPE = (30, 40)


def blobs(points, shape=SHAPE, seed=0):
    "A grey uint8 image with a blob of a different width at each (x, y) pixel position."
    H, W = shape
    yy, xx = np.mgrid[0:H, 0:W]
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (1.0 + 0.5 * k) ** 2)) for k, (x, y) in enumerate(points))
    img = img + 0.05 * np.random.default_rng(seed).random(shape)
    return (255 * img / img.max()).astype(np.uint8)


def truth_points(n, seed=0):
    "(n, 3, 2) pixel positions of a triangle that varies a little."
    rng = np.random.default_rng(seed)
    return np.array([[20, 6], [10, 22], [30, 22]], float) + rng.normal(0, 1.0, (n, 3, 2))


@pytest.fixture
def folder(tmp_path):
    "Five synthetic PNGs in tmp/images, and their true landmark positions."
    (tmp_path / "images").mkdir()
    pts = truth_points(5)
    for i, p in enumerate(pts): write_image(tmp_path / "images" / f"im{i}.png", blobs(p, seed=i))
    return tmp_path, pts


def open_ann(tmp, **kw):
    return LandmarkAnnotator.from_folder(tmp / "images", tmp / "labels", NAMES, **kw)


def test_place_move_delete_undo_redo_and_files(folder):
    tmp, _ = folder
    ann = open_ann(tmp)
    assert (ann.index, ann.name, ann.selected) == (0, "im0.png", 0)
    assert ann.place(20.25, 6.5) == 0 and ann.place(10, 22) == 1 and ann.place(30.125, 21.75) == 2
    P, labels = read_labelme(tmp / "labels" / "im0.json", labels=NAMES)         # autosaved on every change
    assert np.array_equal(P, [[20.25, 6.5], [10, 22], [30.125, 21.75]])          # exact round trip
    assert ann.click(10.5, 22.5) == ("select", 1)                               # near "b"
    assert ann.click(11, 23) == ("place", 1)                                    # moves it
    assert ann.move("c", 31, 20) == 2
    assert ann.delete("a") == 0 and ann.selected == 0
    P, labels = read_labelme(tmp / "labels" / "im0.json")
    assert labels == ["b", "c"] and np.array_equal(P, [[11, 23], [31, 20]])      # missing "a": no shape for it
    with pytest.raises(InputError, match="missing label"):
        read_labelme(tmp / "labels" / "im0.json", labels=NAMES)
    assert ann.undo() and ann.undo()
    assert np.array_equal(ann.positions, [[20.25, 6.5], [11, 23], [30.125, 21.75]])
    assert ann.redo() and np.array_equal(ann.positions[2], [31, 20])
    assert read_labelme(tmp / "labels" / "im0.json", labels=NAMES)[0][2].tolist() == [31, 20]
    assert ann.next() == 1 and ann.undo() is False                              # each image has its own history
    assert ann.previous() == 0 and ann.goto("im4.png") == 4 and ann.next() == 4
    names, pts = read_landmarks_csv(tmp / "labels" / "landmarks.csv")
    assert names == ["im0.png"] and np.array_equal(pts[0], ann.points_[0])
    assert [p.split("/")[-1] for p in ann.complete()] == ["im0.png"]
    assert np.allclose(ann.landmarks[0], index_to_norm(ann.points_[0], SHAPE))
    d = json.loads((tmp / "labels" / "im0.json").read_text())
    assert (d["imagePath"], d["imageHeight"], d["imageWidth"]) == ("../images/im0.png", 30, 40)


def test_positions_round_trip_exactly(folder):
    tmp, pts = folder
    ann = open_ann(tmp)
    rng = np.random.default_rng(3)
    for i in range(3):
        ann.goto(i)
        for x, y in rng.uniform(-0.5, 39.5, (3, 2)): ann.place(x, y)
    for i in range(3):
        P, _ = read_labelme(tmp / "labels" / f"im{i}.json", labels=NAMES)
        assert np.array_equal(P, ann.points_[i])                                 # bit for bit
        assert np.array_equal(P * 1024, np.round(P * 1024))                       # kept to 1/1024 pixel
    names, csv_pts = read_landmarks_csv(tmp / "labels" / "landmarks.csv")
    assert names == ["im0.png", "im1.png", "im2.png"] and np.array_equal(csv_pts, ann.points_[:3])


def test_start_from_labelme_estimator_array(folder):
    tmp, pts = folder
    (tmp / "labels").mkdir()
    write_labelme(tmp / "labels" / "im1.json", pts[1], NAMES)                  # an existing annotation, loaded
    pred = tmp / "pred"
    pred.mkdir()
    write_labelme(pred / "im2.json", pts[2, :2], NAMES[:2])                    # a partial prediction file

    class Est:                                                                  # anything with .predict
        image_shape_ = (1, 16, 16)
        def predict(self, x):
            assert tuple(x.shape) == (len(x), 1, 16, 16)                        # resized to its training size
            return torch.full((len(x), 3, 2), 0.5)

    ann = open_ann(tmp, start=Est())
    ann.goto(1)
    assert np.allclose(ann.positions, pts[1], atol=1e-9)                        # the file wins over `start`
    ann.goto(0)
    assert np.array_equal(ann.positions, np.tile([29.5, 22.0], (3, 1)))         # normalised 0.5 -> pixels
    assert sorted(p.name for p in (tmp / "labels").iterdir()) == ["im1.json"]   # predictions are not saved ...
    ann.accept()                                                                # ... until accepted or changed
    assert np.array_equal(read_labelme(tmp / "labels" / "im0.json", labels=NAMES)[0], ann.positions)
    ann2 = open_ann(tmp, start=pred)
    ann2.goto(2)
    assert np.allclose(ann2.positions[:2], pts[2, :2], atol=1e-3) and np.isnan(ann2.positions[2]).all()
    assert ann2.selected == 2
    arr = index_to_norm(pts, SHAPE)
    arr[3, 1] = np.nan                                                          # NaN: not placed
    ann3 = open_ann(tmp, start=arr)
    ann3.goto(3)
    assert np.allclose(ann3.positions[[0, 2]], pts[3, [0, 2]], atol=1e-3) and ann3.selected == 1
    with pytest.raises(InputError, match=r"expected \(5, 3, 2\)"):
        open_ann(tmp, start=arr[:2])


def test_never_overwrites_files_it_did_not_load(folder):
    tmp, pts = folder
    (tmp / "labels").mkdir()
    write_labelme(tmp / "labels" / "im0.json", pts[0], NAMES)
    (tmp / "labels" / "landmarks.csv").write_text("somebody,else\n1,2\n")
    with pytest.raises(InputError, match="would replace without having loaded them"):
        open_ann(tmp, load=False)
    with pytest.raises(InputError, match="landmarks.csv"):                       # a CSV that is not ours
        open_ann(tmp)
    ann = open_ann(tmp, csv="mine.csv")
    write_labelme(tmp / "labels" / "im2.json", pts[2], NAMES)                  # appears after the start
    before = (tmp / "labels" / "im2.json").read_text()
    ann.goto(2)
    with pytest.raises(InputError, match="was not loaded by this annotator"):
        ann.place(5, 5)
    assert (tmp / "labels" / "im2.json").read_text() == before
    assert (tmp / "labels" / "landmarks.csv").read_text() == "somebody,else\n1,2\n"
    forced = open_ann(tmp, load=False, overwrite=True)
    forced.place(1, 2)
    assert read_labelme(tmp / "labels" / "im0.json")[0].tolist() == [[1, 2]]
    # labels unknown to `names` would be lost by a rewrite: refused at the start
    write_labelme(tmp / "labels" / "im3.json", pts[3], ["a", "b", "chin"])
    with pytest.raises(InputError, match=r"labels \['chin'\] not in names"):
        open_ann(tmp, csv="mine.csv")


def test_autosave_modes(folder):
    tmp, _ = folder
    ann = open_ann(tmp, autosave="image")
    ann.place(3, 4)
    assert not (tmp / "labels" / "im0.json").exists()                           # not yet ...
    ann.next()                                                                  # ... leaving the image saves it
    assert read_labelme(tmp / "labels" / "im0.json")[0].tolist() == [[3, 4]]
    ann.place(5, 6)
    manual = LandmarkAnnotator.from_folder(tmp / "images", tmp / "other", NAMES, autosave=False)
    manual.place(7, 8)
    manual.next()
    assert not (tmp / "other" / "im0.json").exists()
    assert [p.name for p in manual.save()] == ["im0.json", "landmarks.csv"]
    assert manual.save() == []
    # a crash (nothing more called) loses at most the image shown with autosave="image"
    again = open_ann(tmp)
    assert again.points_[0].tolist()[0] == [3, 4] and np.isnan(again.points_[1]).all()


@pytest.mark.filterwarnings("ignore:the images carry no pixel size")
def test_partial_files_and_semisup_training(folder):
    tmp, pts = folder
    ann = open_ann(tmp)
    for i in range(4):
        ann.goto(i)
        for p in pts[i]: ann.place(*np.round(p))
    ann.goto(4)
    ann.place(*pts[4, 0])                                                       # image 4: one landmark of three
    assert [p.split("/")[-1] for p in ann.complete()] == [f"im{i}.png" for i in range(4)]
    fast = dict(self_training=False, epochs_pretrain=1, epochs_finetune=1, channels=(4, 8), batch_size=4,
                device="cpu", progress=False)
    det = train_from_folder(ann.complete(), tmp / "labels", tmp / "out", size=(16, 16), **fast)
    assert det.summary_["n_labelled"] == 4 and det.landmark_names_ == NAMES
    with pytest.raises(InputError, match=r"im4.json: missing label\(s\) 'b', 'c'"):
        train_from_folder(tmp / "images", tmp / "labels", tmp / "out2", size=(16, 16), **fast)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = train_from_folder(tmp / "images", tmp / "labels", tmp / "out3", size=(16, 16), on_bad_labels="skip",
                                **fast)
    assert [s["image"] for s in det.summary_["skipped"]] == ["im4.png"]


def test_detector_doubt_ranks_corrupted_first():
    pts = truth_points(14, seed=1)
    x = torch.tensor(np.stack([blobs(p, seed=i) for i, p in enumerate(pts)]), dtype=torch.float32)[:, None] / 255
    y = torch.tensor(index_to_norm(pts, SHAPE), dtype=torch.float32)
    det = SemiSupervisedDetector(self_training=False, epochs_pretrain=8, epochs_finetune=0, channels=(8, 16),
                                 batch_size=4, lr=1e-2, device="cpu", progress=False).fit(x[:10], y[:10])
    new = x[10:].clone()
    # a corrupted prediction: the detector's own landmarks, with one landmark of image 2 moved far off
    pred = det.predict(new)
    bad = pred.clone()
    bad[2, 0] += torch.tensor([0.5, 0.6])
    det.predict = lambda images, batch_size=16: bad
    shape_doubt = detector_doubt(det, new)
    assert shape_doubt.shape == (4,) and int(np.argmax(shape_doubt)) == 2
    del det.predict
    # a corrupted image: noise instead of the blobs flattens the heatmaps
    new[1] = torch.rand(new[1].shape, generator=torch.Generator().manual_seed(0))
    peak_doubt = detector_doubt(det, new, by="peak")
    assert int(np.argmax(peak_doubt)) == 1
    ann = LandmarkAnnotator(new, NAMES, start=det, doubt=peak_doubt)
    assert ann.index == 1 and np.isfinite(ann.positions).all()                 # the most doubtful image first
