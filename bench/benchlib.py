"""Helpers shared by the benchmark scripts: the common options (`common_args`, `setup`), one timer (`clock`,
`timed`, `sync`), one JSON layout (`write_results`), the real-data check (`require_data`), the device description,
GPU-utilisation sampling, variant set-up (bf16 autocast, channels_last, torch.compile) and the oracle registration
error of the phantom populations (registration with the true generating control points)."""
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from shape_nb.core import get_device, seed_everything


# -- options -------------------------------------------------------------------------------------------------
def common_args(parser,        # the script's argparse.ArgumentParser
                quick_help="a smoke run: tiny sizes, seconds on a CPU",  # what --quick does in this script
                threads=None,  # default of --threads (None: torch's own)
               ):
    "Add the options every benchmark takes: --device, --threads, --quick, --out, --seed; returns the parser."
    g = parser.add_argument_group("common benchmark options (bench/benchlib.py)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    own = threads or "torch's own"
    g.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default {own})")
    g.add_argument("--quick", action="store_true", help=quick_help)
    g.add_argument("--out", default="bench/results", help="folder of the JSON results (default bench/results)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return parser


def setup(args) -> torch.device:
    "Apply --threads and --seed; return the usable torch.device of --device."
    if args.threads: torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    return get_device(args.device)


def require_data(args, *folders) -> Path:
    """The real-data root (../shared/data or $SHAPE_NB_DATA) that holds `folders`; when one is missing, a --quick
    run prints one line and exits with status 0, a full run fails."""
    from shape_nb.io import shared_data_dir
    root = shared_data_dir()
    missing = [f for f in folders if root is None or not (root / f).is_dir()]
    if missing:
        msg = (f"{Path(sys.argv[0]).name}: data {', '.join(missing)} not found (put it in ../shared/data or set "
               f"SHAPE_NB_DATA)")
        if args.quick:
            print(f"skipped: {msg}"); sys.exit(0)
        raise SystemExit(msg)
    return root


def describe(device) -> str:
    "One line: the device, its name, torch version (and CPU threads)."
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} cores visible), torch {torch.__version__}")


# -- timing --------------------------------------------------------------------------------------------------
def sync(device):
    "Wait for queued kernels (CUDA/MPS); a no-op on the CPU."
    device = torch.device(device)
    if device.type == "cuda": torch.cuda.synchronize(device)
    elif device.type == "mps": torch.mps.synchronize()


class clock:
    "Wall time of a block, synchronised on `device` at both ends: `with clock(dev) as c: ...`, then `c.seconds`."
    def __init__(self, device):
        self.device, self.seconds = torch.device(device), None

    def __enter__(self):
        sync(self.device); self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device); self.seconds = time.perf_counter() - self.t0


def timed(fn, device, warmup=2, repeats=5, min_seconds=0.0):
    """Run `fn` `warmup` times, then at least `repeats` times and at least `min_seconds`, each call timed by `clock`;
    returns the list of per-call seconds (after warm-up)."""
    for _ in range(warmup): fn()
    sync(device)
    ts, t_start = [], time.perf_counter()
    while len(ts) < repeats or time.perf_counter() - t_start < min_seconds:
        with clock(device) as c: fn()
        ts.append(c.seconds)
    return ts


def median(xs):
    return float(statistics.median(xs))


# -- results -------------------------------------------------------------------------------------------------
def result_path(args, device, name=None) -> Path:
    "`<--out>/<name>_<device type>[_quick].json`; `name` defaults to the script's name."
    name = name or Path(sys.argv[0]).stem
    return Path(args.out) / f"{name}_{torch.device(device).type}{'_quick' if args.quick else ''}.json"


def _plain(v):
    "JSON form of numpy / torch values (numbers, arrays, tensors); str for anything else."
    if hasattr(v, "tolist"): return v.tolist()
    return str(v)


