"""Files written to do harm, and faults of the machine, one row per case.

Readers: every hostile file is refused with `shape_nb.core.InputError` (or `MissingFileError`) and a one-line message
naming the file and the reason, before anything is allocated, decompressed past its announced size, unpickled or
opened outside the data folder (an audit hook refuses, and records, any file opened outside it or under /dev, and
any pipe). Checkpoints: `weights_only` loading, `load_weights` naming the first tensor that does not fit.
Training: an out-of-memory error names the batch size and the flags that lower the memory and leaves the last
finished epoch's state on disk; a full disk leaves the previous checkpoint intact and says so.
"""
import base64
import errno
import gzip
import json
import math
import os
import resource
import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import shape_nb.io as sio
import shape_nb.train as strain
from shape_nb.core import InputError, MissingFileError
from shape_nb.io import (read_image, read_labelme, read_landmark_folder, read_landmarks_csv, read_pts, read_tps,
                         write_image, write_labelme)
from shape_nb.train import (DiskFullError, TrainConfig, TrainingOOMError, fit, load_checkpoint, load_train_state,
                            load_weights, save_checkpoint)

# -- what the readers open --------------------------------------------------------------------------------
_WATCH = {"root": None, "opened": [], "bad": []}


class Breach(BaseException):
    "Raised by the audit hook instead of opening a file outside the data folder."


def _audit(event, args):
    if _WATCH["root"] is None or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    _WATCH["opened"].append(path)
    under = path.startswith(str(_WATCH["root"]) + os.sep)
    pipe = under and os.path.exists(path) and stat.S_ISFIFO(os.stat(path).st_mode)
    if under and "outside" in Path(path).parts or pipe or path.startswith("/dev/"):
        _WATCH["bad"].append(path)
        raise Breach(path)


sys.addaudithook(_audit)


def run(fn, data: Path):
    "Call fn() while watching the files it opens under the test's folder; returns (value or exception, opened)."
    _WATCH.update(root=data.parent, opened=[], bad=[])
    try:
        try: out = fn()
        except Exception as e: out = e
    finally:
        _WATCH["root"] = None
    assert not _WATCH["bad"], f"opened outside the data folder: {_WATCH['bad']}"
    return out, [p for p in _WATCH["opened"] if p.startswith(str(data.parent))]


@pytest.fixture
def d(tmp_path):
    "The data folder (tmp/data) next to a folder of files a reader must never open (tmp/outside)."
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.raw").write_bytes(bytes(range(256)) * 16)
    for i in range(3): (tmp_path / "outside" / f"secret{i}.raw").write_bytes(bytes(64))
    data = tmp_path / "data"; data.mkdir()
    return data


def refused(out, exc, *words):
    assert isinstance(out, exc), f"expected {exc.__name__}, got {type(out).__name__}: {out}"
    msg = str(out)
    assert msg.strip() and "\n" not in msg.strip(), f"not one line: {msg!r}"
    for w in words: assert w in msg, f"{w!r} not in {msg!r}"


# -- builders of hostile files ------------------------------------------------------------------------------------
HEAD = "NRRD0004\ntype: unsigned char\ndimension: 2\nsizes: 8 8\nencoding: raw\n"


def nhdr(d, field, head=HEAD):
    (d / "in.raw").write_bytes(bytes(64))
    p = d / "evil.nhdr"; p.write_text(head + field + "\n"); return p


def mhd(d, field, head="ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\n"):
    (d / "in.raw").write_bytes(bytes(64))
    p = d / "evil.mhd"; p.write_text(head + "ElementDataFile = " + field + "\n"); return p


def fifo(d):
    os.mkfifo(d / "pipe.fifo"); return "pipe.fifo"


def symlink_out(d):
    os.symlink(d.parent / "outside" / "secret.raw", d / "link.raw"); return "link.raw"


def nifti(d, dims, gz=False, name="huge"):
    p = write_image(d / f"base.nii{'.gz' * gz}", np.zeros((4, 5, 6), np.int16))
    raw = gzip.decompress(p.read_bytes()) if gz else p.read_bytes()
    b = bytearray(raw); struct.pack_into("<4h", b, 40, len(dims), *dims)
    q = d / f"{name}.nii{'.gz' * gz}"; q.write_bytes(gzip.compress(bytes(b)) if gz else bytes(b)); return q


def nifti_patched(d, at, data):
    "A small valid NIfTI with the bytes at `at` replaced by `data`."
    b = bytearray(write_image(d / "base.nii", np.zeros((4, 5, 6), np.int16)).read_bytes())
    b[at:at + len(data)] = data
    q = d / "patched.nii"; q.write_bytes(bytes(b)); return q


def npy_header(d, shape, descr="'<f4'", data=b""):
    hd = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
    hd += " " * (-(len(hd) + 11) % 64) + "\n"
    p = d / "evil.npy"; p.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hd)) + hd.encode() + data); return p


class _Touch:
    "Unpickling this would create the marker file: it must never happen."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (Path.touch, (Path(self.path),))


def pickled_npy(d):
    a = np.empty((2, 2), dtype=object); a[0, 0] = _Touch(d / "PWNED")
    np.save(d / "objects.npy", a, allow_pickle=True); return d / "objects.npy"


