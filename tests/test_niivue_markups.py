"""VolumeAnnotator's 3D Slicer markups files (.mrk.json, .fcsv) on an oblique volume: the voxels placed come back
through read_markups + markups_to_index, a new annotator reloads them bit for bit, a file in another format is
loaded and converted, and files it cannot take (two formats, unknown labels, not loaded) are refused."""
import json

import numpy as np
import pytest

from shape_nb.core import InputError, index_to_mm
from shape_nb.io import read_landmarks_csv, write_image, write_landmarks_csv
from shape_nb.markups import markups_to_index, read_markups, write_markups
from shape_nb.niivue import VolumeAnnotator, lps_to_ras

SPACING, ORIGIN = (0.8, 1.2, 2.0), (-30.0, 12.5, 7.0)
c, s = np.cos(0.4), np.sin(0.4)
OBLIQUE = np.array([[c, 0.0, s], [0.0, -1.0, 0.0], [-s, 0.0, c]])      # rotated about y, y flipped (det -1)
GEOMETRY = dict(spacing=SPACING, origin=ORIGIN, direction=OBLIQUE)
NAMES = ["tip", "base", "left", "right"]
PLACED = np.array([[3.0, 7.0, 5.0], [1.25, 2.5, 0.75], [10.123, 0.5, 4.999]])   # the first three; "right" is not


def volume():
    return np.random.default_rng(0).random((6, 9, 11)).astype(np.float32)


def annotate(folder, **kw):
    "An annotator on the oblique volume that places the first three landmarks."
    ann = VolumeAnnotator(volume(), NAMES, folder, image_name="scan.nii.gz", **GEOMETRY, **kw)
    for p in PLACED: ann.place(*p)
    return ann


def reopen(folder, **kw):
    return VolumeAnnotator(volume(), NAMES, folder, image_name="scan.nii.gz", **GEOMETRY, **kw)


def same(a, b):
    return np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("fmt", ["mrk.json", "fcsv"])
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_markups_give_back_the_voxels_placed(tmp_path, fmt, system):
    ann = annotate(tmp_path / "labels", fmt=fmt, coordinate_system=system)
    path = tmp_path / "labels" / f"scan.{fmt}"
    assert ann.labels_file == path and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    m = read_markups(path)                                                      # LPS, whatever the file holds
    assert m.names == NAMES[:3]                                                 # "right" is not placed: no point
    assert np.allclose(markups_to_index(m.points, ann.image_), ann.positions[:3], rtol=0, atol=1e-9)
    assert np.allclose(m.points, index_to_mm(ann.positions[:3], SPACING, ORIGIN, OBLIQUE), rtol=0, atol=1e-9)
    assert read_markups(path, coordinate_system=None).coordinate_system == system
    back = reopen(tmp_path / "labels")                                          # fmt=None: the file's format
    assert back.fmt == fmt and same(back.positions, ann.positions) and back.selected == 3   # nothing lost
    back.place(2, 2, 2)
    assert read_markups(path).names == NAMES


def test_a_slicer_file_from_an_oblique_nrrd(tmp_path):
    "A point list made in Slicer (RAS, on the file's geometry) loads at the voxels it marks."
    path = write_image(tmp_path / "scan.nrrd", volume(), SPACING, ORIGIN, direction=OBLIQUE)
    ras = lps_to_ras(index_to_mm(PLACED[[2, 0, 1]], SPACING, ORIGIN, OBLIQUE))
    (tmp_path / "labels").mkdir()
    write_markups(tmp_path / "labels" / "scan.fcsv", ras, ["left", "tip", "base"], coordinate_system="RAS")
    ann = VolumeAnnotator(path, NAMES, tmp_path / "labels")
    assert ann.fmt == "fcsv" and np.allclose(ann.positions[:3], PLACED, rtol=0, atol=1e-3)
    assert np.isnan(ann.positions[3]).all() and ann.selected == 3


