"""Medical images the way the field reads them: SimpleITK for NIfTI, NRRD, MetaImage and DICOM series, with direction.

Every file here is written by the libraries themselves (SimpleITK, nibabel, pynrrd), with a non-identity
(oblique) direction, and one marked voxel whose index and millimetre position are computed by hand:
`mm = origin + direction @ (index * spacing)` in LPS. SimpleITK's ImageSeriesWriter refuses to write DICOM, so a
series is written as SimpleITK's documentation does it: one ImageFileWriter call per slice, with the geometry tags.
"""
import locale
import os

import numpy as np
import pytest

import shape_nb.io as sio
from shape_nb.core import InputError, index_to_mm, mm_to_index
from shape_nb.io import (Image, list_dicom_series, read_dicom_series, read_image, read_images, resize_image,
                         stack_images, write_image)

sitk = pytest.importorskip("SimpleITK")

TH = np.deg2rad(30)
C, S = np.cos(TH), np.sin(TH)
R = np.array([[C, -S, 0.0], [S, C, 0.0], [0.0, 0.0, 1.0]])     # 30 degrees about z
SPACING, ORIGIN = (0.5, 0.75, 1.25), (10.0, -20.0, 30.5)
MARK = (4, 3, 2)                                                # voxel (x, y, z)
# by hand: index * spacing = (2, 2.25, 2.5); turned: (2 cos - 2.25 sin, 2 sin + 2.25 cos, 2.5); plus the origin
MARK_MM = np.array([10 + 2 * C - 2.25 * S, -20 + 2 * S + 2.25 * C, 33.0])


def marked(shape=(4, 5, 6), dtype=np.int16):
    a = np.zeros(shape, dtype)
    a[MARK[2], MARK[1], MARK[0]] = 1000
    return a


def itk_image(a, spacing=SPACING, origin=ORIGIN, direction=R):
    im = sitk.GetImageFromArray(a)
    im.SetSpacing(spacing); im.SetOrigin(origin); im.SetDirection(np.ravel(direction).tolist())
    return im