def png_declaring(d, w, h):
    p = write_image(d / "small.png", np.zeros((5, 7), np.uint8))
    b = bytearray(p.read_bytes()); struct.pack_into(">II", b, 16, w, h)
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    q = d / "bomb.png"; q.write_bytes(bytes(b)); return q


def tiff_second_page(d, w, h):
    "A 2-page TIFF whose second page's header is changed to declare w x h pixels."
    from PIL import Image as PILImage
    pages = [PILImage.fromarray(np.zeros((5, 7), np.uint8)), PILImage.fromarray(np.ones((5, 7), np.uint8))]
    pages[0].save(d / "pages.tif", save_all=True, append_images=pages[1:])
    b = bytearray((d / "pages.tif").read_bytes())
    ifd = struct.unpack_from("<I", b, 4)[0]
    ifd = struct.unpack_from("<I", b, ifd + 2 + 12 * struct.unpack_from("<H", b, ifd)[0])[0]   # the second IFD
    for e in range(ifd + 2, ifd + 2 + 12 * struct.unpack_from("<H", b, ifd)[0], 12):
        tag, kind = struct.unpack_from("<HH", b, e)
        if tag in (256, 257): struct.pack_into("<H" if kind == 3 else "<I", b, e + 8, w if tag == 256 else h)
    (d / "pages.tif").write_bytes(bytes(b)); return d / "pages.tif"


def deflate_bomb(n_bytes: int, wbits: int) -> bytes:
    "A zlib (wbits 15) or gzip (31) stream of `n_bytes` zeros, about a thousandth of that in size, built in chunks."
    c, chunk, out = zlib.compressobj(9, zlib.DEFLATED, wbits), bytes(1 << 24), []
    for _ in range(n_bytes >> 24): out.append(c.compress(chunk))
    return b"".join(out) + c.flush()


def saved(d, obj):
    torch.save(obj, d / "s.pt"); return d / "s.pt"


def labelme_bomb(d):
    "LabelMe JSON whose imagePath leaves the folder and whose imageData is a PNG declaring 100000 x 100000 pixels."
    p = write_labelme(d / "a.json", np.array([[1.0, 2.0], [3.0, 4.0]]), ["a", "b"], image_path="../../etc/passwd")
    j = json.loads(p.read_text())
    j["imageData"] = base64.b64encode(png_declaring(d, 100000, 100000).read_bytes()).decode()
    p.write_text(json.dumps(j)); (d / "bomb.png").unlink(); (d / "small.png").unlink()
    return p


