"""Property-based fuzzing of every file reader and of `load_checkpoint` (hypothesis).

Each test starts from a valid file written by the package's own writers (Pillow for JPEG/BMP, which the package
only reads), then truncates it, flips, inserts or deletes bytes, changes header fields (sizes, types, dimensions,
spacing 0/NaN/negative, data-file names pointing outside the folder or to devices), swaps the types of JSON values
and puts huge or negative numbers in. Every outcome must be the correct value (checked by type, shape and
finiteness of the geometry: spacing, origin, direction; equal to the original when the bytes did not change) or an
`InputError` whose message is one non-empty line naming the file. Never another exception, never a call longer than
5 s (an alarm), never a file opened outside the data folder or under /dev (an audit hook), never a large jump of the
peak memory. The audit hook sees Python's opens only: SimpleITK's C++ opens (NIfTI, NRRD, MetaImage) are kept inside
the folder by shape_nb.io's header checks, which run before ITK sees a file.

Deterministic (`derandomize=True`, no example database). SHAPE_NB_FUZZ_EXAMPLES sets the examples per test
(default 250, 18 tests: 4,500 cases); SHAPE_NB_FUZZ_RANDOM=1 draws new examples on every run (to explore further;
a failure prints the blob that reproduces it with @reproduce_failure).
"""
import copy
import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("hypothesis", reason="hypothesis is a dev requirement (pip install hypothesis)")
from hypothesis import HealthCheck, event, given, settings, strategies as st  # noqa: E402

from shape_nb.core import InputError  # noqa: E402
from shape_nb.io import (Image, TpsSpecimen, read_image, read_labelme, read_landmarks_csv, read_particles,  # noqa: E402
                         read_pts, read_tps, write_image, write_labelme, write_landmarks_csv, write_particles,
                         write_pts, write_tps)
from shape_nb.markups import Markups, read_markups, write_markups  # noqa: E402
from shape_nb.train import History, TrainConfig, fit, load_checkpoint, save_checkpoint  # noqa: E402

# broken files make the libraries warn (truncated TIFF, overflow in a cast, decompression-bomb size): expected here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning", "ignore::DeprecationWarning")
N = int(os.environ.get("SHAPE_NB_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=N, database=None, derandomize=not os.environ.get("SHAPE_NB_FUZZ_RANDOM"), deadline=None,
                print_blob=bool(os.environ.get("SHAPE_NB_FUZZ_RANDOM")), suppress_health_check=list(HealthCheck))
TIMEOUT_S = 5.0
MAX_RSS_GROWTH_MB = 1500

ROOT = Path(tempfile.mkdtemp(prefix="shape_nb_fuzz_"))
DATA, OUTSIDE = ROOT / "data", ROOT / "outside"
DATA.mkdir(); OUTSIDE.mkdir()
(OUTSIDE / "secret.raw").write_bytes(bytes(range(256)) * 64)
os.mkfifo(DATA / "fifo.raw")


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    shutil.rmtree(ROOT, ignore_errors=True)


@pytest.fixture(autouse=True)
def _bounded_memory():
    "The peak resident memory may not jump during a test (the size checks refuse what would allocate much)."
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown < MAX_RSS_GROWTH_MB, f"peak memory grew by {grown:.0f} MB"


# -- the property ---------------------------------------------------------------------------------------
_WATCH = {"on": False, "bad": []}


class Breach(BaseException):
    "Raised by the audit hook instead of opening a file outside the data folder (so the test never hangs on it)."


def _audit(event, args):
    "Refuse (and record) every file a reader opens outside the data folder, under /dev, or a pipe."
    if not _WATCH["on"] or event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    path = os.path.abspath(os.fsdecode(args[0]))
    if path.startswith(str(OUTSIDE)) or path.startswith("/dev/") or path.endswith("fifo.raw"):
        _WATCH["bad"].append(path)
        raise Breach(path)


sys.addaudithook(_audit)


class Hang(BaseException):
    "Raised by the alarm: a BaseException, so that no reader's `except Exception` can swallow it."


def _alarm(signum, frame):
    raise Hang()


def outcome(read, path, valid, expected=None):
    "Run `read(path)` once; assert the property; returns the value or None for an InputError."
    _WATCH.update(on=True, bad=[])
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT_S)
    try:
        value = read(path)
    except InputError as e:
        msg = str(e)
        assert msg.strip(), "InputError with an empty message"
        assert "\n" not in msg.strip(), f"InputError message of several lines: {msg!r}"
        assert Path(path).name in msg, f"InputError message does not name the file: {msg!r}"
        value = None
    except Hang:
        raise AssertionError(f"{read.__name__}({Path(path).name}) ran longer than {TIMEOUT_S} s") from None
    except Breach as e:
        raise AssertionError(f"{Path(path).name}: the reader opened {e} outside the data folder") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        _WATCH["on"] = False
    assert not _WATCH["bad"], f"opened outside the data folder: {_WATCH['bad']}"
    event("read" if value is not None else "refused")
    if value is not None:
        valid(value)
        if expected is not None: expected(value)
    return value


