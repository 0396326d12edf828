"""3D Slicer markups (.mrk.json, .fcsv): hand-made files whose values are known, mapped onto an oblique image.

The image is turned 30 degrees about z (LPS), spacing (0.5, 0.75, 2) mm, origin (100, -50, 20). Voxel (x, y, z) =
(4, 6, 3) is (2, 4.5, 6) mm along the voxel axes, turned (2 cos 30 - 4.5 sin 30, 2 sin 30 + 4.5 cos 30, 6) =
(-0.5179491924311228, 4.897114317029974, 6) plus the origin: LPS (99.48205080756888, -45.10288568297003, 26),
RAS (-99.48205080756888, 45.10288568297003, 26). Voxel (13, 11, 9): LPS (101.50416512459885, -39.60529041877838, 38).
"""
import json

import numpy as np
import pytest

from shape_nb.core import InputError, MissingFileError
from shape_nb.io import Image, read_image, write_image
from shape_nb.markups import (Markups, convert_points, index_to_markups, markups_to_index, markups_to_norm,
                              norm_to_markups, read_markups, write_markups)

TH = np.deg2rad(30)
R = np.array([[np.cos(TH), -np.sin(TH), 0], [np.sin(TH), np.cos(TH), 0], [0, 0, 1]])
SP, ORG, SHAPE = (0.5, 0.75, 2.0), (100.0, -50.0, 20.0), (10, 12, 14)
INDEX = np.array([[4.0, 6.0, 3.0], [0.0, 0.0, 0.0], [13.0, 11.0, 9.0]])
LPS = np.array([[99.48205080756888, -45.10288568297003, 26.0], [100.0, -50.0, 20.0],
                [101.50416512459885, -39.60529041877838, 38.0]])
RAS = LPS * [-1, -1, 1]
NAMES = ["nasion", "origin", "far corner"]


def mrk_json(points, system, extra=""):
    cps = ", ".join('{"id": "%d", "label": "%s", "position": [%r, %r, %r]%s}' % (k + 1, n, *map(float, p), extra)
                    for k, (n, p) in enumerate(zip(NAMES, points)))
    return '{"markups": [{"type": "Fiducial", "coordinateSystem": "%s", "controlPoints": [%s]}]}' % (system, cps)


def fcsv(points, system_line):
    rows = "".join(f"vtkMRMLMarkupsFiducialNode_{k},{','.join(map(repr, map(float, p)))},0,0,0,1,1,1,0,{n},,\n"
                   for k, (n, p) in enumerate(zip(NAMES, points)))
    return (f"# Markups fiducial file version = 4.11\n{system_line}"
            "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n" + rows)


HAND = {"ras.mrk.json": mrk_json(RAS, "RAS"), "lps.mrk.json": mrk_json(LPS, "LPS"),
        "lps.fcsv": fcsv(LPS, "# CoordinateSystem = LPS\n"), "ras.fcsv": fcsv(RAS, "# CoordinateSystem = RAS\n"),
        "code0.fcsv": fcsv(RAS, "# CoordinateSystem = 0\n"), "code1.fcsv": fcsv(LPS, "# CoordinateSystem = 1\n"),
        "nosystem.fcsv": fcsv(RAS, "")}                  # Slicer before 4.11 wrote RAS, often without the line


@pytest.fixture
def image():
    return Image(np.zeros(SHAPE, np.float32), SP, ORG, direction=R)


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_made_files_land_on_the_known_voxels(tmp_path, image, name):
    (tmp_path / name).write_text(HAND[name])
    m = read_markups(tmp_path / name)
    assert isinstance(m, Markups) and m.names == NAMES and m.coordinate_system == "LPS"
    np.testing.assert_allclose(m.points, LPS, rtol=0, atol=1e-12)
    np.testing.assert_allclose(markups_to_index(m.points, image), INDEX, atol=1e-9)
    np.testing.assert_allclose(markups_to_index(read_markups(tmp_path / name, "RAS").points, image, "RAS"), INDEX,
                               atol=1e-9)
    norm = (2 * INDEX + 1) / np.array(SHAPE[::-1]) - 1                           # by hand: (2 i + 1) / n - 1
    np.testing.assert_allclose(markups_to_norm(m.points, image), norm, atol=1e-9)
    np.testing.assert_allclose(norm_to_markups(norm, image), LPS, atol=1e-9)
    np.testing.assert_allclose(index_to_markups(INDEX, image, "RAS"), RAS, atol=1e-9)