# -- rows: (id, build(d) -> a callable to run, expected exception type, key words of the message) ----------------
OUTSIDE = "points outside the header's folder"
ROWS = [
    # NRRD detached headers
    ("nhdr-dotdot", lambda d: lambda: read_image(nhdr(d, "data file: ../outside/secret.raw")), InputError,
     ["evil.nhdr", "'../outside/secret.raw'", OUTSIDE]),
    ("nhdr-dotdot-secretN", lambda d: lambda: read_image(nhdr(d, "data file: ../secret1.raw")), InputError,
     ["evil.nhdr", OUTSIDE]),
    ("nhdr-datafile-absolute", lambda d: lambda: read_image(nhdr(d, f"datafile: {d.parent}/outside/secret.raw")),
     InputError, ["evil.nhdr", OUTSIDE]),
    ("nhdr-dev-zero", lambda d: lambda: read_image(nhdr(d, "data file: /dev/zero")), InputError,
     ["'/dev/zero'", OUTSIDE]),
    ("nhdr-dev-urandom", lambda d: lambda: read_image(nhdr(d, "data file: /dev/urandom")), InputError,
     ["'/dev/urandom'", OUTSIDE]),
    ("nhdr-fifo", lambda d: lambda: read_image(nhdr(d, "data file: " + fifo(d))), InputError,
     ["pipe.fifo", "not a regular file"]),
    ("nhdr-symlink-out", lambda d: lambda: read_image(nhdr(d, "data file: " + symlink_out(d))), InputError,
     ["'link.raw'", OUTSIDE]),
    ("nhdr-list-outside", lambda d: lambda: read_image(nhdr(d, "data file: LIST\nin.raw\n../outside/secret0.raw")),
     InputError, ["'../outside/secret0.raw'", OUTSIDE]),
    ("nhdr-list", lambda d: lambda: read_image(nhdr(d, "data file: LIST\nin.raw\nin.raw")), InputError,
     ["evil.nhdr", "(one file per slice) is not supported"]),
    ("nhdr-format-outside", lambda d: lambda: read_image(nhdr(d, "data file: ../secret%d.raw 0 2 1")), InputError,
     ["'../secret%d.raw'", OUTSIDE]),
    ("nhdr-missing", lambda d: lambda: read_image(nhdr(d, "data file: gone.raw")), MissingFileError,
     ["evil.nhdr", "gone.raw is missing"]),
    ("nrrd-attached-datafile-out", lambda d: lambda: read_image(
        (d / "a.nrrd").write_text(HEAD + "data file: ../outside/secret.raw\n\n") and d / "a.nrrd"), InputError,
     ["a.nrrd", OUTSIDE]),
    # MetaImage detached headers
    ("mhd-dotdot", lambda d: lambda: read_image(mhd(d, "../outside/secret.raw")), InputError,
     ["evil.mhd", "ElementDataFile '../outside/secret.raw'", OUTSIDE]),
    ("mhd-absolute", lambda d: lambda: read_image(mhd(d, f"{d.parent}/outside/secret.raw")), InputError, [OUTSIDE]),
    ("mhd-dev-zero", lambda d: lambda: read_image(mhd(d, "/dev/zero")), InputError, ["'/dev/zero'", OUTSIDE]),
    ("mhd-dev-urandom", lambda d: lambda: read_image(mhd(d, "/dev/urandom")), InputError, [OUTSIDE]),
    ("mhd-fifo", lambda d: lambda: read_image(mhd(d, fifo(d))), InputError, ["pipe.fifo", "not a regular file"]),
    ("mhd-symlink-out", lambda d: lambda: read_image(mhd(d, symlink_out(d))), InputError, [OUTSIDE]),
    ("mhd-list-outside", lambda d: lambda: read_image(mhd(d, "LIST\nin.raw\n../outside/secret0.raw")), InputError,
     [OUTSIDE]),
    ("mhd-format-outside", lambda d: lambda: read_image(mhd(d, "../secret%d.raw 0 2 1")), InputError, [OUTSIDE]),
    ("mhd-list", lambda d: lambda: read_image(mhd(d, "LIST\nin.raw\nin.raw")), InputError,
     ["(one file per slice) is not supported"]),
    # what ITK's parsers would read differently from the header checks (SimpleITK's opens are not audited)
    ("nhdr-uppercase-data-file", lambda d: lambda: read_image(nhdr(d, "DATA FILE: ../outside/secret.raw")),
     InputError, ["evil.nhdr", OUTSIDE]),
    ("nhdr-carriage-return-hides-data-file", lambda d: lambda: read_image(nhdr(d, "content: x\rdata file: "
                                                                                  "../outside/secret.raw")),
     InputError, ["evil.nhdr", OUTSIDE]),
    ("mhd-lowercase-key-hides-data-file", lambda d: lambda: read_image(mhd(d, "../outside/secret.raw",
     "NDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\nelementdatafile = in.raw\n")), InputError,
     ["evil.mhd", "must be spelled 'ElementDataFile'"]),
    ("mhd-comment-eats-next-key", lambda d: lambda: read_image(mhd(d, "in.raw", "NDims = 2\nDimSize = 8 8\n"
                                                                            "ElementType = MET_UCHAR\n# note\n")),
     InputError, ["evil.mhd", "is not 'Key = Value'"]),
    ("mhd-nul-in-key", lambda d: lambda: read_image(mhd(d, "in.raw", "NDims = 2\nDimSize = 8 8\n"
                                                                 "ElementType = MET_UCHAR\nName\x00 = x\n")),
     InputError, ["evil.mhd", "control byte"]),
    ("mhd-ndims-255", lambda d: lambda: read_image(mhd(d, "in.raw", "NDims = 255\nDimSize = 8 8\n"
                                                                "ElementType = MET_UCHAR\n")),
     InputError, ["evil.mhd", "only 2D or 3D"]),
    ("mha-compressed-without-size", lambda d: lambda: read_image((d / "c.mha").write_bytes(
        b"NDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\nCompressedData = True\nElementDataFile = LOCAL\n"
        + zlib.compress(bytes(64))) and d / "c.mha"), InputError, ["c.mha", "CompressedDataSize"]),
    ("nifti-gz-next-to-its-nii", lambda d: lambda: read_image(nifti(d, (30000, 30000, 30000), name="twin") and
                                                              write_image(d / "twin.nii.gz", np.zeros((4, 5, 6)))),
     InputError, ["twin.nii.gz", "twin.nii lies next to it"]),
    ("nifti-analyze-magic", lambda d: lambda: read_image(nifti_patched(d, 344, b"ni1\x00")), InputError,
     ["patched.nii", "magic"]),
    ("nifti-infinite-sform", lambda d: lambda: read_image(nifti_patched(d, 324, struct.pack("<f", math.inf))),
     InputError, ["patched.nii", "NaN or infinite"]),
    ("dicom-is-a-fifo", lambda d: lambda: read_image(os.mkfifo(d / "x.dcm") or d / "x.dcm"), InputError,
     ["x.dcm", "not a regular file"]),
    # headers announcing enormous arrays
    ("nifti-30000^3", lambda d: lambda: read_image(nifti(d, (30000, 30000, 30000))), InputError,
     ["huge.nii", "30000 x 30000 x 30000 = 27,000,000,000,000 voxels", "MAX_VOXELS"]),
    ("nifti-gz-30000^3", lambda d: lambda: read_image(nifti(d, (30000, 30000, 30000), gz=True)), InputError,
     ["huge.nii.gz", "27,000,000,000,000 voxels"]),
    ("nifti-more-than-file", lambda d: lambda: read_image(nifti(d, (400, 400, 40))), InputError,
     ["huge.nii", "400 x 400 x 40 of int16 (12,800,000 bytes) but the file holds only 240 bytes"]),
    ("nifti-gz-more-than-deflate", lambda d: lambda: read_image(nifti(d, (4000, 4000, 100), gz=True)), InputError,
     ["huge.nii.gz", "compressed bytes, which cannot expand to that"]),
    ("nrrd-2^31+1", lambda d: lambda: read_image((d / "big.nrrd").write_text(HEAD.replace(
        "sizes: 8 8", f"sizes: {2 ** 31 + 1} 1") + "\n") and d / "big.nrrd"), InputError,
     ["big.nrrd", "2147483649 x 1 = 2,147,483,649 voxels"]),
    ("nrrd-more-than-file", lambda d: lambda: read_image(nhdr(d, "data file: in.raw", HEAD.replace("8 8", "800 800"))),
     InputError, ["evil.nhdr", "(640,000 bytes) but the file holds only 64 bytes"]),
    ("mha-huge", lambda d: lambda: read_image((d / "big.mha").write_text(
        "NDims = 3\nDimSize = 30000 30000 30000\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
        and d / "big.mha"), InputError, ["big.mha", "27,000,000,000,000 voxels"]),
    ("mha-more-than-file", lambda d: lambda: read_image(mhd(d, "in.raw", "NDims = 2\nDimSize = 100 100\n"
                                                            "ElementType = MET_UCHAR\n")),
     InputError, ["evil.mhd", "the file is truncated"]),
    ("npy-huge", lambda d: lambda: read_image(npy_header(d, (30000, 30000, 30000))), InputError,
     ["evil.npy", "27,000,000,000,000 voxels"]),
    ("npy-more-than-file", lambda d: lambda: read_image(npy_header(d, (100, 100), data=bytes(16))), InputError,
     ["evil.npy", "(40,000 bytes) but the file holds only 16 bytes"]),
    ("npy-zero-size", lambda d: lambda: read_image(npy_header(d, (0, 5))), InputError,
     ["evil.npy", "every size must be at least 1"]),
    # pickles, decompression bombs
    ("npy-object-pickle", lambda d: lambda: read_image(pickled_npy(d)), InputError,
     ["objects.npy", "holds Python objects", "never unpickled"]),
    ("png-100000^2", lambda d: lambda: read_image(png_declaring(d, 100000, 100000)), InputError,
     ["bomb.png", "10000000000 pixels", "MAX_IMAGE_PIXELS"]),
    ("png-over-max-image-pixels", lambda d: lambda: read_image(png_declaring(d, 10000, 10000)), InputError,
     ["bomb.png", "100000000 pixels", "refused before decoding"]),
    ("tiff-second-page-20000^2", lambda d: lambda: read_image(tiff_second_page(d, 20000, 20000)), InputError,
     ["pages.tif", "pages of this multi-page file have different sizes (5, 7) and (20000, 20000) (page 1)"]),
    ("image-is-a-fifo", lambda d: lambda: read_image(os.mkfifo(d / "x.npy") or d / "x.npy"), InputError,
     ["x.npy", "not a regular file"]),
    ("image-is-a-folder", lambda d: lambda: read_image((d / "x.png").mkdir() or d / "x.png"), InputError,
     ["x.png", "not a regular file"]),
    # checkpoints
    ("ckpt-pickle", lambda d: lambda: load_checkpoint(torch.save({"state_dict": {}, "x": _Touch(d / "PWNED")},
                                                                 d / "evil.pt") or d / "evil.pt"),
     InputError, ["evil.pt", "not a readable shape_nb checkpoint"]),
    ("ckpt-fifo", lambda d: lambda: load_checkpoint(os.mkfifo(d / "m.pt") or d / "m.pt"), InputError,
     ["m.pt", "not a regular file"]),
    ("ckpt-state-dict-list", lambda d: lambda: load_checkpoint(saved(d, {"state_dict": [1]})), InputError,
     ["s.pt", "its state_dict is a list"]),
    ("ckpt-state-dict-value", lambda d: lambda: load_checkpoint(saved(d, {"state_dict": {"w": "x"}})), InputError,
     ["s.pt", "its state_dict entry 'w' is a str, not a tensor"]),
    ("ckpt-extra-list", lambda d: lambda: load_checkpoint(saved(d, {"state_dict": None, "extra": [1]})), InputError,
     ["s.pt", "its extra is a list"]),
]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("build,exc,words", [pytest.param(b, e, w, id=i) for i, b, e, w in ROWS])
def test_hostile_file(d, build, exc, words):
    fn = build(d)
    out, _ = run(fn, d)
    refused(out, exc, *words)
    assert not (d / "PWNED").exists(), "a pickle was executed"


# -- LabelMe: imagePath and imageData are never used --------------------------------------------------------------
@pytest.mark.parametrize("image_path", ["../../etc/passwd", "/etc/shadow", "../outside/secret.raw"])
def test_labelme_never_opens_image_path_nor_decodes_image_data(d, monkeypatch, image_path):
    p = labelme_bomb(d)
    j = json.loads(p.read_text()); j["imagePath"] = image_path; p.write_text(json.dumps(j))
    import PIL.Image
    def no_decoding(*a, **k): raise AssertionError("imageData was decoded")
    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    monkeypatch.setattr(base64, "b64decode", no_decoding)
    out, opened = run(lambda: read_labelme(p), d)
    np.testing.assert_allclose(out[0], [[1.0, 2.0], [3.0, 4.0]]); assert out[1] == ["a", "b"]
    assert opened == [str(p)], opened
    out, opened = run(lambda: read_landmark_folder(d), d)
    assert out[0].shape == (1, 2, 2) and opened == [str(p)], opened


# -- decompression is bounded by the announced size --------------------------------------------------------------
def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("fmt", ["nrrd-gzip", "mha-zlib"])
def test_compressed_bomb_is_not_decompressed_past_the_announced_size(d, fmt):
    bomb = deflate_bomb(1 << 30, 31 if fmt == "nrrd-gzip" else 15)       # 1 GiB of zeros in about 1 MB
    if fmt == "nrrd-gzip":
        p = d / "bomb.nrrd"
        p.write_bytes(HEAD.replace("encoding: raw", "encoding: gzip").encode() + b"\n" + bomb)
    else:       # ITK's MetaIO needs CompressedDataSize (without it the stream is refused, see test_medical_io.py)
        p = d / "bomb.mha"
        p.write_bytes(b"NDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\nCompressedData = True\n"
                      b"CompressedDataSize = %d\nElementDataFile = LOCAL\n" % len(bomb) + bomb)
    before = _peak_mb()
    im = read_image(p)
    assert im.shape == (8, 8) and not im.array.any()
    assert _peak_mb() - before < 200, "the stream was decompressed past the 64 bytes the header announces"


def test_max_voxels_is_a_module_setting_and_an_environment_variable(d, monkeypatch):
    p = write_image(d / "v.npy", np.zeros((4, 5, 6), np.float32))
    monkeypatch.setattr(sio, "MAX_VOXELS", 100)
    refused(run(lambda: read_image(p), d)[0], InputError, "v.npy", "4 x 5 x 6 = 120 voxels", "MAX_VOXELS = 100")
    monkeypatch.setattr(sio, "MAX_VOXELS", 120)
    assert read_image(p).shape == (4, 5, 6)
    out = subprocess.run([sys.executable, "-c", "import shape_nb.io as m; print(m.MAX_VOXELS)"], capture_output=True,
                         text=True, env={**os.environ, "SHAPE_NB_MAX_VOXELS": "12345"}, check=True)
    assert out.stdout.split()[-1] == "12345"


# -- readers: broken files the fuzzing found (one row per fix) ----------------------------------------------------
FOUND = [
    ("nifti-multiline-library-message", lambda d: read_image(d / "c.nii"),
     lambda d: (d / "c.nii").write_bytes(write_image(d / "v.nii", np.zeros((3, 4, 5), np.float32)).read_bytes()[:300]),
     ["c.nii", "NIfTI"]),
    ("nrrd-magic-with-newline", lambda d: read_image(d / "m.nrrd"),
     lambda d: (d / "m.nrrd").write_bytes(b"NRRD\x000005\ntype: float\n"), ["m.nrrd", "magic"]),
    ("nifti-zero-size", lambda d: read_image(d / "z.nii"), lambda d: nifti(d, (0, 5, 6), name="z"),
     ["z.nii", "every size must be at least 1"]),
    ("npy-0x0", lambda d: read_image(d / "evil.npy"), lambda d: npy_header(d, (0, 0)),
     ["evil.npy", "every size must be at least 1"]),
    ("labelme-shape-not-object", lambda d: read_labelme(d / "l.json"),
     lambda d: (d / "l.json").write_text('{"shapes": [null]}'), ["l.json", "shapes[0] is a NoneType"]),
    ("labelme-point-not-list", lambda d: read_labelme(d / "l.json"),
     lambda d: (d / "l.json").write_text('{"shapes": [{"shape_type": "point", "points": {"x": 1}}]}'),
     ["l.json", "shapes[0]", "is a point without [x, y] numbers"]),
    ("labelme-point-too-short", lambda d: read_labelme(d / "l.json"),
     lambda d: (d / "l.json").write_text('{"shapes": [{"shape_type": "point", "points": [[1]]}]}'),
     ["l.json", "is a point without [x, y] numbers"]),
    ("labelme-point-null", lambda d: read_labelme(d / "l.json"),
     lambda d: (d / "l.json").write_text('{"shapes": [{"label": "a", "points": [[1, null]]}]}'),
     ["l.json", "(label 'a') is a point without [x, y] numbers"]),
    ("labelme-5000-digits", lambda d: read_labelme(d / "l.json"),
     lambda d: (d / "l.json").write_text('{"shapes": [{"points": [[' + "9" * 5000 + ', 1]]}]}'),
     ["l.json", "not valid JSON", "Exceeds the limit"]),
    ("labelme-huge-float", lambda d: read_labelme(d / "l.json"),
     lambda d: (d / "l.json").write_text('{"shapes": [{"points": [[' + "9" * 400 + ', 1]]}]}'),
     ["l.json", "is a point without [x, y] numbers"]),
    ("labelme-deep-nesting", lambda d: read_labelme(d / "l.json"), lambda d: (d / "l.json").write_text("[" * 100000),
     ["l.json", "not valid JSON", "recursion"]),
    ("labelme-binary", lambda d: read_labelme(d / "l.json"), lambda d: (d / "l.json").write_bytes(b"\xff\xfe{"),
     ["l.json", "not a LabelMe JSON text file"]),
    ("pts-binary", lambda d: read_pts(d / "a.pts"), lambda d: (d / "a.pts").write_bytes(b"\x80version: 1"),
     ["a.pts", "not a .pts text file (byte 0 is not UTF-8)"]),
    ("pts-n-points-word", lambda d: read_pts(d / "a.pts"),
     lambda d: (d / "a.pts").write_text("n_points: x\n{\n1 2\n}\n"), ["a.pts", "'n_points: x' is not a whole number"]),
    ("tps-binary", lambda d: read_tps(d / "a.tps"), lambda d: (d / "a.tps").write_bytes(b"LM=1\n\xc3(\n"),
     ["a.tps", "not a .tps text file"]),
    ("tps-lm-word", lambda d: read_tps(d / "a.tps"), lambda d: (d / "a.tps").write_text("LM=x\n"),
     ["a.tps", "LM='x' is not a count"]),
    ("tps-lm-negative", lambda d: read_tps(d / "a.tps"), lambda d: (d / "a.tps").write_text("LM=-5\n"),
     ["a.tps", "LM='-5' is not a count"]),
    ("tps-scale-word", lambda d: read_tps(d / "a.tps"), lambda d: (d / "a.tps").write_text("LM=1\n1 2\nSCALE=x\n"),
     ["a.tps", "SCALE='x' is not a number"]),
    ("tps-curves-word", lambda d: read_tps(d / "a.tps"), lambda d: (d / "a.tps").write_text("LM=1\n1 2\nCURVES=a\n"),
     ["a.tps", "CURVES='a' is not a count"]),
    ("csv-binary", lambda d: read_landmarks_csv(d / "a.csv"), lambda d: (d / "a.csv").write_bytes(b"\x80,k,x,y\n"),
     ["a.csv", "not a CSV text file"]),
    ("csv-short-row", lambda d: read_landmarks_csv(d / "a.csv"),
     lambda d: (d / "a.csv").write_text("image,k,x,y\na,0,1\n"), ["a.csv", "row 2 has 3 cells, the header 4 columns"]),
    ("csv-short-row-wide", lambda d: read_landmarks_csv(d / "a.csv"),
     lambda d: (d / "a.csv").write_text("name,x0,y0\na,1\n"), ["a.csv", "row 2 has 2 cells"]),
    ("csv-k-nan", lambda d: read_landmarks_csv(d / "a.csv"),
     lambda d: (d / "a.csv").write_text("image,k,x,y\na,nan,1,2\n"), ["a.csv", "'nan' is not a landmark number"]),
    ("csv-k-inf", lambda d: read_landmarks_csv(d / "a.csv"),
     lambda d: (d / "a.csv").write_text("image,k,x,y\na,1e400,1,2\n"), ["a.csv", "'1e400' is not a landmark number"]),
    ("csv-huge-field", lambda d: read_landmarks_csv(d / "a.csv"),
     lambda d: (d / "a.csv").write_text('image,k,x,y\n"' + "a" * 200000 + '",0,1,2\n'), ["a.csv", "not a valid CSV"]),
    ("particles-binary", lambda d: sio.read_particles(d / "a.particles"),
     lambda d: (d / "a.particles").write_bytes(b"1 2 3\n\xff\n"), ["a.particles", "not a .particles text file"]),
]


@pytest.mark.parametrize("read,make,words", [pytest.param(r, m, w, id=i) for i, r, m, w in FOUND])
def test_broken_file_found_by_fuzzing(d, read, make, words):
    make(d)
    out, _ = run(lambda: read(d), d)
    refused(out, InputError, *words)


def test_csv_header_only_reads_no_landmarks(d):
    "Found by fuzzing: a CSV cut after its header raised a reshape ValueError."
    (d / "a.csv").write_text("image,k,x_index,y_index\n")
    names, P = read_landmarks_csv(d / "a.csv")
    assert names == [] and P.shape == (0, 0, 2)


# -- load_weights --------------------------------------------------------------------------------------------------
def _saved(d):
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    p = save_checkpoint(d / "net.pt", net)
    return net, p, load_checkpoint(p)["state_dict"]


@pytest.mark.parametrize("change,words", [
    (lambda sd: {**sd, "0.weight": torch.zeros(8, 1, 3, 3)},
     ["net.pt: tensor '0.weight' has shape (8, 1, 3, 3), the network expects (4, 1, 3, 3)", "another network"]),
    (lambda sd: {k: v for k, v in sd.items() if k != "1.running_var"},
     ["net.pt: the network's tensor '1.running_var' of shape (4,) is missing (1 missing)", "another network"]),
    (lambda sd: {**sd, "2.weight": torch.zeros(1)}, ["net.pt: tensor '2.weight' is not in the network (1 unexpected)"]),
    (lambda sd: {**sd, "1.num_batches_tracked": torch.tensor(0.5)},
     ["'1.num_batches_tracked' is torch.float32, the network expects torch.int64"]),
    (lambda sd: {**sd, "0.bias": torch.zeros(4, dtype=torch.int32)}, ["'0.bias' is torch.int32"]),
    (lambda sd: {**sd, "0.bias": "zeros"}, ["'0.bias' is a str, expected a tensor of shape (4,)"]),
    (lambda sd: {**sd, "0.weight": torch.full((4, 1, 3, 3), math.inf)}, ["'0.weight' holds NaN or Inf"]),
    (lambda sd: None, ["expected tensors by name, got a NoneType"]),
], ids=["shape", "missing", "unexpected", "dtype-int-buffer", "dtype-int-param", "not-a-tensor", "inf", "none"])
def test_load_weights_names_the_first_mismatch(tmp_path, change, words):
    net, p, sd = _saved(tmp_path)
    target = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InputError) as e: load_weights(target, change(sd), p)
    refused(e.value, InputError, *words)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items()), "a refused load changed the net"