def valid_image(im):
    assert isinstance(im, Image)
    a = im.array
    assert isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim in (2, 3) and a.size > 0
    assert len(im.spacing) == a.ndim and all(np.isfinite(s) and s > 0 for s in im.spacing), im.spacing
    assert len(im.origin) == a.ndim and all(np.isfinite(o) for o in im.origin), im.origin
    D = im.direction
    assert D.shape == (a.ndim, a.ndim) and np.isfinite(D).all() and abs(np.linalg.det(D)) > 1e-6, D


def same_image(ref):
    def check(im):
        np.testing.assert_array_equal(im.array, ref.array)
        assert im.spacing == ref.spacing and im.origin == ref.origin
        np.testing.assert_array_equal(im.direction, ref.direction)
    return check


def points_array(d=(2, 3)):
    def check(P):
        assert isinstance(P, np.ndarray) and P.dtype == np.float64 and P.ndim == 2 and P.shape[1] in d, P.shape
    return check


# -- byte-level mutations -------------------------------------------------------------------------------
def byte_ops(header_len=64):
    "Lists of edit operations: truncate, flip, insert, delete (positions biased towards the header)."
    pos = st.one_of(st.integers(0, max(header_len - 1, 0)), st.integers(0, 1 << 20))
    op = st.one_of(st.tuples(st.just("truncate"), st.integers(0, 1 << 20)),
                   st.tuples(st.just("flip"), pos, st.integers(1, 255)),
                   st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
                   st.tuples(st.just("delete"), pos, st.integers(1, 64)))
    return st.lists(op, max_size=4)


def apply_ops(data: bytes, ops) -> bytes:
    b = bytearray(data)
    for op in ops:
        n = len(b)
        if op[0] == "truncate": del b[op[1] % (n + 1):]
        elif not n: continue
        elif op[0] == "flip": b[op[1] % n] ^= op[2]
        elif op[0] == "insert": b[op[1] % n:op[1] % n] = op[2]
        else: del b[op[1] % n:op[1] % n + op[2]]
    return bytes(b)


# values a header field can be changed to: sizes, types, spacing 0/NaN/negative, huge numbers, hostile paths
HOSTILE_PATHS = ["../outside/secret.raw", str(OUTSIDE / "secret.raw"), "/dev/zero", "/dev/urandom", "fifo.raw",
                 "../../../../../../etc/passwd", "sub/../../outside/secret.raw", ".", "", "LIST",
                 "slice%03d.raw 1 3 1", "../outside/slice%d.raw 0 2 1"]
SPECIAL = ["0", "-1", "-5", "1", "2", "3", "4", "nan", "NaN", "inf", "-inf", "1e309", "-0", "1.5", "0x10", "1e-320",
           "2147483648", "4294967296", "99999999999999999999", "30000 30000 30000", "100000 100000", "0 5 6",
           "4 -5 6", "4 5 6 7", "4 5", "abc", "True", "none", "float", "double", "int8", "uint16", "block",
           "gzip", "raw", "bzip2", "ascii", "hex", "big", "little", "MET_UCHAR", "MET_DOUBLE", "MET_FLOAT",
           "MET_STRING", "LOCAL", " ", "\t", "\x00", "=", ":", "%s"]