def test_known_points_on_an_oblique_image_read_from_disk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    a = np.zeros(SHAPE, np.int16)
    for x, y, z in INDEX.astype(int): a[z, y, x] = 1000 + x
    im = sitk.GetImageFromArray(a)
    im.SetSpacing(SP); im.SetOrigin(ORG); im.SetDirection(R.ravel().tolist())
    sitk.WriteImage(im, str(tmp_path / "ct.nrrd"))
    (tmp_path / "lm.mrk.json").write_text(HAND["ras.mrk.json"])
    ct = read_image(tmp_path / "ct.nrrd")
    idx = np.rint(markups_to_index(read_markups(tmp_path / "lm.mrk.json").points, ct)).astype(int)
    np.testing.assert_array_equal(idx, INDEX)
    assert [ct.array[z, y, x] for x, y, z in idx] == [1004.0, 1000.0, 1013.0]
    np.testing.assert_allclose([im.TransformIndexToPhysicalPoint(tuple(map(int, i))) for i in INDEX], LPS, atol=1e-9)
    straight = read_image(write_image(tmp_path / "straight.nrrd", ct.array, SP, ORG))   # the same without direction
    assert not np.allclose(markups_to_index(LPS, straight), INDEX, atol=0.5)


@pytest.mark.parametrize("ext", [".mrk.json", ".fcsv"])
@pytest.mark.parametrize("system", ["LPS", "RAS"])
def test_read_write_read_is_exact(tmp_path, ext, system):
    rng = np.random.default_rng(3)
    P = rng.normal(size=(7, 3)) * 10.0 ** rng.integers(-3, 4, size=(7, 1))
    names = ["a", "b, with comma", 'quote "q"', "ünïcode", "", "F-6", "#7"]
    m = read_markups(write_markups(tmp_path / f"x{ext}", P, names, system), None)
    assert m.coordinate_system == system and m.names == names
    np.testing.assert_array_equal(m.points, P)
    m2 = read_markups(write_markups(tmp_path / f"y{ext}", m.points, m.names, m.coordinate_system), None)
    np.testing.assert_array_equal(m2.points, m.points); assert m2.names == m.names
    other = "RAS" if system == "LPS" else "LPS"
    np.testing.assert_array_equal(read_markups(tmp_path / f"x{ext}", other).points, P * [-1, -1, 1])


def test_written_json_is_slicer_shaped(tmp_path):
    d = json.loads(write_markups(tmp_path / "a.mrk.json", LPS, NAMES).read_text())
    m = d["markups"][0]
    assert d["@schema"].endswith(".json#") and m["type"] == "Fiducial" and m["coordinateSystem"] == "LPS"
    assert m["coordinateUnits"] == "mm" and [c["label"] for c in m["controlPoints"]] == NAMES
    assert all(c["positionStatus"] == "defined" for c in m["controlPoints"])
    np.testing.assert_array_equal(convert_points(LPS, "LPS", "RAS"), RAS)