def test_load_weights_loads_a_matching_state(tmp_path):
    net, p, sd = _saved(tmp_path)
    target = load_weights(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)), sd, p)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in target.state_dict().items())
    as_double = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}   # float64 copies fit
    load_weights(target, as_double)


# -- a damaged or foreign training state -------------------------------------------------------------------------
def _state(tmp_path):
    "A training state as if a 2-epoch run had stopped after epoch 0."
    ck = tmp_path / "state.pt"
    fit(nn.Linear(3, 1), _mse, BATCHES, config=TrainConfig(**TWO, checkpoint=str(ck)))
    st = torch.load(ck, weights_only=True); st.update(finished=False, epoch=0)
    return ck, st


TWO = dict(epochs=2, lr=0.05, progress=False, device="cpu")


@pytest.mark.parametrize("change,words", [
    (lambda st: st.pop("config"), ["damaged state", "'config'"]),
    (lambda st: st.update(best_state={"weight": torch.zeros(2, 3), "bias": torch.zeros(1)}),
     ["holds another model (best weights: tensor 'weight' has shape (2, 3), the network expects (1, 3)"]),
    (lambda st: st.update(model={"weight": torch.zeros(1, 3)}),
     ["holds another model (model: the network's tensor 'bias'"]),
    (lambda st: st.update(epoch="x"), ["epoch x of 2 (or its counters) is not a valid state"]),
    (lambda st: st.update(epoch=10 ** 9), ["epoch 1000000000 of 2"]),
    (lambda st: st.update(rng=[{"torch": torch.zeros(3)}]), ["damaged state"]),
    (lambda st: st.update(history=[1, 2]), ["its history is damaged"]),
    (lambda st: st["history"].update(best_val="x"), ["its history is damaged"]),
    (lambda st: st.update(optimizer={"state": 5}), ["damaged state"]),
    (lambda st: st["optimizer"]["param_groups"][0].update(lr=1e30), ["its optimiser settings are not this run's"]),
    (lambda st: st["optimizer"]["param_groups"][0].update(betas=(1.0, 1.0)), ["optimiser settings"]),
    (lambda st: st["optimizer"]["state"][0].update(exp_avg_sq=-torch.ones(1, 3)),
     ["its optimiser state of parameter 0 does not fit the model"]),
    (lambda st: st["optimizer"]["state"][1].update(exp_avg=torch.zeros(7)), ["optimiser state of parameter 1"]),
    (lambda st: st["scheduler"].update(T_max=0), ["its learning-rate schedule is not this run's"]),
], ids=["no-config", "best-shape", "model-missing", "epoch-word", "epoch-huge", "rng", "history", "best-val",
        "optimizer", "lr", "betas", "adam-negative", "adam-shape", "schedule"])