NASTY = st.one_of(st.sampled_from(SPECIAL + HOSTILE_PATHS), st.integers(-2 ** 40, 2 ** 40).map(str),
                  st.floats().map(repr),
                  st.lists(st.integers(-3, 2 ** 33), max_size=4).map(lambda v: " ".join(map(str, v))),
                  st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\n\r"), max_size=10))


def edit_lines(text: str, edits, sep: str) -> str:
    "Replace the value of some 'key<sep>value' lines (or whole lines) of a text header."
    lines = text.split("\n")
    for i, kind, value in edits:
        i %= len(lines)
        key, s, _ = lines[i].partition(sep)
        if kind == "value" and s: lines[i] = key + s + " " + value
        elif kind == "line": lines[i] = value
        elif kind == "drop": del lines[i]
        else: lines.insert(i, lines[i])
        if not lines: lines = [""]
    return "\n".join(lines)


LINE_EDITS = st.lists(st.tuples(st.integers(0, 200), st.sampled_from(["value"] * 3 + ["line", "drop", "dup"]), NASTY),
                      max_size=3)


def tokens_edit(text: str, edits) -> str:
    "Replace some whitespace/comma-separated tokens of a text file."
    parts = re.split(r"([\s,]+)", text)
    idx = [i for i, t in enumerate(parts) if t and not re.fullmatch(r"[\s,]+", t)]
    for i, value in edits:
        if idx: parts[idx[i % len(idx)]] = value
    return "".join(parts)


TOKEN_EDITS = st.lists(st.tuples(st.integers(0, 1000), NASTY), max_size=3)


# -- base files from the package's writers ----------------------------------------------------------------
rng = np.random.default_rng(0)
VOL = rng.normal(size=(3, 4, 5)).astype(np.float32)
U8 = rng.integers(0, 256, (5, 7)).astype(np.uint8)
BASES = {}


def base(name, make):
    "Write a base file once (in its own scratch folder); returns (bytes, {data file name: bytes})."
    if name not in BASES:
        d = ROOT / "bases" / name; d.mkdir(parents=True)
        p = make(d / name)
        BASES[name] = (p.read_bytes(), {f.name: f.read_bytes() for f in d.iterdir() if f.name != p.name})
    return BASES[name]


def write_case(name, data: bytes, extra: dict | None = None, folder: Path = DATA) -> Path:
    p = folder / name
    p.write_bytes(data)
    for n, b in (extra or {}).items(): (folder / n).write_bytes(b)
    return p


_REFS = {}


def check_image(name, data, extra=None):
    "The property for `read_image` on `data` (+ detached data files); equal to the base when nothing changed."
    ref_bytes, ref_extra = BASES[name]
    p = write_case(name, data, extra)
    expected = None
    if data == ref_bytes and (extra is None or extra == ref_extra):
        if name not in _REFS:
            d = ROOT / "refs" / name; d.mkdir(parents=True)
            _REFS[name] = read_image(write_case(name, ref_bytes, ref_extra, d))
        expected = same_image(_REFS[name])
    return outcome(read_image, p, valid_image, expected)


# -- images: Pillow ---------------------------------------------------------------------------------------
def _png_ihdr(data: bytes, w, h, depth, ctype, interlace) -> bytes:
    b = bytearray(data)
    struct.pack_into(">IIBBBBB", b, 16, w, h, depth, ctype, 0, 0, interlace)
    struct.pack_into(">I", b, 29, zlib.crc32(bytes(b[12:29])))
    return bytes(b)


# declared sizes: both small (decoded quickly) or both far beyond the limits (refused before decoding); a real image
# between the two takes its size's time and memory, which is not what this test is about
SMALL = st.one_of(st.sampled_from([0, 1, 5, 7]), st.integers(0, 1500))
HUGE = st.sampled_from([20000, 65535, 100000, 2 ** 31 - 1, 2 ** 32 - 1])
SIZES = st.one_of(st.tuples(SMALL, SMALL), st.tuples(HUGE, HUGE), st.tuples(st.sampled_from([0, 1]), HUGE))


@FUZZ
@given(ihdr=st.none() | st.tuples(SIZES, st.sampled_from([0, 1, 2, 4, 8, 16, 3, 255]),
                                  st.sampled_from([0, 1, 2, 3, 4, 6, 7]), st.sampled_from([0, 1, 2])),
       ops=byte_ops(64))
def test_fuzz_png(ihdr, ops):
    data, _ = base("base.png", lambda p: write_image(p, U8))
    if ihdr is not None: data = _png_ihdr(data, *ihdr[0], *ihdr[1:])
    check_image("base.png", apply_ops(data, ops))


def _tiff_entries(data: bytes):
    "Offsets of the 12-byte entries of every IFD of a little-endian TIFF (stops at loops)."
    out, seen = [], set()
    off = struct.unpack_from("<I", data, 4)[0]
    while 0 < off < len(data) - 2 and off not in seen:
        seen.add(off)
        n = struct.unpack_from("<H", data, off)[0]
        out += [off + 2 + 12 * i for i in range(n) if off + 14 + 12 * i <= len(data)]
        nxt = off + 2 + 12 * n
        if nxt + 4 > len(data): break
        out.append(-nxt)   # the next-IFD pointer, marked negative
        off = struct.unpack_from("<I", data, nxt)[0]
    return out


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 1000), st.sampled_from(["type", "count", "value"]),
                                st.one_of(SMALL, HUGE, st.integers(0, 2 ** 32 - 1))), max_size=3),
       ops=byte_ops(16))