CP = '{"markups": [{"coordinateSystem": "LPS", "controlPoints": [{"label": "a", "position": %s%s}]}]}'
BAD_JSON = [
    ("no-markups", '{"shapes": []}', "no 'markups' list"),
    ("markup-not-object", '{"markups": [5]}', "markups[0] is a int"),
    ("points-not-list", '{"markups": [{"controlPoints": 3}]}', "controlPoints is not a list"),
    ("point-not-object", '{"markups": [{"controlPoints": ["x"]}]}', "controlPoints[0] is a str"),
    ("two-coordinates", CP % ("[1, 2]", ""), "position is [1, 2], not three finite numbers"),
    ("no-position", '{"markups": [{"controlPoints": [{"label": "a"}]}]}', "position is None"),
    ("nan", CP % ("[1, NaN, 2]", ""), "not three finite numbers"),
    ("infinity", CP % ("[1, -Infinity, 2]", ""), "not three finite numbers"),
    ("1e400", CP % ("[1, 1e400, 2]", ""), "not three finite numbers"),
    ("400-digit-int", CP % ("[1, %s, 2]" % ("9" * 400), ""), "not three finite numbers"),
    ("5000-digits", CP % ("[1, %s, 2]" % ("9" * 5000), ""), "not valid JSON"),
    ("string-coordinate", CP % ('[1, "x", 2]', ""), "not three finite numbers"),
    ("bool-coordinate", CP % ("[1, true, 2]", ""), "not three finite numbers"),
    ("label-number", CP % ("[1, 2, 3]", ', "label": 5'), "label is a int"),
    ("undefined", CP % ("[1, 2, 3]", ', "positionStatus": "undefined"'), "positionStatus 'undefined'"),
    ("ijk", CP.replace("LPS", "IJK") % ("[1, 2, 3]", ""), "'IJK' is not LPS or RAS"),
    ("micrometres", '{"markups": [{"coordinateUnits": "um", "controlPoints": []}]}', "only mm"),
    ("empty", '{"markups": []}', "holds no control points"),
    ("deep", "[" * 100000, "not valid JSON"),
    ("truncated", (CP % ("[1, 2, 3]", ""))[:-5], "not valid JSON"),
]
BAD_FCSV = [
    ("short-row", "# CoordinateSystem = LPS\n1,2,3\n", "line 2 has 3 fields"),
    ("nan", "# CoordinateSystem = LPS\n1,2,nan,4\n", "not three finite numbers"),
    ("huge", "# CoordinateSystem = LPS\n1,2,1e400,4\n", "not three finite numbers"),
    ("word", "# CoordinateSystem = LPS\n1,2,x,4\n", "not three finite numbers"),
    ("columns", "# columns = id,a,b,c\n1,2,3,4\n", "lacks x, y, z"),
    ("ijk", "# CoordinateSystem = 2\n1,2,3,4\n", "'2' is not LPS or RAS"),
    ("empty", "# CoordinateSystem = LPS\n", "holds no control points"),
]


@pytest.mark.parametrize("text,words", [pytest.param(t, w, id=i) for i, t, w in BAD_JSON])
def test_broken_mrk_json(tmp_path, text, words):
    (tmp_path / "b.mrk.json").write_text(text)
    with pytest.raises(InputError) as e: read_markups(tmp_path / "b.mrk.json")
    assert words in str(e.value) and "b.mrk.json" in str(e.value) and "\n" not in str(e.value).strip()


@pytest.mark.parametrize("text,words", [pytest.param(t, w, id=i) for i, t, w in BAD_FCSV])
def test_broken_fcsv(tmp_path, text, words):
    (tmp_path / "b.fcsv").write_text(text)
    with pytest.raises(InputError) as e: read_markups(tmp_path / "b.fcsv")
    assert words in str(e.value) and "b.fcsv" in str(e.value) and "\n" not in str(e.value).strip()


def test_other_mistakes(tmp_path, image):
    (tmp_path / "bin.fcsv").write_bytes(b"\xff\xfe1,2,3")
    with pytest.raises(InputError, match="not a .fcsv text file"): read_markups(tmp_path / "bin.fcsv")
    with pytest.raises(MissingFileError): read_markups(tmp_path / "none.mrk.json")
    with pytest.raises(InputError, match="unsupported markups extension"): read_markups(tmp_path / "a.txt")
    with pytest.raises(InputError, match="finite"): write_markups(tmp_path / "w.fcsv", [[0, 0, np.nan]])
    with pytest.raises(InputError, match="1 points but 2 names"): write_markups(tmp_path / "w.fcsv", [[0, 0, 0]], "ab")
    with pytest.raises(InputError, match="line break"): write_markups(tmp_path / "w.fcsv", [[0, 0, 0]], ["a\nb"])
    with pytest.raises(InputError, match="got a 2D Image"):
        markups_to_index(LPS, Image(np.zeros((4, 4), np.float32), (1, 1), (0, 0)))
    both = [json.loads(HAND[f])["markups"][0] for f in ("lps.mrk.json", "ras.mrk.json")]
    (tmp_path / "mixed.mrk.json").write_text(json.dumps({"markups": both}))
    np.testing.assert_allclose(read_markups(tmp_path / "mixed.mrk.json").points, np.vstack([LPS, LPS]), atol=1e-12)
    with pytest.raises(InputError, match="both LPS and RAS"): read_markups(tmp_path / "mixed.mrk.json", None)