def test_damaged_training_state_is_refused_on_resume(tmp_path, change, words):
    ck, st = _state(tmp_path)
    change(st); torch.save(st, ck)
    with pytest.raises(InputError) as e:
        fit(nn.Linear(3, 1), _mse, BATCHES, config=TrainConfig(**TWO, checkpoint=str(ck), resume=True))
    refused(e.value, InputError, f"cannot resume from {ck}", *words)


# -- out of memory during training --------------------------------------------------------------------------------
torch.manual_seed(0)
X = torch.randn(64, 3); Y = X @ torch.tensor([[1.0], [-2.0], [0.5]])
BATCHES = [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 64, 16)]


def _mse(m, b): return ((m(b[0]) - b[1]) ** 2).mean()


def _shuffled(epoch): return [BATCHES[i] for i in np.random.permutation(len(BATCHES))]


class OOMAfter:
    "A step that raises torch's out-of-memory error after `n` training steps."
    def __init__(self, n, exc=None):
        self.n, self.exc = n, exc or torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB. "
                                                                  "GPU 0 has a total capacity of 8 GiB\nmore lines")
    def __call__(self, m, b):
        if m.training:
            self.n -= 1
            if self.n < 0: raise self.exc
        return _mse(m, b)


KW = dict(epochs=6, lr=0.05, progress=False, device="cpu")


