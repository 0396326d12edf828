"""TPS on every device and dtype: batched results agree with the float64 CPU reference."""
import pytest
import torch

from shape_nb.tps import tps_apply, tps_condition, tps_fit, tps_warp_image

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def case(d, B=4, N=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(B, N, d, generator=g, dtype=torch.float64) * 1.6 - 0.8
    return src, src + 0.05 * torch.randn(B, N, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("d", [2, 3])
def test_fit_apply_matches_cpu_float64(device, dtype, tol, d):
    src, dst = case(d)
    q = torch.rand(4, 100, d, dtype=torch.float64) * 2 - 1
    ref = tps_apply(tps_fit(src, dst), q)
    p = tps_fit(src.to(device, dtype), dst.to(device, dtype))
    out = tps_apply(p, q.to(device, dtype))
    assert out.device.type == device and out.dtype == dtype and out.shape == (4, 100, d)
    assert (out.double().cpu() - ref).abs().max() < tol
    k = tps_condition(p.L)
    assert k.shape == (4,) and k.device.type == device and torch.isfinite(k).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("d", [2, 3])
def test_warp_matches_cpu(device, d):
    src, dst = case(d, B=2, N=12)
    shape = (20, 24) if d == 2 else (10, 12, 14)
    img = torch.rand(2, 2, *shape, dtype=torch.float64)
    ref = tps_warp_image(img, src, dst)
    out = tps_warp_image(img.to(device, torch.float32), src.to(device, torch.float32), dst.to(device, torch.float32))
    assert out.device.type == device and out.dtype == torch.float32
    assert (out.double().cpu() - ref).abs().max() < 1e-3


@cuda
def test_cuda_gradients_flow():
    src, dst = case(2, B=2, N=8)
    src = src.cuda().float().requires_grad_()
    img = torch.rand(2, 1, 32, 32, device="cuda")
    out = tps_warp_image(img, src, dst.cuda().float())
    loss = out.square().mean() + tps_condition(tps_fit(src, src).L).mean() * 1e-4
    loss.backward()
    assert src.grad is not None and torch.isfinite(src.grad).all() and src.grad.device.type == "cuda"