def test_fuzz_tiff(edits, ops):
    data, _ = base("base.tif", lambda p: write_image(p, np.stack([U8, U8 // 2, U8 // 3])))
    b = bytearray(data)
    entries = _tiff_entries(data)
    for i, field, v in edits:
        e = entries[i % len(entries)]
        if e < 0: struct.pack_into("<I", b, -e, v % len(b) if v % 3 else 8)   # next IFD: anywhere, or a loop
        elif field == "type": struct.pack_into("<H", b, e + 2, v % 20)
        elif field == "count": struct.pack_into("<I", b, e + 4, v)
        else: struct.pack_into("<I", b, e + 8, v)
    check_image("base.tif", apply_ops(bytes(b), ops))


def _pil_base(p: Path):
    from PIL import Image as PILImage
    rgb = np.dstack([U8, U8[::-1], U8[:, ::-1]])
    PILImage.fromarray(rgb).save(p, **({"quality": 90} if p.suffix == ".jpg" else {}))
    return p


@FUZZ
@given(kind=st.sampled_from(["base.jpg", "base.bmp"]), dims=st.none() | SIZES.map(lambda d: (min(d[0], 65535),
       min(d[1], 65535))), ops=byte_ops(200))
def test_fuzz_jpeg_bmp(kind, dims, ops):
    data, _ = base(kind, _pil_base)
    b = bytearray(data)
    if dims is not None:
        if kind == "base.jpg":
            sof = data.find(b"\xff\xc0")
            struct.pack_into(">HH", b, sof + 5, *dims)
        else:
            struct.pack_into("<ii", b, 18, dims[0] - 2 ** 15, dims[1] - 2 ** 15)   # signed: negative means top-down
    check_image(kind, apply_ops(bytes(b), ops))


# -- images: NIfTI ---------------------------------------------------------------------------------------
NII_FIELDS = {"sizeof_hdr": (0, "<i", 1), "dim": (40, "<h", 8), "datatype": (70, "<h", 1), "bitpix": (72, "<h", 1),
              "pixdim": (76, "<f", 8), "vox_offset": (108, "<f", 1), "scl_slope": (112, "<f", 1),
              "scl_inter": (116, "<f", 1), "qform_code": (252, "<h", 1), "sform_code": (254, "<h", 1),
              "srow": (280, "<f", 12)}
INT16 = st.one_of(st.sampled_from([0, -1, 1, 2, 3, 4, 7, 8, 16, 30000, 32767, -32768, 64, 128, 512, 1024, 2304]),
                  st.integers(-32768, 32767))
FLOAT32 = st.one_of(st.sampled_from([0.0, -0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), 352.0]),
                    st.floats(width=32))
NII_EDITS = st.lists(st.tuples(st.sampled_from(sorted(NII_FIELDS)), st.integers(0, 11), INT16, FLOAT32), max_size=3)


def _nii_edit(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for name, i, iv, fv in edits:
        off, fmt, n = NII_FIELDS[name]
        v = fv if fmt == "<f" else (iv if fmt == "<h" else iv * 1000)
        struct.pack_into(fmt, b, off + struct.calcsize(fmt) * (i % n), v)
    return bytes(b)


@FUZZ     # two stems: a .nii.gz next to a .nii of its stem is refused (the NIfTI library would read the .nii)
@given(name=st.sampled_from(["base.nii", "gz.nii.gz"]), edits=NII_EDITS, ops=byte_ops(352),
       gz_ops=byte_ops(32))
def test_fuzz_nifti(name, edits, ops, gz_ops):
    data, _ = base(name, lambda p: write_image(p, VOL, (0.5, 0.75, 1.25), (1.0, -2.0, 3.0)))
    if name.endswith(".gz"):
        import gzip
        inner = apply_ops(_nii_edit(gzip.decompress(data), edits), ops)
        out = data if inner == gzip.decompress(data) else gzip.compress(inner, mtime=0)
        out = apply_ops(out, gz_ops)
    else:
        out = apply_ops(_nii_edit(data, edits), ops)
    check_image(name, out)


# -- images: NRRD, MetaImage -----------------------------------------------------------------------------
def _split_attached(data: bytes, marker: bytes):
    "(header text, payload) of an attached header ending with `marker`."
    i = data.index(marker) + len(marker)
    return data[:i].decode("latin-1"), data[i:]


@FUZZ
@given(name=st.sampled_from(["base.nrrd", "gz.nrrd"]), edits=LINE_EDITS, ops=byte_ops(8), data_ops=byte_ops(0))
def test_fuzz_nrrd(name, edits, ops, data_ops):
    data, _ = base(name, lambda p: write_image(p, VOL, (0.5, 0.75, 1.25), (1.0, -2.0, 3.0),
                                               compress=p.name.startswith("gz")))
    head, payload = _split_attached(data, b"\n\n")
    out = edit_lines(head[:-2], edits, ":").encode("latin-1") + b"\n\n" + apply_ops(payload, data_ops)
    check_image(name, apply_ops(out, ops))


@FUZZ
@given(name=st.sampled_from(["base.nhdr", "gz.nhdr"]), edits=LINE_EDITS, ops=byte_ops(8), data_ops=byte_ops(0))
def test_fuzz_nhdr(name, edits, ops, data_ops):
    data, extra = base(name, lambda p: write_image(p, VOL, (0.5, 0.75, 1.25), (1.0, -2.0, 3.0),
                                                   compress=p.name.startswith("gz")))
    out = apply_ops(edit_lines(data.decode("latin-1"), edits, ":").encode("latin-1"), ops)
    check_image(name, out, {k: apply_ops(v, data_ops) for k, v in extra.items()})


@FUZZ
@given(name=st.sampled_from(["base.mha", "gz.mha"]), edits=LINE_EDITS, ops=byte_ops(8), data_ops=byte_ops(0))
def test_fuzz_mha(name, edits, ops, data_ops):
    data, _ = base(name, lambda p: write_image(p, VOL, (0.5, 0.75, 1.25), (1.0, -2.0, 3.0),
                                               compress=p.name.startswith("gz")))
    head, payload = _split_attached(data, b"ElementDataFile = LOCAL\n")
    out = edit_lines(head, edits, "=").encode("latin-1") + apply_ops(payload, data_ops)
    check_image(name, apply_ops(out, ops))


@FUZZ
@given(name=st.sampled_from(["base.mhd", "gz.mhd"]), edits=LINE_EDITS, ops=byte_ops(8), data_ops=byte_ops(0))
def test_fuzz_mhd(name, edits, ops, data_ops):
    data, extra = base(name, lambda p: write_image(p, VOL, (0.5, 0.75, 1.25), (1.0, -2.0, 3.0),
                                                   compress=p.name.startswith("gz")))
    out = apply_ops(edit_lines(data.decode("latin-1"), edits, "=").encode("latin-1"), ops)
    check_image(name, out, {k: apply_ops(v, data_ops) for k, v in extra.items()})


# -- images: .npy --------------------------------------------------------------------------------------
DESCRS = ["'<f4'", "'>f8'", "'|u1'", "'<i2'", "'|b1'", "'|O'", "'<c8'", "'<U3'", "'|V4'", "'<M8[s]'", "'<f2'",
          "[('a', '<f4')]", "('<f4', (2,))", "'garbage'", "'<f16'", "1", "None"]
SHAPES = st.one_of(st.lists(st.one_of(st.integers(0, 8), st.sampled_from([-1, 30000, 2 ** 31, 2 ** 40])), max_size=4)
                   .map(lambda v: "(" + "".join(f"{x}, " for x in v) + ")"),
                   st.sampled_from(["()", "(3, 4, 5)", "(5, 4, 3)", "[3, 4, 5]", "'x'", "(3.0, 4, 5)", "None"]))


@FUZZ
@given(descr=st.none() | st.sampled_from(DESCRS), shape=st.none() | SHAPES, fortran=st.none() | st.sampled_from(
       ["True", "False", "1", "'no'"]), ops=byte_ops(128))
def test_fuzz_npy(descr, shape, fortran, ops):
    data, _ = base("base.npy", lambda p: write_image(p, VOL))
    if descr or shape or fortran:
        n = struct.unpack_from("<H", data, 8)[0]
        hd = data[10:10 + n].decode("latin-1")
        if descr: hd = re.sub(r"'descr': [^,]+,", f"'descr': {descr},", hd)
        if fortran: hd = re.sub(r"'fortran_order': \w+", f"'fortran_order': {fortran}", hd)
        if shape: hd = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", hd)
        hd = hd.rstrip() + " " * (-(len(hd.rstrip()) + 11) % 64) + "\n"
        data = data[:8] + struct.pack("<H", len(hd)) + hd.encode("latin-1") + data[10 + n:]
    check_image("base.npy", apply_ops(data, ops))


# -- landmarks ---------------------------------------------------------------------------------------------
PTS2 = rng.uniform(0, 50, (6, 2))
PTS3 = rng.uniform(0, 30, (5, 3))
JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 80, 2 ** 80) | st.floats()
                           | st.text(max_size=8), lambda c: st.lists(c, max_size=3)
                           | st.dictionaries(st.sampled_from(["points", "label", "shape_type", "shapes", "x"]), c,
                                             max_size=3), max_leaves=6)
TEXT_SPECIALS = st.sampled_from(["9" * 5000, "1e400", "-1e400", "NaN", "Infinity", "[" * 100000, "{" * 50000, "\ufeff",
                                 "\x00", "\udc80"])


def _json_paths(x, path=()):
    yield path
    if isinstance(x, dict):
        for k, v in x.items(): yield from _json_paths(v, path + (k,))
    elif isinstance(x, list):
        for i, v in enumerate(x): yield from _json_paths(v, path + (i,))


def _json_set(x, path, value):
    if not path: return value
    x[path[0]] = _json_set(x[path[0]], path[1:], value)
    return x


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), JSON_VALUES), max_size=3),
       text=st.none() | st.tuples(st.integers(0, 10 ** 6), TEXT_SPECIALS), ops=byte_ops(64),
       labels=st.none() | st.just(["l1", "l3"]))