@pytest.mark.parametrize("every", [1, 2, 4])
def test_oom_leaves_the_last_finished_epoch_on_disk_and_resume_finishes_the_run(tmp_path, every):
    torch.manual_seed(0); first = nn.Linear(3, 1); ref = nn.Linear(3, 1); ref.load_state_dict(first.state_dict())
    h_ref = fit(ref, _mse, _shuffled, BATCHES[:2], TrainConfig(**KW))
    ck = tmp_path / "state.pt"
    cfg = TrainConfig(**KW, checkpoint=str(ck), checkpoint_every=every)
    m = nn.Linear(3, 1); m.load_state_dict(first.state_dict())
    with pytest.raises(TrainingOOMError) as e:
        fit(m, OOMAfter(3 * len(BATCHES) + 1), _shuffled, BATCHES[:2], cfg)       # in epoch 3, batch 1
    refused(e.value, TrainingOOMError, "out of memory on cpu at epoch 3, batch size 16", "CUDA out of memory",
            "--batch-size (now 16, e.g. 8)", "--accumulate (now 1, e.g. 2)", "--amp",
            f"the training state of epoch 2 is in {ck}: rerun with --resume")
    assert isinstance(e.value, torch.cuda.OutOfMemoryError) and isinstance(e.value, RuntimeError)
    assert not isinstance(e.value, InputError)
    assert load_train_state(ck)["epoch"] == 2
    resumed = nn.Linear(3, 1)
    h = fit(resumed, _mse, _shuffled, BATCHES[:2], TrainConfig(**KW, checkpoint=str(ck), checkpoint_every=every,
                                                                resume=True))
    assert h.resumed_from == 3 and h.column("train_loss") == h_ref.column("train_loss")
    assert torch.equal(resumed.weight, ref.weight) and torch.equal(resumed.bias, ref.bias)


