"""The NiiVue viewer and 3D annotator without a browser: LPS/RAS geometry of what NiiVue receives (a marked voxel
lands where it belongs, also for oblique NRRD files), NiiVue's location and mouse-up messages through ipyniivue's
own dispatcher, the annotator's files, and that `import shape_nb.niivue` stays light."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from shape_nb.core import InputError, index_to_mm, index_to_norm
from shape_nb.io import read_image, read_landmarks_csv, write_image, write_landmarks_csv

pytest.importorskip("ipyniivue", reason="needs ipyniivue (pip install 'shape_nb[niivue]')")
nib = pytest.importorskip("nibabel")

from shape_nb.niivue import VolumeAnnotator, VolumeViewer3D, lps_to_ras, ras_affine, to_nifti  # noqa: E402

SPACING, ORIGIN = (0.8, 1.2, 2.0), (-30.0, 12.5, 7.0)
c, s = np.cos(0.4), np.sin(0.4)
OBLIQUE = np.array([[c, 0.0, s], [0.0, -1.0, 0.0], [-s, 0.0, c]])      # rotated about y, y flipped (det -1)
MARK = np.array([3.0, 7.0, 5.0])                                         # (x, y, z) of the marked voxel


def marked(shape=(9, 11, 6)):
    v = np.zeros(shape, np.float32)
    v[int(MARK[2]), int(MARK[1]), int(MARK[0])] = 1.0
    return v


def lps(idx, spacing=SPACING, origin=ORIGIN, direction=OBLIQUE):
    return index_to_mm(np.asarray(idx, dtype=float), spacing, origin, direction)


def send(viewer, event, data):
    "A message of NiiVue's frontend, through ipyniivue's dispatcher."
    viewer.nv._handle_custom_msg({"event": event, "data": data}, [])


def click(viewer, index):
    "The location and mouse-up messages NiiVue sends for a click at voxel `index` (x, y, z) of the volume."
    im = viewer.image_
    ras = lps_to_ras(index_to_mm(np.asarray(index, dtype=float), im.spacing, im.origin, im.direction))
    A = viewer.nifti_.affine
    frac = (np.linalg.solve(A[:3, :3], ras - A[:3, 3]) + 0.5) / np.array(viewer.nifti_.shape[:3])
    send(viewer, "location_change", {"mm": [*ras, 1.0], "frac": frac.tolist(), "vox": [0, 0, 0], "xy": [0, 0],
                                     "values": [{"name": "volume.nii", "value": 1.0}], "ax_cor_sag": 0, "string": ""})
    send(viewer, "mouse_up", {"is_dragging": False, "mouse_pos": [0, 0],
                              "frac_pos": {str(i): float(f) for i, f in enumerate(frac)}})


def test_import_is_light():
    probe = ("import sys, shape_nb.niivue; "
             "print(sorted(m for m in ('ipyniivue', 'ipywidgets', 'nibabel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ras_affine_is_lps_flipped():
    A = ras_affine(SPACING, ORIGIN, OBLIQUE)
    idx = np.random.default_rng(0).uniform(-2, 12, (20, 3))
    assert np.allclose(idx @ A[:3, :3].T + A[:3, 3], lps_to_ras(lps(idx)))
    assert np.allclose(ras_affine(1.0)[:3, :3], np.diag([-1.0, -1.0, 1.0]))


@pytest.mark.parametrize("direction", [None, OBLIQUE])
def test_marked_voxel_lands_where_expected(direction):
    "The NIfTI NiiVue receives puts the marked voxel at its RAS position; shape_nb.io reads it back in LPS."
    img, M = to_nifti(marked(), SPACING, ORIGIN, direction)
    f = np.argwhere(np.asarray(img.dataobj) == 1.0)
    assert len(f) == 1
    assert np.allclose((M @ [*f[0], 1])[:3], MARK)                        # file voxel -> volume voxel
    want = lps(MARK, direction=direction)
    assert np.allclose(nib.affines.apply_affine(img.affine, f[0]), lps_to_ras(want))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")                 # NiiVue keeps the file's voxel order


def test_nifti_roundtrip_through_shape_nb_io(tmp_path):
    img, _ = to_nifti(marked(), SPACING, ORIGIN, OBLIQUE)
    nib.save(img, tmp_path / "sent.nii.gz")
    back = read_image(tmp_path / "sent.nii.gz")                             # shape_nb.io's own NIfTI reader (LPS)
    zyx = np.argwhere(back.array == 1.0)[0]
    assert np.allclose(index_to_mm(zyx[::-1].astype(float), back.spacing, back.origin, back.direction), lps(MARK),
                       atol=1e-4)


def test_viewer_from_an_oblique_nrrd_file(tmp_path):
    path = write_image(tmp_path / "oblique.nrrd", marked(), SPACING, ORIGIN, direction=OBLIQUE)
    v = VolumeViewer3D(path)
    assert np.allclose(v.image_.direction, OBLIQUE) and np.allclose(v.image_.spacing, SPACING)
    sent = nib.Nifti1Image.from_bytes(v.nv.volumes[0].data)
    f = np.argwhere(np.asarray(sent.dataobj) == 1.0)[0]
    assert np.allclose(nib.affines.apply_affine(sent.affine, f), lps_to_ras(lps(MARK)), atol=1e-4)
    lm = index_to_norm(MARK, v.image_.shape)
    node = json.loads(v.add_landmarks(lm[None], labels=["mark"]).data)["nodes"]
    assert np.allclose([node["X"][0], node["Y"][0], node["Z"][0]], lps_to_ras(lps(MARK)))
    got = []
    v.on_click(got.append)
    click(v, MARK)                                                          # NiiVue reports the mark's RAS mm
    assert len(got) == 1 and np.allclose(got[0], MARK)
    assert np.allclose(v.location_["mm"], lps(MARK))


def test_scroll_then_release_is_not_a_click():
    v = VolumeViewer3D(marked())
    got = []
    v.on_click(got.append)
    send(v, "location_change", {"mm": [-2.0, -3.0, 4.0, 1.0], "frac": [0.5, 0.5, 0.5], "vox": [0, 0, 0]})   # scroll
    send(v, "mouse_up", {"is_dragging": False, "mouse_pos": [1, 1], "frac_pos": {"0": -1, "1": -1, "2": -1}})
    send(v, "mouse_up", {"is_dragging": False, "mouse_pos": [1, 1], "frac_pos": {"0": 0.5, "1": 0.5, "2": 0.5}})
    assert got == [] and np.allclose(v.location_["index"], [2.0, 3.0, 4.0])


def test_heatmap_overlay_covers_the_volume():
    v = VolumeViewer3D(marked((8, 12, 16)), spacing=(1.0, 1.0, 3.0))
    hm = v.add_heatmap(torch.rand(2, 4, 6, 8), threshold=0.25, opacity=0.5)
    o = nib.Nifti1Image.from_bytes(hm.data)
    corners = lambda im: nib.affines.apply_affine(im.affine, [[-0.5] * 3, np.array(im.shape) - 0.5])
    assert np.allclose(corners(o), corners(v.nifti_))
    assert (hm.cal_min, hm.opacity, hm.colormap_type.name) == (0.25, 0.5, "ZERO_TO_MAX_TRANSPARENT_BELOW_MIN")
    v.threshold.value = 0.5
    assert hm.cal_min == 0.5


def test_annotator_clicks_files_and_safety(tmp_path):
    vol = marked()
    ann = VolumeAnnotator(vol, ["a", "b"], tmp_path / "labels", image_name="scan.nrrd", spacing=SPACING,
                          origin=ORIGIN, direction=OBLIQUE)
    click(ann.viewer, MARK)                                                 # builds the widget, places "a"
    click(ann.viewer, [1.0, 2.0, 3.0])                                      # places "b"
    assert np.allclose(ann.positions, [MARK, [1.0, 2.0, 3.0]]) and ann.selected is None
    assert np.allclose(ann.positions_mm[0], lps(MARK))
    names, pts = read_landmarks_csv(tmp_path / "labels" / "scan.csv")
    assert names == ["scan.nrrd"] and np.allclose(pts[0], ann.positions)
    click(ann.viewer, MARK + 0.5)                                           # near "a": selects it
    click(ann.viewer, MARK + [0.0, 4.0, 0.0])                               # and moves it
    assert np.allclose(ann.positions[0], MARK + [0.0, 4.0, 0.0])
    assert ann.undo() and np.allclose(read_landmarks_csv(tmp_path / "labels" / "scan.csv")[1][0, 0], MARK)
    # a second annotator loads the file; one that does not load it, or another volume's, is refused
    again = VolumeAnnotator(vol, ["a", "b"], tmp_path / "labels", image_name="scan.nrrd")
    assert np.allclose(again.positions, ann.positions)
    with pytest.raises(InputError, match="was not loaded"):
        VolumeAnnotator(vol, ["a", "b"], tmp_path / "labels", image_name="scan.nrrd", load=False)
    with pytest.raises(InputError, match="holds other landmarks"):
        VolumeAnnotator(vol, ["a", "b", "c"], tmp_path / "labels", image_name="scan.nrrd")
    # a file that appeared after the start is never replaced
    other = VolumeAnnotator(vol, ["a", "b"], tmp_path / "other", image_name="scan.nrrd", autosave=False)
    other.place(1, 1, 1)
    write_landmarks_csv(tmp_path / "other" / "scan.csv", np.zeros((1, 2, 3)), ["scan.nrrd"])
    with pytest.raises(InputError, match="not loaded by this annotator"):
        other.save()
    assert np.allclose(read_landmarks_csv(tmp_path / "other" / "scan.csv")[1], 0.0)
    assert VolumeAnnotator(vol, ["a", "b"], tmp_path / "x", overwrite=True, autosave=False).save() == []


def test_show_a_stand_in_detector():
    vol = marked((12, 12, 12))

    class Detector:
        image_shape_ = (1, 6, 6, 6)

        def predict(self, x):
            assert tuple(x.shape) == (1, 1, 6, 6, 6)
            return torch.tensor([[[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]])

        def predict_heatmaps(self, x):
            return torch.rand(1, 2, 6, 6, 6)

    v = VolumeViewer3D(vol, spacing=(1.0, 2.0, 1.0))
    P, err = v.show(Detector(), truth=[[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]], faces=[[0, 1, 0]])
    assert np.allclose(err, [0.0, 0.5 * 12 / 2 * 2.0])                      # 0.5 normalised in y = 3 voxels of 2 mm
    assert {"truth", "predicted heatmaps", "predicted mesh", "predicted"} <= set(v.layers)
    with pytest.raises(InputError, match="expected shape"):
        v.show(Detector(), truth=np.zeros((3, 3)))


def test_missing_ipyniivue_says_what_to_install(monkeypatch):
    import shape_nb.niivue as nv
    nv._ipyniivue_module.cache_clear()
    monkeypatch.setitem(sys.modules, "ipyniivue", None)
    try:
        with pytest.raises(ImportError, match=r"pip install 'shape_nb\[niivue\]'"):
            VolumeViewer3D(marked())
    finally:
        nv._ipyniivue_module.cache_clear()