def test_fuzz_labelme(edits, text, ops, labels):
    names = [f"l{i}" for i in range(1, 7)]
    p = write_labelme(DATA / "base.json", PTS2, names, image_path="../../etc/passwd", image_shape=(60, 55))
    d = json.loads(p.read_text())
    for i, value in edits:
        paths = list(_json_paths(d))
        d = _json_set(d, paths[i % len(paths)], value)
    s = json.dumps(d)
    if text is not None:
        nums = [m.start() for m in re.finditer(r"-?\d", s)] or [0]
        at = nums[text[0] % len(nums)]
        s = s[:at] + text[1] + s[at:]
    raw = apply_ops(s.encode("utf-8", "surrogatepass"), ops)
    p.write_bytes(raw)
    unchanged = not edits and text is None and not ops

    def valid(v):
        P, n = v
        assert isinstance(P, np.ndarray) and P.dtype == np.float64 and P.ndim == 2 and P.shape[1] == 2
        assert isinstance(n, list) and len(n) == len(P) and all(isinstance(x, str) for x in n)
    expected = None
    if unchanged:
        want = PTS2[[0, 2]] if labels else PTS2
        expected = lambda v: np.testing.assert_allclose(v[0], want, rtol=0, atol=1e-12)  # noqa: E731
    outcome(lambda f: read_labelme(f, labels), p, valid, expected)


