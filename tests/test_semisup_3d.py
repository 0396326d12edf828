"""Semi-supervised detection on 3D folders: phantom volumes written as NIfTI and NRRD with oblique and flipped
directions, landmarks as 3D Slicer markups (.mrk.json in RAS and LPS, .fcsv) or CSV, `shape_nb semisup train` and
`predict --markups` through the command line, and the bad inputs of 3D folders (exit 2, one line that says what to
do). Everything is synthetic and tiny (12^3 network input, a 2-level UNet)."""
import json
import shutil

import numpy as np
import pytest

from shape_nb.cli import main
from shape_nb.core import norm_to_index
from shape_nb.io import file_stem, read_image, read_images, read_landmarks_csv, stack_images, write_image
from shape_nb.io import write_labelme, write_landmarks_csv
from shape_nb.markups import index_to_markups, read_markups, write_markups
from shape_nb.phantoms import tps_phantoms_3d
from shape_nb.semisup import SemiSupervisedDetector, _read_labelled

NAMES = ["a", "b", "c", "d", "e", "f"]
SIZE = (12, 12, 12)
TRAIN = ["--size", *map(str, SIZE), "--channels", "4", "8", "--epochs-pretrain", "2", "--epochs-round", "1",
         "--epochs-finetune", "1", "--rounds", "1", "--z-threshold", "5", "--device", "cpu"]


