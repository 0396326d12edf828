"""Bad input as a new user meets it, through the API and the CLI: one row per case.

Every API row asserts the exception type and the key words of its message (what went wrong, where: the
path, index or name, and how to fix it). Every CLI row runs `shape_nb.cli.main(argv)` in-process and asserts
exit code 2, one `shape_nb <cmd>: error: ...` line on stderr with the same key words, and no traceback. Two
rows run the real console entry point in a subprocess. All fixture files are tiny and built in tmp_path;
every row fails at validation, before any training.
"""
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import shape_nb.core as core
from shape_nb.core import DeviceError, InputError, MissingFileError
import shape_nb.io
from shape_nb.cli import main
from shape_nb.core import get_device
from shape_nb.data import Whitener
from shape_nb.deepssm import DeepSSM
from shape_nb.deepssm import predict_folder as deepssm_predict_folder
from shape_nb.deepssm import train_from_folder as deepssm_train_from_folder
from shape_nb.discovery import LandmarkDiscovery, discover_landmarks
from shape_nb.io import (read_image, read_images, read_labelme, read_landmark_folder, read_landmarks_csv,
                         read_particles, stack_images, write_image, write_labelme, write_landmarks_csv,
                         write_particles)
from shape_nb.markups import write_markups
from shape_nb.semisup import SemiSupervisedDetector, predict_folder, train_from_folder
from shape_nb.shape import PPCA, ShapePCA
from shape_nb.tps import tps_fit

TINY = dict(epochs=1, progress=False, device="cpu")
TINY_SS = dict(epochs_pretrain=1, epochs_round=1, epochs_finetune=1, progress=False, device="cpu")


# -- fixture builders (all files live in the row's tmp_path) -------------------------------------------
def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def pngs(t, name="img", n=3, size=(16, 16), start=0):
    "A folder of n random grey PNGs 00.png, 01.png, ..."
    d = t / name; d.mkdir(exist_ok=True)
    for i in range(start, start + n): write_image(d / f"{i:02d}.png", rand(size, i))
    return d


def npys(t, name, arrays):
    d = t / name; d.mkdir(exist_ok=True)
    for i, a in enumerate(arrays): np.save(d / f"{i:02d}.npy", np.asarray(a, np.float32))
    return d


def empty(t):
    d = t / "empty"; d.mkdir(); return d


def truncated_png(t, name="img"):
    "Two good PNGs and one cut after its first 40 bytes (header intact, pixel data gone)."
    d = pngs(t, name, 3)
    raw = (d / "01.png").read_bytes(); (d / "01.png").write_bytes(raw[:40])
    return d


def unreadable(t, mp):
    "A file the user may not read (simulated when running as root, who may read anything)."
    p = pngs(t) / "00.png"
    if os.geteuid() != 0: p.chmod(0)
    else:
        def denied(path): raise PermissionError(13, "Permission denied", str(path))
        mp.setitem(shape_nb.io._READERS, "Pillow", denied)
    read_images(p.parent)


def garbage_png(t):
    d = t / "garbage"; d.mkdir(); (d / "scan.png").write_text("this is not an image\n"); return d / "scan.png"