@pytest.mark.parametrize("exc", [torch.cuda.OutOfMemoryError("CUDA out of memory"), MemoryError(),
                                 RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
                                 RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9GB")],
                         ids=["cuda", "memoryerror", "mps", "cpu-allocator"])
def test_oom_kinds(tmp_path, exc):
    with pytest.raises(TrainingOOMError) as e:
        fit(nn.Linear(3, 1), OOMAfter(0, exc), BATCHES, config=TrainConfig(**KW, checkpoint=str(tmp_path / "s.pt"),
                                                                           amp=True))
    refused(e.value, TrainingOOMError, "at epoch 0, batch size 16", "--batch-size", "--accumulate",
            "no epoch had finished, so there is no training state to resume from")
    assert "--amp" not in str(e.value)                    # already on


def test_oom_without_checkpoint_and_other_errors_pass_through():
    with pytest.raises(TrainingOOMError, match="no checkpoint path was set"):
        fit(nn.Linear(3, 1), OOMAfter(5), BATCHES, config=TrainConfig(**KW))
    with pytest.raises(RuntimeError, match="shape mismatch") as e:
        fit(nn.Linear(3, 1), OOMAfter(0, RuntimeError("shape mismatch")), BATCHES, config=TrainConfig(**KW))
    assert type(e.value) is RuntimeError


# -- the disk fills up while a checkpoint is written ------------------------------------------------------------
def _fill_torch_save(monkeypatch):
    def full(*a, **k): raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full)