def test_a_file_in_another_format_is_converted(tmp_path):
    labels = tmp_path / "labels"
    annotate(labels)                                                            # the default: CSV
    assert sorted(p.name for p in labels.iterdir()) == ["scan.csv"]
    ann = reopen(labels, fmt="mrk.json")                                        # loads the CSV
    assert np.allclose(ann.positions[:3], PLACED, atol=1e-3) and (labels / "scan.csv").exists()
    ann.move("right", 4, 4, 4)                                                  # the first save converts
    assert sorted(p.name for p in labels.iterdir()) == ["scan.mrk.json"]
    assert same(reopen(labels).positions, ann.positions)
    again = reopen(labels, fmt="csv")
    again.undo()                                                                # nothing to undo: no save
    assert again.save() == [] and (labels / "scan.mrk.json").exists()
    again.delete("right")
    images, pts = read_landmarks_csv(labels / "scan.csv")
    assert images == ["scan.nii.gz"] and same(pts[0], again.positions)
    assert sorted(p.name for p in labels.iterdir()) == ["scan.csv"]


def test_no_landmark_no_markups_file(tmp_path):
    ann = annotate(tmp_path / "labels", fmt="fcsv")
    while ann.undo(): pass
    assert list((tmp_path / "labels").iterdir()) == []                          # an empty point list is not written
    ann.redo()
    assert read_markups(tmp_path / "labels" / "scan.fcsv").names == ["tip"]
    loaded = reopen(tmp_path / "labels")
    loaded.delete("tip")
    assert list((tmp_path / "labels").iterdir()) == []                          # also one it loaded


def test_files_it_cannot_take_are_refused(tmp_path):
    labels = tmp_path / "labels"
    annotate(labels, fmt="mrk.json")
    write_landmarks_csv(labels / "scan.csv", np.zeros((1, 4, 3)), ["scan.nii.gz"])
    with pytest.raises(InputError, match="holds 2 files of 'scan.nii.gz'.*pass fmt="):
        reopen(labels)
    assert reopen(labels, fmt="csv").positions.tolist()[0] == [0.0, 0.0, 0.0]   # the one chosen is loaded
    (labels / "scan.csv").unlink()
    with pytest.raises(InputError, match=r"holds other landmarks than this volume's \(labels \['base', 'left'\]"):
        VolumeAnnotator(volume(), ["tip", "right"], labels, image_name="scan.nii.gz", **GEOMETRY)
    with pytest.raises(InputError, match="was not loaded"):
        reopen(labels, load=False)
    d = json.loads((labels / "scan.mrk.json").read_text())
    d["markups"][0]["controlPoints"][1]["label"] = "tip"                        # the same label twice
    (labels / "scan.mrk.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match=r"labels \['tip'\] more than once"):
        reopen(labels)
    # a markups file that appeared after the start is never replaced
    other = reopen(tmp_path / "other", fmt="fcsv", autosave=False)
    other.place(1, 1, 1)
    write_markups(tmp_path / "other" / "scan.fcsv", [[0.0, 0.0, 0.0]], ["tip"])
    before = (tmp_path / "other" / "scan.fcsv").read_text()
    with pytest.raises(InputError, match="not loaded by this annotator"):
        other.save()
    assert (tmp_path / "other" / "scan.fcsv").read_text() == before
    with pytest.raises(InputError, match="fmt must be one of"):
        reopen(tmp_path / "x", fmt="json")
    with pytest.raises(InputError, match="coordinate_system must be 'LPS' or 'RAS'"):
        reopen(tmp_path / "x", coordinate_system="IJK")


def test_start_from_a_markups_file(tmp_path):
    annotate(tmp_path / "labels", fmt="mrk.json")
    ann = VolumeAnnotator(volume(), NAMES, tmp_path / "new", image_name="scan.nii.gz", fmt="fcsv",
                          start=tmp_path / "labels" / "scan.mrk.json", **GEOMETRY)
    assert np.allclose(ann.positions[:3], PLACED, atol=1e-3) and ann.selected == 3
    assert list((tmp_path / "new").iterdir()) == []                             # saved on the first change only
    with pytest.raises(InputError, match="holds no landmarks of 'scan.nii.gz'"):
        VolumeAnnotator(volume(), ["tip"], start=tmp_path / "labels" / "scan.mrk.json", image_name="scan.nii.gz")