def truncated_nifti(t):
    p = t / "vol.nii.gz"; write_image(p, rand((8, 8, 8)))
    raw = p.read_bytes(); p.write_bytes(raw[: len(raw) // 2]); return p


def mixed_dims(t):
    return npys(t, "dims", [rand((16, 16)), rand((8, 8, 8), 1)])


def mixed_sizes(t):
    d = pngs(t, "sizes", 2); write_image(d / "02.png", rand((20, 16), 2)); return d


def nan_images(t, value=np.nan):
    b = rand((16, 16), 1); b[3, 4] = value
    return npys(t, "nan", [rand((16, 16)), b])


def constant_images(t):
    return npys(t, "const", [np.full((16, 16), 7.0)] * 3)


LABELS = ["nasion", "sella", "menton"]
POINTS = np.array([[3.0, 4.0], [10.0, 5.0], [7.0, 12.0]])


def labelled(t, edit=None, n=3):
    "n labelled 16x16 PNGs with LabelMe files; edit(i, labels, points) may change file i."
    d = pngs(t, "lab", n)
    for i in range(n):
        lab, P = list(LABELS), POINTS.copy() + i * 0.5
        if edit: lab, P = edit(i, lab, P)
        write_labelme(d / f"{i:02d}.json", P, lab, image_path=f"{i:02d}.png", image_shape=(16, 16))
    return d


def dup_label(i, lab, P):
    return (["nasion", "nasion", "menton"], P) if i == 1 else (lab, P)


def missing_label(i, lab, P):
    return (lab[:2], P[:2]) if i == 2 else (lab, P)


def outside(i, lab, P):
    if i == 1: P[2] = [7.0, 40.0]
    return lab, P


def labelme_file(t, edit):
    return labelled(t, edit) / ("02.json" if edit is missing_label else "01.json")


def volumes_with_markups(t, edit=None, n=3, drop=None):
    "n random 8^3 NIfTI volumes in lab/ and 3D Slicer markups (mm = voxels) in marks/ but `drop`'s; edit as `labelled`."
    d, m = t / "lab", t / "marks"; m.mkdir(parents=True)
    for i in range(n):
        write_image(d / f"{i:02d}.nii.gz", rand((8, 8, 8), i))
        lab, P = list(LABELS), np.c_[POINTS / 2, [2.0, 3.0, 4.0]] + i * 0.25
        if edit: lab, P = edit(i, lab, P)
        if i != drop: write_markups(m / f"{i:02d}.mrk.json", P, lab)
    return d, m


def volumes_with_nan_csv(t):
    "3 volumes and one CSV of their voxel indices, one of them NaN (a landmark not placed)."
    d, _ = volumes_with_markups(t)
    P = np.tile(np.c_[POINTS / 2, [2.0, 3.0, 4.0]], (3, 1, 1)); P[1, 2, 0] = np.nan
    write_landmarks_csv(t / "l.csv", P, [f"{i:02d}.nii.gz" for i in range(3)])
    return d, t / "l.csv"


def volumes_with_labelme(t):
    "3 volumes with LabelMe (2D) files beside them."
    d, _ = volumes_with_markups(t)
    for i in range(3): write_labelme(d / f"{i:02d}.json", POINTS, LABELS)
    return d


def volumes_with_particles(t, names=("a", "b", "c"), counts=(5, 5, 5), img_names=("a", "b", "c")):
    "3D 8^3 .npy images and .particles files (M points each) named independently."
    di, dp = t / "vol", t / "pts"; di.mkdir(); dp.mkdir()
    for i, s in enumerate(img_names): np.save(di / f"{s}.npy", rand((8, 8, 8), i))
    for i, (s, m) in enumerate(zip(names, counts)): write_particles(dp / f"{s}.particles", rand((m, 3), 10 + i) * 7)
    return di, dp


def csv_dup_names(t):
    di, _ = volumes_with_particles(t)
    p = t / "points.csv"
    rows = ["image,x0,y0,z0,x1,y1,z1"] + [f"{s},1,2,3,4,5,6" for s in ("a", "a", "c")]
    p.write_text("\n".join(rows) + "\n")
    return di, p


def fake_broken_gpu(mp):
    "CUDA visible but unable to run a kernel (driver mismatch): the probe fails."
    mp.setattr(torch.cuda, "is_available", lambda: True)
    mp.setattr(core, "_probe", lambda dev: "RuntimeError: CUDA error: no kernel image is available for execution")


def auto_fallback_is_loud(t, mp):
    "device='auto' with a broken GPU falls back to the CPU with a warning, never silently; then fail to show it."
    fake_broken_gpu(mp)
    with pytest.warns(UserWarning, match="cannot run a kernel.*using the CPU"):
        dev = get_device("auto")
    raise RuntimeError(f"fell back to {dev}")


def small_pca_shapes():
    return np.random.default_rng(0).random((3, 5, 2))


def api(fn, exc, *words, marks=(), id=None):
    return pytest.param("api", fn, exc, words, marks=marks, id=id)


def cli(fn, *words, marks=(), id=None):
    return pytest.param("cli", fn, None, words, marks=marks, id=id)


CASES = [
    # ---- files: missing, empty, unreadable, truncated ----
    api(lambda t, mp: read_images(empty(t)), MissingFileError, "no image files", "empty",
        "pass a folder of image files",
        id="api-empty-folder"),
    api(lambda t, mp: read_images(t / "nowhere"), MissingFileError, "not found", "nowhere", id="api-missing-folder"),
    api(lambda t, mp: read_images(str(t / "img" / "*.png")), MissingFileError, "matches no files", "check the pattern",
        id="api-glob-matches-nothing"),
    api(lambda t, mp: read_image(truncated_png(t) / "01.png"), InputError, "01.png", "truncated", "leave it out",
        id="api-truncated-png"),
    api(lambda t, mp: read_images(truncated_png(t)), InputError, "01.png", "truncated",
        id="api-truncated-png-in-folder"),
    api(unreadable, InputError, "00.png", "permission denied", "chmod +r", id="api-unreadable-permission"),
    api(lambda t, mp: read_image(garbage_png(t)), InputError, "scan.png", "cannot read", "corrupt",
        id="api-not-an-image"),
    api(lambda t, mp: read_image(truncated_nifti(t)), InputError, "vol.nii.gz", "NIfTI", "truncated",
        id="api-truncated-nifti"),
    api(lambda t, mp: read_image((t / "a.gif").write_bytes(b"GIF89a") and t / "a.gif"), InputError, "a.gif",
        "unsupported image extension", ".png", id="api-unsupported-extension"),
    # ---- sets: dimensionality, size, values ----
    api(lambda t, mp: read_images(mixed_dims(t)), InputError, "cannot mix 2D and 3D", "00.npy", "01.npy",
        "read them separately", id="api-mixed-2d-3d"),
    api(lambda t, mp: read_images(mixed_sizes(t)), InputError, "different sizes", "(20, 16)", "02.png", "resize=",
        id="api-mixed-sizes"),
    api(lambda t, mp: stack_images([read_image(p) for p in sorted(mixed_sizes(t).iterdir())]), InputError,
        "different sizes", "02.png", "resize=", id="api-stack-mixed-sizes"),
    api(lambda t, mp: read_images(nan_images(t)), InputError, "01.npy", "NaN/Inf", "nan_to_num", id="api-nan-image"),
    api(lambda t, mp: read_images(nan_images(t, np.inf)), InputError, "01.npy", "NaN/Inf", id="api-inf-image"),
    api(lambda t, mp: Whitener().fit(torch.full((3, 1, 8, 8), 7.0)), InputError, "every value of all 3 images is 7.0",
        "std is 0", "check that the files", id="api-whiten-constant-set"),
    api(lambda t, mp: Whitener(per_image=True).transform(torch.cat([torch.rand(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)])),
        InputError, "image 1 is constant", "std is 0", id="api-whiten-per-image-constant"),
    api(lambda t, mp: Whitener().fit(torch.tensor([[[[0.0, float("nan")]]]])), InputError, "image 0", "NaN or Inf",
        id="api-whiten-nan"),
    # ---- landmark files ----
    api(lambda t, mp: read_labelme(labelme_file(t, dup_label), LABELS), InputError, "01.json", "duplicate label",
        "'nasion' (2 times)", "fix the annotation", id="api-labelme-duplicate-label"),
    api(lambda t, mp: read_labelme(labelme_file(t, missing_label), LABELS), InputError, "02.json",
        "missing label(s) 'menton'", id="api-labelme-missing-label"),
    api(lambda t, mp: read_landmark_folder(str(labelled(t, missing_label) / "*.json")), InputError,
        "disagree on the number of points", "3 points", "2 points", "02.json", id="api-labelme-wrong-count"),
    api(lambda t, mp: read_landmark_folder(str(labelled(t, outside) / "*.json"), LABELS, shape=(16, 16)), InputError,
        "01.json", "'menton'", "lies outside the image of shape (16, 16)", "coordinate convention",
        id="api-landmark-outside-image"),
    api(lambda t, mp: read_labelme((t / "cut.json").write_text('{"shapes": [{"label": "a", "po') and t / "cut.json"),
        InputError, "cut.json", "not valid JSON", "truncated", id="api-labelme-truncated-json"),
    api(lambda t, mp: read_landmarks_csv((t / "l.csv").write_text("image,k,x,y\na,0,1,2\na,1,3,4\nb,0,1,2\n")
                                         and t / "l.csv"), InputError, "l.csv", "different numbers of landmarks",
        "1 landmarks in 1 image (b)", "add the missing rows", id="api-csv-wrong-count"),
    api(lambda t, mp: read_landmarks_csv((t / "l.csv").write_text("image,k,x,y\na,0,1,2\na,0,3,4\n") and t / "l.csv"),
        InputError, "l.csv", "row 3", "k=0", "appears twice", "remove the duplicate row",
        id="api-csv-duplicate-landmark"),
    api(lambda t, mp: read_particles((t / "p.particles").write_text("1 2 3\n4 5\n") and t / "p.particles"), InputError,
        "p.particles", "line 2", "is not 'x y z'", id="api-particles-bad-line"),
    api(lambda t, mp: deepssm_train_from_folder(*volumes_with_particles(t, counts=(5, 5, 4)), t / "m", **TINY),
        InputError,
        "disagree on the number of points", "c.particles", id="api-deepssm-wrong-point-count"),
    api(lambda t, mp: deepssm_train_from_folder(*volumes_with_particles(t, names=("a", "b", "d")), t / "m", **TINY),
        InputError, "'c'", "'d'", "by file name", id="api-deepssm-missing-name"),
    api(lambda t, mp: deepssm_train_from_folder(*csv_dup_names(t), t / "m", **TINY), InputError, "'a'",
        "more than once",
        id="api-deepssm-duplicate-name"),
    api(lambda t, mp: train_from_folder(pngs(t), t / "nolabels", out=t / "o", size=(16, 16), **TINY_SS),
        MissingFileError, "labels folder not found", "nolabels", "--labels", id="api-semisup-no-labels-folder"),
    api(lambda t, mp: train_from_folder(labelled(t, dup_label), t / "lab", out=t / "o",
                                         size=(16, 16), self_training=False, **TINY_SS), InputError, "01.json",
        "duplicate label", "on_bad_labels='skip'", id="api-semisup-duplicate-label"),
    api(lambda t, mp: train_from_folder(labelled(t, outside), t / "lab", out=t / "o", size=(16, 16),
                                         self_training=False, **TINY_SS), InputError, "01.json", "lies outside",
        id="api-semisup-landmark-outside"),
    api(lambda t, mp: train_from_folder(*volumes_with_markups(t, dup_label), out=t / "o", size=(8, 8, 8),
                                         self_training=False, **TINY_SS), InputError, "01.mrk.json", "duplicate label",
        "'nasion' (2 times)", "on_bad_labels='skip'", id="api-semisup-3d-duplicate-label"),
    api(lambda t, mp: train_from_folder(*volumes_with_markups(t, missing_label), out=t / "o", size=(8, 8, 8),
                                         self_training=False, **TINY_SS), InputError, "02.mrk.json",
        "missing label(s) 'menton'", id="api-semisup-3d-missing-label"),
    api(lambda t, mp: predict_folder(t / "missing.pt", pngs(t), t / "o"), MissingFileError, "missing.pt",
        "does not exist", id="api-semisup-missing-checkpoint"),
    api(lambda t, mp: deepssm_predict_folder((t / "x.pt").write_text("junk") and t / "x.pt", pngs(t), t / "o"),
        InputError,
        "x.pt", "not a readable shape_nb checkpoint", "truncated", id="api-deepssm-not-a-checkpoint"),
    # ---- geometry and models ----
    api(lambda t, mp: tps_fit(torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]]),
                              torch.rand(1, 4, 2)), InputError, "points 1 and 3", "coincide", "reg > 0",
        id="api-tps-coincident"),
    api(lambda t, mp: tps_fit(torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]]), torch.rand(1, 3, 2)), InputError,
        "collinear", "spread the landmarks out", id="api-tps-collinear"),
    api(lambda t, mp: ShapePCA(n_components=5).fit(small_pca_shapes()), InputError, "n_components=5",
        "at most n_shapes - 1 = 2", "use 1..2", id="api-pca-too-many-modes"),
    api(lambda t, mp: PPCA(n_components=2).fit(small_pca_shapes()), InputError, "no variance for sigma^2",
        "n_components < 2", id="api-ppca-all-modes"),
    api(lambda t, mp: DeepSSM(n_components=5, **TINY).fit(torch.rand(3, 1, 8, 8, 8), np.random.rand(3, 4, 3)),
        InputError, "n_components=5", "at most n_shapes - 1 = 2", id="api-deepssm-pca-too-many-modes"),
    api(lambda t, mp: LandmarkDiscovery(n_landmarks=100, **TINY).fit(torch.rand(3, 1, 16, 16)), InputError,
        "n_landmarks=100",
        "(16, 16)", "at most 60", "fewer landmarks", id="api-discovery-k-too-large"),
    api(lambda t, mp: discover_landmarks(torch.rand(4, 1, 8, 8, 8), n_landmarks=60, **TINY), InputError,
        "n_landmarks=60",
        "(8, 8, 8)", "at most 56", id="api-discovery-k-too-large-3d"),
    api(lambda t, mp: LandmarkDiscovery(**TINY).fit(torch.rand(1, 1, 16, 16)), InputError, "at least 2 images",
        id="api-discovery-one-image"),
    api(lambda t, mp: SemiSupervisedDetector(**TINY_SS).fit(torch.rand(3, 1, 16, 16), torch.rand(3, 3, 2) * 4),
        InputError, "landmarks must", id="api-semisup-landmarks-not-normalised"),
    # ---- devices ----
    api(lambda t, mp: get_device("gpu"), DeviceError, "'gpu'", "is not a device", "'cuda'",
        id="api-device-unknown-name"),
    api(lambda t, mp: get_device("cuda:7") if not torch.cuda.is_available() or torch.cuda.device_count() < 8
        else pytest.skip("8 GPUs"), DeviceError, "'cuda:7'", "use device='cpu'", id="api-device-cuda-unusable"),
    api(lambda t, mp: (fake_broken_gpu(mp), get_device("cuda")), DeviceError, "'cuda'", "cannot run a kernel",
        "no kernel image", "use device='cpu'", id="api-device-gpu-probe-fails"),
    api(auto_fallback_is_loud, RuntimeError, "fell back to cpu", id="api-device-auto-fallback-warns"),
    # ---- the command line (in-process) ----
    cli(lambda t, mp: ["discover", str(empty(t))], "no image files", "empty", id="cli-discover-empty-folder"),
    cli(lambda t, mp: ["discover", str(truncated_png(t))], "01.png", "truncated", id="cli-discover-truncated-png"),
    cli(lambda t, mp: ["discover", str(mixed_dims(t))], "cannot mix 2D and 3D", id="cli-discover-mixed-2d-3d"),
    cli(lambda t, mp: ["discover", str(mixed_sizes(t))], "different sizes", "--resize", id="cli-discover-mixed-sizes"),
    cli(lambda t, mp: ["discover", str(nan_images(t))], "01.npy", "NaN/Inf", id="cli-discover-nan"),
    cli(lambda t, mp: ["discover", str(constant_images(t))], "every value of all 3 images is 7.0", "std is 0",
        id="cli-discover-constant-set"),
    cli(lambda t, mp: ["discover", str(pngs(t)), "--k", "100"], "n_landmarks=100", "at most 60",
        id="cli-discover-k-too-large"),
    cli(lambda t, mp: ["discover", str(pngs(t)), "--device", "gpu"], "'gpu'", "is not a device",
        id="cli-discover-device-unknown"),
    cli(lambda t, mp: (fake_broken_gpu(mp), ["discover", str(pngs(t)), "--device", "cuda"])[1], "cannot run a kernel",
        "use device='cpu'", id="cli-discover-gpu-probe-fails"),
    cli(lambda t, mp: ["deepssm", "train", "--images", str(volumes_with_particles(t, names=("a", "b"),
                                                                                 counts=(5, 5))[0]),
                       "--points", str(t / "pts")], "'c'", "by file name", id="cli-deepssm-train-missing-points"),
    cli(lambda t, mp: ["deepssm", "train", *sum(zip(["--images", "--points"],
                                                    map(str, volumes_with_particles(t, counts=(5, 6, 5)))), ())],
        "disagree on the number of points", id="cli-deepssm-train-wrong-count"),
    cli(lambda t, mp: ["deepssm", "predict", str(t / "none.pt"), str(pngs(t))], "none.pt", "does not exist",
        "a training run wrote",
        id="cli-deepssm-predict-missing-checkpoint"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(labelled(t, dup_label)), "--size", "16", "16",
                       "--supervised-only"], "01.json", "duplicate label", "--skip-bad-labels",
        id="cli-semisup-train-duplicate-label"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(labelled(t, missing_label)), "--size", "16", "16",
                       "--supervised-only"], "02.json", "missing label", id="cli-semisup-train-missing-label"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(labelled(t, outside)), "--size", "16", "16",
                       "--supervised-only"], "01.json", "lies outside", id="cli-semisup-train-landmark-outside"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(pngs(t)), "--size", "16", "16"], "no LabelMe file",
        "00.json", id="cli-semisup-train-no-labels"),
    cli(lambda t, mp: ["semisup", "train", *sum(zip(["--labelled", "--labels"], map(str, volumes_with_markups(
        t, drop=1))), ()), "--size", "8", "8", "8"], "1 labelled image(s) have no landmark file", "01.mrk.json",
        "3D Slicer markups", id="cli-semisup-train-3d-no-markups"),
    cli(lambda t, mp: ["semisup", "train", *sum(zip(["--labelled", "--labels"], map(str, volumes_with_nan_csv(t))), ()),
                       "--size", "8", "8", "8"], "l.csv (image 01)", "have NaN", "--skip-bad-labels",
        id="cli-semisup-train-3d-nan-csv"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(volumes_with_markups(t)[0]), "--labels", str(t / "marks"),
                       "--size", "8", "8"], "size must be (D, H, W) for the 3D labelled images", "--size D H W",
        id="cli-semisup-train-3d-size-2-numbers"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(volumes_with_markups(t)[0]), "--size", "8", "8", "8", "8"],
        "size must be (H, W) for 2D or (D, H, W) for 3D", id="cli-semisup-train-size-4-numbers"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(volumes_with_labelme(t)), "--size", "8", "8", "8"],
        "no landmark file", "00.json", "LabelMe .json files hold 2D points", id="cli-semisup-train-3d-labelme"),
    cli(lambda t, mp: ["semisup", "train", "--labelled", str(mixed_dims(t)), "--size", "16", "16"],
        "cannot mix 2D and 3D", id="cli-semisup-train-mixed-2d-3d"),
    cli(lambda t, mp: ["semisup", "predict", str(t / "none.pt"), str(truncated_png(t))], "none.pt",
        "does not exist", id="cli-semisup-predict-missing-checkpoint"),
]