def _text_case(name, text, tok_edits, line_edits, ops):
    s = tokens_edit(text, tok_edits)
    s = edit_lines(s, line_edits, ":" if name.endswith(".pts") else "=")
    p = DATA / name
    p.write_bytes(apply_ops(s.encode("utf-8", "surrogatepass"), ops))
    return p, not tok_edits and not line_edits and not ops


@FUZZ
@given(d=st.sampled_from([2, 3]), tok=TOKEN_EDITS, lines=LINE_EDITS, ops=byte_ops(32))
def test_fuzz_pts(d, tok, lines, ops):
    P = PTS2 if d == 2 else PTS3
    text = write_pts(DATA / "base.pts", P).read_text()
    p, same = _text_case("base.pts", text, tok, lines, ops)
    outcome(read_pts, p, points_array(), (lambda v: np.testing.assert_array_equal(v, P)) if same else None)


@FUZZ
@given(tok=TOKEN_EDITS, lines=LINE_EDITS, ops=byte_ops(32), curves=st.booleans())
def test_fuzz_tps(tok, lines, ops, curves):
    sets = [PTS2, PTS2[:4] * 2]
    text = write_tps(DATA / "base.tps", sets, images=["a.jpg", "b.jpg"], scale=0.01).read_text()
    if curves: text = text.replace("IMAGE=b.jpg", "CURVES=1\nPOINTS=2\n5 6\n7 8\nIMAGE=b.jpg")
    p, same = _text_case("base.tps", text, tok, lines, ops)

    def valid(v):
        assert isinstance(v, list) and v and all(isinstance(s, TpsSpecimen) for s in v)
        for s in v: points_array()(s.points)
    expected = (lambda v: [np.testing.assert_array_equal(s.points, P) for s, P in zip(v, sets)]) if same else None
    outcome(read_tps, p, valid, expected)