def direction(i):
    "Oblique (a rotation about an tilted axis) for most volumes, a flipped y axis for every third."
    if i % 3 == 0: return np.diag([1.0, -1.0, 1.0])
    a, b = np.radians(20.0 * i), np.radians(15.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


@pytest.fixture(scope="module")
def vols(tmp_path_factory):
    "6 labelled + 3 unlabelled 16^3 phantoms (NIfTI / NRRD) with their markups, and the true voxel indices by stem."
    t = tmp_path_factory.mktemp("vol3d")
    (t / "marks").mkdir()
    images, cps = tps_phantoms_3d(9, 16, sigma=0.03, seed=3)
    truth = {}
    for i in range(9):
        p = write_image(t / ("lab" if i < 6 else "unl") / f"c{i}{('.nii.gz', '.nrrd')[i % 2]}", images[i, 0],
                        spacing=(0.9, 1.1, 1.2 + 0.1 * i), origin=(-5.0 * i, 12.0, 3.0), direction=direction(i))
        im = read_image(p)                                  # the geometry as stored (NIfTI: float32)
        truth[file_stem(p)] = idx = norm_to_index(cps[i].double().numpy(), im.shape)
        if i < 6:
            cs = ("LPS", "RAS")[i % 2]
            write_markups(t / "marks" / f"c{i}{'.fcsv' if i in (2, 5) else '.mrk.json'}",
                          index_to_markups(idx, im, cs), NAMES, cs)
    return t, truth


@pytest.fixture(scope="module")
def trained(vols):
    "A detector trained through `shape_nb semisup train` on the 3D folder."
    t, _ = vols
    code = main(["semisup", "train", "--labelled", str(t / "lab"), "--labels", str(t / "marks"),
                 "--unlabelled", str(t / "unl"), *TRAIN, "--out", str(t / "out")])
    assert code == 0
    return t / "out"


def test_labels_normalise_to_the_true_voxels(vols):
    t, truth = vols
    _, y, labels, skipped, geo = _read_labelled(t / "lab", t / "marks", SIZE, None, "error")
    assert labels == NAMES and skipped == [] and y.shape == (6, 6, 3)
    for yi, g in zip(y, geo):             # normalised in the file's own shape: back to the true voxel indices
        np.testing.assert_allclose(norm_to_index(yi, g.shape), truth[file_stem(g.path)], atol=1e-9)
    # the same landmarks from one CSV of voxel indices, and from one CSV per image (as the VolumeAnnotator saves them)
    names = [f"c{i}{('.nii.gz', '.nrrd')[i % 2]}" for i in range(6)]
    write_landmarks_csv(t / "all.csv", np.stack([truth[file_stem(n)] for n in names]), names)
    _, y_csv, labels_csv, _, _ = _read_labelled(t / "lab", t / "all.csv", SIZE, None, "error")
    (t / "per").mkdir(exist_ok=True)
    for n in names: write_landmarks_csv(t / "per" / f"{file_stem(n)}.csv", truth[file_stem(n)][None], [n])
    _, y_per, _, _, _ = _read_labelled(t / "lab", t / "per", SIZE, ["5", "0"], "error")
    assert labels_csv == [str(k) for k in range(6)]
    np.testing.assert_allclose(y_csv, y, atol=1e-9)
    np.testing.assert_allclose(y_per, y[:, [5, 0]], atol=1e-9)


def test_train_and_predict_through_the_cli(vols, trained, capsys):
    t, truth = vols
    assert sorted(p.name for p in trained.iterdir()) == [".results.json", "report.html", "semisup.pt", "summary.json",
                                                         "unlabelled_landmarks.csv"]
    s = json.loads((trained / "summary.json").read_text())
    assert (s["image_shape"], s["units"], s["labels"], s["n_labelled"], s["n_unlabelled"]) == ([12] * 3, "mm", NAMES,
                                                                                                6, 3)
    # spacing: mm per network voxel, the mean over the 9 files of 16/12 of their voxels
    np.testing.assert_allclose(s["spacing"], np.array([0.9, 1.1, 1.2 + 0.1 * np.arange(9).mean()]) * 16 / 12)
    assert "slices through its centre" in (trained / "report.html").read_text()
    pred = t / "pred"
    assert main(["semisup", "predict", str(trained / "semisup.pt"), str(t / "unl"), "--markups", "--out",
                 str(pred)]) == 0
    assert sorted(p.name for p in pred.iterdir()) == [".results.json", "c6.mrk.json", "c7.mrk.json", "c8.mrk.json",
                                                      "landmarks.csv", "report.html", "summary.json"]
    names, idx = read_landmarks_csv(pred / "landmarks.csv")
    assert names == ["c6.nii.gz", "c7.nrrd", "c8.nii.gz"] and idx.shape == (3, 6, 3)
    det = SemiSupervisedDetector.load(trained / "semisup.pt")
    x = stack_images(read_images(t / "unl", resize=SIZE))
    for n, P, p in zip(names, idx, det.predict(x).double().numpy()):
        im = read_image(t / "unl" / n)
        np.testing.assert_allclose(P, norm_to_index(p, im.shape), atol=1e-9)     # each file's own voxel indices
        m = read_markups(pred / f"{file_stem(n)}.mrk.json")                    # LPS mm through the file's geometry
        assert m.names == NAMES and m.coordinate_system == "LPS"
        np.testing.assert_allclose(m.points, index_to_markups(P, im), atol=1e-9)
    np.testing.assert_allclose(idx, read_landmarks_csv(trained / "unlabelled_landmarks.csv")[1], atol=1e-4)
    assert "heatmap spread" in (pred / "report.html").read_text()


def _copy(t, dst, drop=None):
    "A copy of the labelled volumes and their markups (without the markups of `drop`) in `dst`."
    shutil.copytree(t / "lab", dst / "lab")
    shutil.copytree(t / "marks", dst / "marks", ignore=lambda d, names: [n for n in names if n.startswith(drop or "-")])
    return dst / "lab", dst / "marks"


def _renamed(t, dst):
    lab, marks = _copy(t, dst)
    m = read_markups(marks / "c4.mrk.json")
    write_markups(marks / "c4.mrk.json", m.points, NAMES[:5] + ["z"])
    return lab, marks


def _nan_csv(t, dst, truth):
    lab, _ = _copy(t, dst)
    P = np.stack([truth[f"c{i}"] for i in range(6)]); P[3, 2] = np.nan
    write_landmarks_csv(dst / "l.csv", P, [f"c{i}{('.nii.gz', '.nrrd')[i % 2]}" for i in range(6)])
    return lab, dst / "l.csv"


def _with_png(t, dst, unlabelled=False):
    lab, marks = _copy(t, dst)
    write_image((dst / "unl" if unlabelled else lab) / "c9.png", np.random.default_rng(0).random((16, 16)))
    return lab, marks


def _labelme(t, dst):
    lab, marks = _copy(t, dst, drop="c1")
    write_labelme(marks / "c1.json", np.ones((6, 2)), NAMES)
    return lab, marks


BAD = [   # (folders from (source, tmp, truth), extra arguments, words of the message)
    (lambda t, d, tr: _copy(t, d, drop="c3"), [], ["1 labelled image(s) have no landmark file", "c3.mrk.json",
                                                   "3D Slicer markups"]),
    (lambda t, d, tr: _renamed(t, d), [], ["c4.mrk.json", "missing label(s) 'f'", "--skip-bad-labels"]),
    (_nan_csv, [], ["l.csv (image c3)", "['2'] have NaN", "--skip-bad-labels"]),
    (lambda t, d, tr: _with_png(t, d), [], ["cannot mix 2D and 3D", "c9.png"]),
    (lambda t, d, tr: _copy(t, d), ["--size", "12", "12"], ["size must be (D, H, W) for the 3D labelled images",
                                                            "--size D H W"]),
    (lambda t, d, tr: _copy(t, d), ["--size", "12", "12", "12", "12"], ["size must be (H, W) for 2D or (D, H, W)"]),
    (lambda t, d, tr: _labelme(t, d), [], ["no landmark file", "c1.mrk.json", "['c1.json']", "hold 2D points"]),
    (lambda t, d, tr: _with_png(t, d, unlabelled=True), ["--unlabelled", "{tmp}/unl"],
     ["unlabelled images: the images in", "are 2D but the labelled images are 3D"]),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_3d_input_exit_2(vols, tmp_path, capsys, case):
    t, truth = vols
    build, extra, words = BAD[case]
    lab, labels = build(t, tmp_path, truth)
    args = ([] if "--size" in extra else ["--size", *map(str, SIZE)]) + [a.format(tmp=tmp_path) for a in extra]
    code = main(["semisup", "train", "--labelled", str(lab), "--labels", str(labels), *args, "--supervised-only",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("shape_nb semisup: error: ") and all(w in err for w in words), (words, err)


def test_bad_predict_input_exit_2(vols, trained, tmp_path, capsys):
    t, _ = vols
    png = tmp_path / "png"
    write_image(png / "a.png", np.random.default_rng(0).random((16, 16)))
    for args, words in (([str(t / "unl"), "--labelme"], ["the detector is 3D", "--markups"]),
                        ([str(png)], ["images: the images in", "are 2D but the detector", "is 3D"])):
        code = main(["semisup", "predict", str(trained / "semisup.pt"), *args, "--out", str(tmp_path / "p")])
        err = capsys.readouterr().err
        assert code == 2 and all(w in err for w in words), err