@pytest.mark.parametrize("kind,build,exc,words", CASES)
def test_bad_input(kind, build, exc, words, tmp_path, capsys, monkeypatch):
    if kind == "api":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=UserWarning)
            with pytest.raises(exc) as info:
                build(tmp_path, monkeypatch)
        msg = str(info.value)
    else:
        argv = build(tmp_path, monkeypatch) + ["--out", str(tmp_path / "out")]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        lines = [l for l in err.splitlines() if l.strip()]
        cmd = argv[0]
        assert len(lines) == 1 and lines[0].startswith(f"shape_nb {cmd}: error: "), err
        msg = lines[0]
    missing = [w for w in words if w not in msg]
    assert not missing, f"message lacks {missing}: {msg}"


def test_table_size():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


def _run(*args):
    return subprocess.run([sys.executable, "-c", "import sys; from shape_nb.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["truncated-png", "duplicate-label"])
def test_bad_input_subprocess(case, tmp_path):
    "The installed entry point: exit 2, one line on stderr, no traceback."
    if case == "truncated-png":
        r = _run("discover", str(truncated_png(tmp_path)), "--out", str(tmp_path / "o"))
        words = ["shape_nb discover: error:", "01.png", "truncated"]
    else:
        r = _run("semisup", "train", "--labelled", str(labelled(tmp_path, dup_label)), "--size", "16", "16",
                 "--out", str(tmp_path / "o"))
        words = ["shape_nb semisup: error:", "01.json", "duplicate label"]
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert all(w in r.stderr for w in words), r.stderr
