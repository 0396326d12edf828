"""DeepSSM on oriented images: the same ellipsoid volumes written as NIfTI / NRRD with an identity, a flipped
(diag(-1, -1, 1)) and an oblique direction, their correspondences in physical mm. Every expectation is computed
here in numpy from physical = origin + D @ (index * spacing), not with the code under test."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from shape_nb.core import InputError
from shape_nb.data import split_indices
from shape_nb.deepssm import (DeepSSM, _image_geometry, _to_norm, augment_pairs, ellipsoid_dataset, predict_folder,
                              read_points, train_from_folder)
from shape_nb.io import read_image, read_images, stack_images, write_image, write_particles

SMALL = dict(channels=(4, 4, 8, 8, 8), kernel_size=3, fc=(16, 8), pool_to=2, batch_size=4, epochs=1,
             progress=False, device="cpu")
N, SIZE, M = 10, 16, 24
SPACING, ORIGIN = np.array([2.0, 1.5, 1.0]), np.array([-10.0, 5.0, 3.0])
OBLIQUE = Rotation.from_rotvec(np.deg2rad(30) * np.array([1.0, 2.0, 3.0]) / np.sqrt(14)).as_matrix()
FLIPPED = np.diag([-1.0, -1.0, 1.0])
SETS = {"identity": (np.eye(3), ".nrrd"), "flipped": (FLIPPED, ".nii.gz"), "oblique": (OBLIQUE, ".nii.gz"),
        "oblique_nrrd": (OBLIQUE, ".nrrd")}


def to_mm(index, spacing, origin, D):
    "physical = origin + D @ (index * spacing), for points as rows."
    return np.asarray(origin) + (index * np.asarray(spacing)) @ np.asarray(D).T


def to_index(mm, spacing, origin, D):
    "The inverse: index = D^-1 @ (physical - origin) / spacing."
    return ((mm - np.asarray(origin)) @ np.linalg.inv(D).T) / np.asarray(spacing)


def write_set(root, arrays, index, geometry, ext):
    "Volumes with per-image (spacing, origin, direction) and their correspondences in mm from the geometry read back."
    (root / "img").mkdir(parents=True); (root / "pts").mkdir()
    stored, mm = [], []
    for i, (sp, org, D) in enumerate(geometry):
        im = read_image(write_image(root / "img" / f"s{i:02d}{ext}", arrays[i], spacing=sp, origin=org, direction=D))
        stored.append((np.array(im.spacing), np.array(im.origin), im.direction))
        mm.append(to_mm(index[i], *stored[-1]))
        write_particles(root / "pts" / f"s{i:02d}.particles", mm[-1])
    return root, np.stack(mm), stored


@pytest.fixture(scope="module")
def data():
    d = ellipsoid_dataset(N, SIZE, M, random_state=0)
    return d["images"][:, 0].numpy(), d["points"], (d["points"] + 1) * SIZE / 2 - 0.5   # arrays, normalised, index


@pytest.fixture(scope="module")
def sets(data, tmp_path_factory):
    "name -> (root, mm, stored geometry); 'mixed': oblique, every image with its own spacing and origin."
    arrays, _, index = data
    base = tmp_path_factory.mktemp("oriented")
    out = {k: write_set(base / k, arrays, index, [(SPACING, ORIGIN, D)] * N, ext) for k, (D, ext) in SETS.items()}
    mixed = [(SPACING * (1 + 0.1 * (i % 3)), ORIGIN + i * np.array([3.0, -2.0, 1.0]), OBLIQUE) for i in range(N)]
    out["mixed"] = write_set(base / "mixed", arrays, index, mixed, ".nii.gz")
    return out


@pytest.mark.parametrize("name", ["identity", "flipped", "oblique", "oblique_nrrd", "mixed"])
def test_normalised_targets_are_those_of_the_identity_case(data, sets, name):
    root, mm, stored = sets[name]
    ims = read_images(root / "img")
    names, P = read_points(root / "pts")
    geo = _image_geometry(ims)
    np.testing.assert_allclose(geo.axes, np.stack([s[2] for s in stored]), atol=1e-12)
    np.testing.assert_allclose(P, mm, atol=1e-9)
    norm = _to_norm(P, ims[0].shape, geo)
    np.testing.assert_allclose(norm, data[1], atol=1e-6)                 # the ellipsoids' own normalised points
    if name != "identity":                                              # leaving the direction out is visibly wrong
        assert np.abs(_to_norm(P, ims[0].shape, geo._replace(direction=None)) - data[1]).max() > 0.3


@pytest.mark.parametrize("name", ["flipped", "oblique"])
def test_augmentation_warps_in_the_images_frame(data, sets, name):
    arrays, _, _ = data
    _, mm, stored = sets[name]
    sp, org, D = stored[0]
    x = torch.from_numpy(arrays)[:, None]
    kw = dict(n_control=M, random_state=0, progress=False, device="cpu")

    def contrast(aug):
        "Mean |intensity - 0.5| (0.5: the boundary) at the new points (grid positions in numpy), and at the base ones."
        norm = lambda p: torch.from_numpy((2 * to_index(p, sp, org, D) + 1) / SIZE - 1).float()[:, :, None, None]
        at = lambda pts: F.grid_sample(torch.as_tensor(np.asarray(aug.images)), norm(pts), align_corners=False)
        return float((at(aug.points) - 0.5).abs().mean()), float((at(mm[aug.base_index]) - 0.5).abs().mean())

    aug = augment_pairs(x, mm, 8, spacing=sp, origin=org, direction=D, **kw)
    new, old = contrast(aug)
    assert new < 0.5 * old, (new, old)                                  # the warped images show the new shapes
    assert aug.residual.max() < 1e-6                                     # every point a control point: carried exactly
    new0, old0 = contrast(augment_pairs(x, mm, 8, spacing=sp, origin=org, **kw))   # the direction left out
    assert new0 > 0.8 * old0, (new0, old0)


@pytest.mark.parametrize("name", ["identity", "flipped", "oblique"])
def test_predictions_are_written_in_each_images_frame(data, sets, name, tmp_path):
    arrays, _, _ = data
    root, mm, stored = sets[name]
    sp, org, D = stored[0]
    est = train_from_folder(root / "img", root / "pts", tmp_path / "run", **SMALL)
    np.testing.assert_allclose(est.frame_["spacing"], sp); np.testing.assert_allclose(est.frame_["origin"], org)
    np.testing.assert_allclose(np.eye(3) if est.frame_["direction"] is None else est.frame_["direction"], D)
    tr = split_indices(N, (0.9, 0.1, 0.0), seed=0)[0]                   # fit's training part of the 10 pairs
    np.testing.assert_allclose(est.mean_shape_, mm[tr].mean(0), atol=1e-9)   # trained on the mm as given
    raw = est.predict(stack_images(read_images(root / "img"))).double().numpy()
    res = predict_folder(tmp_path / "run" / "deepssm.pt", root / "img", tmp_path / "pred")
    np.testing.assert_allclose(res["points"], raw, atol=1e-9)       # the training geometry: output as it is
    # the same arrays moved and resampled in physical space (same direction): the points follow the voxels
    moved_sp, moved_org = sp * 1.25, org + np.array([7.0, -3.0, 2.0])
    (tmp_path / "moved").mkdir()
    for i in range(N):
        write_image(tmp_path / "moved" / f"s{i:02d}.nrrd", arrays[i], spacing=moved_sp, origin=moved_org, direction=D)
    moved = predict_folder(tmp_path / "run" / "deepssm.pt", tmp_path / "moved", tmp_path / "pred_moved")
    want = to_mm(to_index(raw, sp, org, D), moved_sp, moved_org, D)
    np.testing.assert_allclose(moved["points"], want, atol=1e-6)
    names, back = read_points(tmp_path / "pred_moved" / "*.particles")
    assert names == [f"s{i:02d}" for i in range(N)]
    np.testing.assert_allclose(back, want, atol=1e-6)
    np.testing.assert_allclose(read_points(moved["csv"])[1], want, atol=1e-6)


def test_landmarks_of_mixed_geometry_go_to_the_first_images_frame_and_back(data, sets, tmp_path, monkeypatch):
    _, _, index = data
    root, mm, stored = sets["mixed"]
    seen, fit = {}, DeepSSM.fit

    def spy(self, images, landmarks, **kw):
        seen["targets"] = np.array(landmarks)
        return fit(self, images, landmarks, **kw)
    monkeypatch.setattr(DeepSSM, "fit", spy)
    est = train_from_folder(root / "img", root / "pts", tmp_path / "run", **SMALL)
    sp0, org0, D0 = stored[0]
    want = np.stack([to_mm(to_index(mm[i], *stored[i]), sp0, org0, D0) for i in range(N)])
    np.testing.assert_allclose(want, np.stack([to_mm(index[i], sp0, org0, D0) for i in range(N)]), atol=1e-9)
    np.testing.assert_allclose(seen["targets"], want, atol=1e-9)       # the same voxels, in image 0's frame
    np.testing.assert_allclose(est.frame_["origin"], org0)
    # a model that predicted the training targets exactly writes every image's own input mm
    monkeypatch.setattr(DeepSSM, "predict", lambda self, images, batch_size=16: torch.from_numpy(seen["targets"]))
    res = predict_folder(tmp_path / "run" / "deepssm.pt", root / "img", tmp_path / "pred")
    np.testing.assert_allclose(res["points"], mm, atol=1e-6)
    names, back = read_points(tmp_path / "pred" / "*.particles")
    assert names == [f"s{i:02d}" for i in range(N)]
    np.testing.assert_allclose(back, mm, atol=1e-6)


def test_mixed_orientations_are_refused(sets, tmp_path):
    flipped, identity = sets["flipped"][0], sets["identity"][0]
    imgs = sorted((identity / "img").iterdir())[:6] + sorted((flipped / "img").iterdir())[6:]
    pts = sorted((identity / "pts").iterdir())[:6] + sorted((flipped / "pts").iterdir())[6:]
    with pytest.raises(InputError, match=r"\['s06', 's07', 's08', 's09'\]: voxel axes \(direction\) "
                                         r"\[\[-1.0, 0.0, 0.0\], \[0.0, -1.0, 0.0\], \[0.0, 0.0, 1.0\]\], but the "
                                         r"first training image \(s00\)"):
        train_from_folder(imgs, pts, tmp_path / "m", **SMALL)
    assert not (tmp_path / "m").exists()
    with pytest.raises(InputError, match="resample them to one direction first"):
        train_from_folder(identity / "img", identity / "pts", tmp_path / "m", validation_images=flipped / "img",
                          validation_landmarks=flipped / "pts", **SMALL)
    assert not (tmp_path / "m").exists()
    train_from_folder(identity / "img", identity / "pts", tmp_path / "ok", **SMALL)
    with pytest.raises(InputError, match=r"but the model's training images: \[\[1.0, 0.0, 0.0\]"):
        predict_folder(tmp_path / "ok" / "deepssm.pt", flipped / "img", tmp_path / "p")
    assert not (tmp_path / "p").exists()
