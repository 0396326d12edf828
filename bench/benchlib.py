"""Helpers shared by the benchmark scripts: device description, synchronised timing, GPU-utilisation sampling,
variant set-up (bf16 autocast, channels_last, torch.compile), JSON output, and the oracle registration error of
the phantom populations (registration with the true generating control points)."""
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch


def sync(device):
    "Wait for queued kernels (CUDA/MPS); a no-op on the CPU."
    if device.type == "cuda": torch.cuda.synchronize(device)
    elif device.type == "mps": torch.mps.synchronize()


def describe(device) -> str:
    "One line: the device, its name, torch version (and CPU threads)."
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)}), torch {torch.__version__}, CUDA {torch.version.cuda}"
    return (f"{device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"{os.cpu_count()} cores visible), torch {torch.__version__}")


def timed(fn, device, warmup=2, repeats=5, min_seconds=0.0):
    """Run `fn` `warmup` times, then at least `repeats` times and at least `min_seconds`, synchronising around
    each call; returns the list of per-call seconds (after warm-up)."""
    for _ in range(warmup): fn()
    sync(device)
    ts, t_start = [], time.perf_counter()
    while len(ts) < repeats or time.perf_counter() - t_start < min_seconds:
        t0 = time.perf_counter(); fn(); sync(device)
        ts.append(time.perf_counter() - t0)
    return ts


def median(xs):
    return float(statistics.median(xs))


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


def write_json(out_dir, name, data):
    out = Path(out_dir); out.mkdir(parents=True, exist_ok=True)
    f = out / name
    f.write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {f}")
    return f


def accepts(cls, param) -> bool:
    "Whether `cls(...)` takes a keyword `param` (for options that newer versions of the library add)."
    import inspect
    return param in inspect.signature(cls.__init__).parameters


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