@FUZZ
@given(d=st.sampled_from([2, 3]), tok=TOKEN_EDITS, lines=LINE_EDITS, ops=byte_ops(32),
       wide=st.booleans())
def test_fuzz_csv(d, tok, lines, ops, wide):
    P = np.stack([PTS2, PTS2 * 0.5])[..., :d] if d == 2 else np.stack([PTS3, PTS3 + 1])
    if wide:
        head = "name," + ",".join(f"{a}{k}" for k in range(P.shape[1]) for a in "xyz"[:d])
        text = head + "\n" + "\n".join(f"img{i}," + ",".join(repr(float(v)) for v in P[i].ravel())
                                       for i in range(len(P))) + "\n"
    else:
        text = write_landmarks_csv(DATA / "base.csv", P, ["img0", "img1"], shapes=(60, 55, 40)[:d]).read_text()
    p, same = _text_case("base.csv", text, tok, lines, ops)

    def valid(v):
        names, Q = v
        assert isinstance(Q, np.ndarray) and Q.dtype == np.float64 and Q.ndim == 3 and Q.shape[2] in (2, 3)
        assert len(names) == len(Q)
    outcome(read_landmarks_csv, p, valid, (lambda v: np.testing.assert_array_equal(v[1], P)) if same else None)


@FUZZ
@given(tok=TOKEN_EDITS, lines=LINE_EDITS, ops=byte_ops(32))
def test_fuzz_particles(tok, lines, ops):
    text = write_particles(DATA / "base.particles", PTS3).read_text()
    p, same = _text_case("base.particles", text, tok, lines, ops)
    outcome(read_particles, p, points_array((3,)), (lambda v: np.testing.assert_array_equal(v, PTS3)) if same else None)


@FUZZ
@given(kind=st.sampled_from([".mrk.json", ".fcsv"]), edits=st.lists(st.tuples(st.integers(0, 10 ** 6), JSON_VALUES),
       max_size=2), tok=TOKEN_EDITS, lines=LINE_EDITS, ops=byte_ops(64))
def test_fuzz_markups(kind, edits, tok, lines, ops):
    p = write_markups(DATA / f"base{kind}", PTS3, [f"l{i}" for i in range(5)], "RAS")
    text = p.read_text()
    if kind == ".mrk.json":
        d = json.loads(text)
        for i, value in edits:
            paths = list(_json_paths(d))
            d = _json_set(d, paths[i % len(paths)], value)
        text = json.dumps(d)
    s = edit_lines(tokens_edit(text, tok), lines, "=" if kind == ".fcsv" else ":")
    p.write_bytes(apply_ops(s.encode("utf-8", "surrogatepass"), ops))
    same = not (edits if kind == ".mrk.json" else False) and not tok and not lines and not ops

    def valid(m):
        assert isinstance(m, Markups) and m.coordinate_system == "LPS"
        assert m.points.dtype == np.float64 and m.points.ndim == 2 and m.points.shape[1] == 3
        assert np.isfinite(m.points).all() and len(m.names) == len(m.points)
        assert all(isinstance(n, str) for n in m.names)
    expected = (lambda m: np.testing.assert_array_equal(m.points, PTS3 * [-1, -1, 1])) if same else None
    outcome(read_markups, p, valid, expected)