def write_results(args,         # the parsed options: all of them are written as 'settings'
                  device,       # the device the benchmark ran on
                  results,      # the script's results (JSON values, numpy and torch values; anything else as str)
                  name=None,    # file name stem (default: the script's name)
                  merge=False,  # update the file's results (mapping entries merged) instead of replacing them
                 ) -> Path:
    """Write {"script", "device", "torch", "settings": vars(args), "results"} to `result_path(args, device, name)`;
    `merge` reads and updates the file under a lock (runs that finish at the same time) and says nothing (the caller
    reports the file once)."""
    f = result_path(args, device, name); f.parent.mkdir(parents=True, exist_ok=True)
    doc = dict(script=Path(sys.argv[0]).name, device=describe(device), torch=torch.__version__, settings=vars(args),
               results=results)
    if not merge:
        f.write_text(json.dumps(doc, indent=1, default=_plain)); print(f"wrote {f}")
        return f
    import fcntl
    with open(f"/tmp/{f.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(f.read_text()) if f.exists() else None
        if old is not None and "script" not in old:   # a file of an older layout: kept aside
            f.rename(f.with_suffix(".old.json")); old = None
            print(f"moved {f} (older layout) to {f.with_suffix('.old.json')}")
        doc["results"] = old["results"] if old else {}
        for k, v in results.items():
            if isinstance(v, dict) and isinstance(doc["results"].get(k), dict): doc["results"][k].update(v)
            else: doc["results"][k] = v
        f.write_text(json.dumps(doc, indent=1, default=_plain))
    return f


class GPUUtilisation:
    """Sample `nvidia-smi --query-gpu=utilization.gpu` in a background thread while the block runs.

    with GPUUtilisation(device) as u: ...   ->  u.mean, u.min, u.samples (percent; None when unavailable)"""
    CMD = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]

    def __init__(self, device, interval=0.1):
        self.device, self.interval, self.samples = torch.device(device), interval, []
        self.enabled = self.device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self._stop, self._thread = threading.Event(), None

    def _gpu_id(self):
        "nvidia-smi numbers GPUs physically; map torch's index through CUDA_VISIBLE_DEVICES."
        idx = self.device.index if self.device.index is not None else torch.cuda.current_device()
        vis = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        return vis[idx] if idx < len(vis) else str(idx)

    def _run(self):
        cmd = self.CMD + ["-i", self._gpu_id()]
        while not self._stop.is_set():
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
                if out and out[0].strip().isdigit(): self.samples.append(int(out[0]))
            except (OSError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set(); self._thread.join()

    @property
    def mean(self): return float(statistics.fmean(self.samples)) if self.samples else None

    @property
    def min(self): return float(min(self.samples)) if self.samples else None


# -- variants ------------------------------------------------------------------------------------------------
VARIANTS = {   # name -> (bf16 autocast, channels_last, torch.compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "channels_last": (False, True, False),
    "bf16+channels_last": (True, True, False),
    "compile": (False, False, True),
    "bf16+compile": (True, False, True),
    "bf16+channels_last+compile": (True, True, True),
}


def variant_ok(name, device):
    "None when the variant can run on `device`, else the reason."
    amp, _, comp = VARIANTS[name]
    if amp and device.type != "cuda": return "bf16 autocast: CUDA only here"
    if comp and not hasattr(torch, "compile"): return "torch.compile missing"
    return None


def memory_format(d):
    return torch.channels_last if d == 2 else torch.channels_last_3d


def prepare(model, name, d):
    "Apply a variant to a model: channels_last memory format and/or torch.compile; returns the callable to use."
    amp, cl, comp = VARIANTS[name]
    if cl: model = model.to(memory_format=memory_format(d))
    return torch.compile(model) if comp else model


def to_input(x, name, d):
    "Inputs in the memory format of the variant."
    return x.contiguous(memory_format=memory_format(d)) if VARIANTS[name][1] else x


def autocast(name, device):
    "bf16 autocast context for the variants that use it."
    if VARIANTS[name][0]: return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- phantoms ------------------------------------------------------------------------------------------------
@torch.no_grad()
def oracle_registration_error(images,          # (n, 1, *S) phantom images (unwhitened, as generated)
                              control_points,  # (n, P, d) their true generating control points (normalised)
                              pairs,           # (m, 2) (source, target) index pairs
                              fixed="corners", # fixed landmarks added to both sets, as in LandmarkDiscovery
                              batch=64) -> float:
    """Mean relative registration error ||I_T - I_R||^2 / ||I_T||^2 of `pairs` registered by the TPS through the
    true control points (+ the fixed corners): the error a perfect landmark placement reaches on phantoms."""
    from shape_nb.discovery import fixed_points, register_pair, relative_registration_error
    x, cp = torch.as_tensor(images), torch.as_tensor(control_points)
    fx = fixed_points(fixed, x.ndim - 2, x.dtype, x.device)
    errs = []
    for p in torch.as_tensor(pairs).split(batch):
        s, t = x[p[:, 0]], x[p[:, 1]]
        reg, _ = register_pair(s, cp[p[:, 0]].to(x.dtype), cp[p[:, 1]].to(x.dtype), fx)
        errs.append(relative_registration_error(t, reg))
    return torch.cat(errs).mean().item()