def _fill_file(monkeypatch):
    "The real writer, on a file where every write fails as on a full disk (/dev/full)."
    real = os.fdopen
    def fdopen(fd, mode="r", *a, **k):
        os.close(fd)
        return real(os.open("/dev/full", os.O_WRONLY), mode, *a, **k)
    monkeypatch.setattr(strain.os, "fdopen", fdopen)


@pytest.mark.parametrize("fill", [_fill_torch_save, pytest.param(_fill_file, marks=pytest.mark.skipif(
    not os.path.exists("/dev/full"), reason="needs /dev/full"))], ids=["torch.save-raises", "dev-full"])
def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fill):
    p = save_checkpoint(tmp_path / "m.pt", nn.Linear(3, 1), dict(epochs=1))
    before = p.read_bytes()
    fill(monkeypatch)
    with pytest.raises(DiskFullError) as e: save_checkpoint(p, nn.Linear(30, 10))
    refused(e.value, DiskFullError, "the disk is full", f"while writing {p}", f"free in {tmp_path}",
            "the previous m.pt is intact")
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError) and isinstance(e.value, InputError)
    monkeypatch.undo()
    assert p.read_bytes() == before and [f.name for f in tmp_path.iterdir()] == ["m.pt"]
    assert load_checkpoint(p)["config"] == {"epochs": 1}


def test_disk_full_during_training_keeps_the_last_state_resumable(tmp_path, monkeypatch):
    ck = tmp_path / "state.pt"
    real, calls = torch.save, []
    def save(obj, f, *a, **k):
        calls.append(obj.get("epoch"))
        if len(calls) == 3: raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(DiskFullError, match="the disk is full") as e:
        fit(nn.Linear(3, 1), _mse, BATCHES, config=TrainConfig(**KW, checkpoint=str(ck)))
    assert "the previous state.pt is intact" in str(e.value) and str(ck) in str(e.value)
    monkeypatch.undo()
    assert load_train_state(ck)["epoch"] == 1                  # epochs 0 and 1 were written, epoch 2's write failed
    h = fit(nn.Linear(3, 1), _mse, BATCHES, config=TrainConfig(**KW, checkpoint=str(ck), resume=True))
    assert h.resumed_from == 2 and len(h.records) == 6