# -- checkpoints ---------------------------------------------------------------------------------------------
def valid_checkpoint(ck):
    assert isinstance(ck, dict)
    sd = ck["state_dict"]
    assert sd is None or isinstance(sd, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in sd.items())
    assert isinstance(ck["extra"], dict) and (ck["config"] is None or isinstance(ck["config"], dict))


_CKPT = {}


def _ckpt_base() -> bytes:
    if "b" not in _CKPT:
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        p = save_checkpoint(ROOT / "bases" / "m.pt", m, dict(epochs=3, lr=1e-3), names=["a", "b"], basis=np.eye(2))
        _CKPT["b"], _CKPT["sd"] = p.read_bytes(), m.state_dict()
    return _CKPT["b"]


@FUZZ
@given(ops=byte_ops(512))
def test_fuzz_checkpoint_bytes(ops):
    data = _ckpt_base()
    p = DATA / "m.pt"
    out = apply_ops(data, ops)
    p.write_bytes(out)

    def same(ck):
        for k, v in _CKPT["sd"].items(): assert torch.equal(ck["state_dict"][k], v)
    outcome(load_checkpoint, p, valid_checkpoint, same if out == data else None)


TENSORS = st.builds(lambda shape, kind: torch.zeros(shape, dtype=kind),
                    st.lists(st.integers(0, 3), max_size=3), st.sampled_from([torch.float32, torch.int64, torch.bool]))
PLAIN = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6)
                     | TENSORS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=5)


@FUZZ
@given(obj=st.one_of(PLAIN, st.fixed_dictionaries({}, optional={"state_dict": PLAIN | st.dictionaries(
       st.sampled_from(["0.weight", "0.bias", "x"]), TENSORS, max_size=3), "config": PLAIN, "extra": PLAIN,
       "shape_nb_version": PLAIN})))
def test_fuzz_checkpoint_structure(obj):
    p = DATA / "s.pt"
    buf = io.BytesIO(); torch.save(obj, buf); p.write_bytes(buf.getvalue())
    outcome(load_checkpoint, p, valid_checkpoint)


# -- training states (resume) ------------------------------------------------------------------------------------
X = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))
BATCHES = [(X[i:i + 8], X[i:i + 8].sum(1, keepdim=True)) for i in range(0, 32, 8)]
TWO = dict(epochs=2, lr=0.05, progress=False, device="cpu")


def _mse(m, b): return ((m(b[0]) - b[1]) ** 2).mean()


def _state_base() -> dict:
    "A training state as if a 2-epoch run (with validation) had stopped after epoch 0."
    if "state" not in _CKPT:
        ck = ROOT / "bases" / "state.pt"
        fit(torch.nn.Linear(3, 1), _mse, BATCHES, BATCHES[:1], TrainConfig(**TWO, checkpoint=str(ck)))
        st_ = torch.load(ck, weights_only=True); st_.update(finished=False, epoch=0)
        _CKPT["state"] = st_
    return copy.deepcopy(_CKPT["state"])


def _resume(path):
    return fit(torch.nn.Linear(3, 1), _mse, BATCHES, BATCHES[:1], TrainConfig(**TWO, checkpoint=str(path), resume=True))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10 ** 6), PLAIN), max_size=2), ops=byte_ops(512))
def test_fuzz_resume(edits, ops):
    state = _state_base()
    for i, value in edits:
        paths = list(_json_paths(state))
        state = _json_set(state, paths[i % len(paths)], value)
    buf = io.BytesIO(); torch.save(state, buf)
    p = DATA / "state.pt"; p.write_bytes(apply_ops(buf.getvalue(), ops))
    outcome(_resume, p, lambda h: isinstance(h, History) and len(h.records) == 2)