def dicom_series(folder, a, spacing=SPACING, origin=ORIGIN, direction=R, uid="1.2.826.0.1.3680043.2.1125.9",
                 names=None):
    "One DICOM file per slice, with the tags a scanner writes (SimpleITK's 'DICOM series from array' recipe)."
    folder.mkdir(parents=True, exist_ok=True)
    im = itk_image(a.astype(np.int16), spacing, origin, direction)
    d, w = im.GetDirection(), sitk.ImageFileWriter()
    w.KeepOriginalImageUIDOn(); w.SetImageIO("GDCMImageIO")
    saved = locale.setlocale(locale.LC_ALL)      # ITK's DICOM writer leaves the process in the C locale
    for k in range(a.shape[0]):
        sl = im[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": uid + ".1", "0020|000e": uid, "0020|0013": str(k + 1),
                "0008|0018": f"{uid}.2.{k}", "0018|0050": str(spacing[2]),
                "0020|0037": "\\".join(f"{v:.10g}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
                "0020|0032": "\\".join(f"{v:.10g}" for v in im.TransformIndexToPhysicalPoint((0, 0, k)))}
        for key, v in tags.items(): sl.SetMetaData(key, v)
        w.SetFileName(str(folder / (names[k] if names else f"IM{k:04d}.dcm"))); w.Execute(sl)
    locale.setlocale(locale.LC_ALL, saved)
    return folder


def check_marked(im, eps=1e-6):
    z, y, x = np.argwhere(im.array == 1000)[0]
    assert (x, y, z) == MARK
    np.testing.assert_allclose(im.to_mm(np.array([MARK], float))[0], MARK_MM, atol=eps)
    np.testing.assert_allclose(im.to_index(MARK_MM[None]), [MARK], atol=eps)


# -- DICOM ----------------------------------------------------------------------------------------------------
def test_dicom_series_oblique(tmp_path):
    folder = dicom_series(tmp_path / "case01", marked(), names=["z.dcm", "b.dcm", "IM9", "a.dcm"])   # out of order
    series = list_dicom_series(folder)
    assert [os.path.basename(f) for f in series["1.2.826.0.1.3680043.2.1125.9"]] == ["z.dcm", "b.dcm", "IM9", "a.dcm"]
    im = read_image(folder)
    assert im.shape == (4, 5, 6) and im.path == str(folder)
    np.testing.assert_allclose(im.spacing, SPACING, atol=1e-6)
    np.testing.assert_allclose(im.origin, ORIGIN, atol=1e-6)
    np.testing.assert_allclose(im.direction, R, atol=1e-6)
    check_marked(im, 1e-5)
    np.testing.assert_array_equal(read_dicom_series(folder).array, im.array)


def test_folder_of_series_folders_is_one_image_per_series(tmp_path):
    dicom_series(tmp_path / "scans" / "b", marked(), uid="1.2.3.1")
    dicom_series(tmp_path / "scans" / "a" / "study" / "series", marked(), uid="1.2.3.2")   # nested, as TCIA
    ims = read_images(tmp_path / "scans")                                        # natural order of the paths
    assert [os.path.relpath(im.path, tmp_path / "scans") for im in ims] == [os.path.join("a", "study", "series"), "b"]
    assert stack_images(ims).shape == (2, 1, 4, 5, 6)
    for im in ims: check_marked(im, 1e-5)
    assert len(read_images([tmp_path / "scans" / "b", tmp_path / "scans" / "a" / "study" / "series"])) == 2
    assert len(read_images(str(tmp_path / "scans" / "*"))) == 1                  # the glob matches the series folder b


def test_dicom_refusals(tmp_path, monkeypatch):
    both = tmp_path / "both"
    dicom_series(both, marked(), uid="1.2.3.1", names=[f"a{k}.dcm" for k in range(4)])
    dicom_series(both, marked(), uid="1.2.3.2", names=[f"b{k}.dcm" for k in range(4)])
    for read in (read_image, read_images):
        with pytest.raises(InputError, match="holds 2 DICOM series"): read(both)
    assert read_dicom_series(both, "1.2.3.2").shape == (4, 5, 6)
    with pytest.raises(InputError, match="no DICOM series '9.9'"): read_dicom_series(both, "9.9")
    odd = tmp_path / "odd"
    dicom_series(odd, marked(), uid="1.2.3.3")
    dicom_series(odd, np.zeros((1, 7, 6), np.int16), uid="1.2.3.3", names=["IM9999.dcm"])
    with pytest.raises(InputError, match="differ in size"): read_image(odd)
    small = dicom_series(tmp_path / "small", marked())
    monkeypatch.setattr(sio, "MAX_VOXELS", 100)
    with pytest.raises(InputError, match=r"6 x 5 x 4 = 120 voxels"): read_image(small)
    monkeypatch.undo()
    (tmp_path / "nodicom").mkdir(); (tmp_path / "nodicom" / "a.txt").write_text("x")
    with pytest.raises(InputError, match="not a regular file"): read_image(tmp_path / "nodicom")


def test_dicom_fifo_is_never_opened(tmp_path):
    folder = dicom_series(tmp_path / "s", marked())
    os.mkfifo(folder / "pipe.dcm")
    assert read_image(folder).shape == (4, 5, 6)                                  # the pipe is skipped, not opened
    with pytest.raises(InputError, match="not a regular file"): read_image(folder / "pipe.dcm")


# -- NIfTI, NRRD, MetaImage written by SimpleITK ------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
def test_oblique_files_written_by_simpleitk(tmp_path, ext):
    p = tmp_path / f"ct{ext}"
    sitk.WriteImage(itk_image(marked()), str(p), True)
    im = read_image(p)
    np.testing.assert_array_equal(im.array, marked().astype(np.float32))
    np.testing.assert_allclose(im.direction, R, atol=1e-6)                       # NIfTI keeps float32 quaternions
    np.testing.assert_allclose(im.origin, ORIGIN, atol=1e-5)
    check_marked(im, 1e-5)


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_write_image_keeps_the_direction(tmp_path, ext):
    p = write_image(tmp_path / f"w{ext}", marked(), SPACING, ORIGIN, direction=R)
    im = read_image(p)
    np.testing.assert_allclose(im.direction, R, atol=1e-6); check_marked(im, 1e-5)
    back = sitk.ReadImage(str(p))                                                 # ITK itself sees the same geometry
    np.testing.assert_allclose(back.TransformIndexToPhysicalPoint(MARK), MARK_MM, atol=1e-5)


def test_nifti_written_by_nibabel_is_converted_from_ras(tmp_path):
    nib = pytest.importorskip("nibabel")
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    aff = np.eye(4)
    aff[:3, :3] = lps_to_ras @ R @ np.diag(SPACING)
    aff[:3, 3] = lps_to_ras @ np.array(ORIGIN)
    nib.save(nib.Nifti1Image(marked().T, aff), str(tmp_path / "nb.nii.gz"))           # nibabel indexes (x, y, z)
    im = read_image(tmp_path / "nb.nii.gz")
    np.testing.assert_allclose(im.direction, R, atol=1e-6)
    check_marked(im, 1e-5)
    ras = nib.load(str(write_image(tmp_path / "ours.nii.gz", marked(), SPACING, ORIGIN, direction=R))).affine
    np.testing.assert_allclose(ras @ np.array([*MARK, 1.0]), [*(lps_to_ras @ MARK_MM), 1.0], atol=1e-5)


def test_nrrd_written_by_pynrrd_in_ras(tmp_path):
    nrrd = pytest.importorskip("nrrd")
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    hdr = {"space": "right-anterior-superior", "space directions": (lps_to_ras @ R @ np.diag(SPACING)).T,
           "space origin": lps_to_ras @ np.array(ORIGIN), "kinds": ["domain"] * 3, "encoding": "gzip"}
    nrrd.write(str(tmp_path / "ras.nrrd"), marked(), hdr, index_order="C")
    im = read_image(tmp_path / "ras.nrrd")
    np.testing.assert_allclose(im.direction, R, atol=1e-9)
    check_marked(im, 1e-9)


# -- identity geometry: every number as before ------------------------------------------------------------------
def test_identity_direction_changes_no_number(tmp_path):
    rng = np.random.default_rng(0)
    idx, sp, org = rng.uniform(0, 9, (5, 3)), np.array(SPACING), np.array(ORIGIN)
    np.testing.assert_array_equal(index_to_mm(idx, sp, org, np.eye(3)), index_to_mm(idx, sp, org))
    np.testing.assert_array_equal(mm_to_index(idx, sp, org, np.eye(3)), mm_to_index(idx, sp, org))
    for ext in (".nrrd", ".mha", ".nii.gz"):
        im = read_image(write_image(tmp_path / f"i{ext}", marked(), SPACING, ORIGIN))
        assert im.spacing == SPACING and im.origin == ORIGIN and (im.direction == np.eye(3)).all()
        np.testing.assert_array_equal(im.to_mm(idx), idx * sp + org)
    assert "direction=" not in repr(im) and "direction=" in repr(Image(im.array, SPACING, ORIGIN, direction=R))


def test_resize_keeps_the_physical_extent_of_an_oblique_image():
    im = Image(np.zeros((8, 12, 16), np.float32), (1.0, 1.0, 2.0), ORIGIN, direction=R)
    small = resize_image(im, (2, 3, 8))
    np.testing.assert_array_equal(small.direction, R)
    corner = np.array([[-0.5, -0.5, -0.5]])                                       # the outer corner of voxel 0
    np.testing.assert_allclose(small.to_mm(corner), im.to_mm(corner), atol=1e-12)
    far = np.array([[15.5, 11.5, 7.5]])                                          # the opposite corner
    np.testing.assert_allclose(small.to_mm(np.array([[7.5, 2.5, 1.5]])), im.to_mm(far), atol=1e-12)


# -- what ITK would misread is refused before ITK sees it --------------------------------------------------------
def test_nifti_gz_with_a_nii_twin_is_refused(tmp_path):
    write_image(tmp_path / "a.nii", marked() * 0)
    write_image(tmp_path / "a.nii.gz", marked())
    with pytest.raises(InputError, match="a.nii lies next to it"): read_image(tmp_path / "a.nii.gz")
    assert read_image(tmp_path / "a.nii").array.max() == 0


def test_metaimage_compressed_without_its_size_is_refused(tmp_path):
    import zlib
    data = zlib.compress(marked().tobytes())
    (tmp_path / "c.mha").write_bytes(b"NDims = 3\nDimSize = 6 5 4\nElementType = MET_SHORT\nCompressedData = True\n"
                                     b"ElementDataFile = LOCAL\n" + data)
    with pytest.raises(InputError, match=f"add 'CompressedDataSize = {len(data)}'"): read_image(tmp_path / "c.mha")
    cut = write_image(tmp_path / "cut.mha", np.random.default_rng(0).normal(size=(20, 30, 40)))
    cut.write_bytes(cut.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"): read_image(cut)


def test_damaged_compressed_nifti_is_refused_not_read_as_zeros(tmp_path):
    p = write_image(tmp_path / "v.nii.gz", np.random.default_rng(0).normal(size=(20, 30, 40)))
    b = bytearray(p.read_bytes()); b[len(b) // 2] ^= 0x55; p.write_bytes(bytes(b))
    with pytest.raises(InputError, match="v.nii.gz: its NIfTI compressed data"): read_image(p)


def test_nifti_infinite_sform_is_refused(tmp_path):
    import gzip
    import struct
    p = write_image(tmp_path / "s.nii", marked())
    b = bytearray(p.read_bytes()); struct.pack_into("<f", b, 324, float("inf")); p.write_bytes(bytes(b))
    with pytest.raises(InputError, match="NaN or infinite"): read_image(p)
    (tmp_path / "g.nii.gz").write_bytes(gzip.compress(bytes(b)))
    with pytest.raises(InputError, match="NaN or infinite"): read_image(tmp_path / "g.nii.gz")
