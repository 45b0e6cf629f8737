"""Tests for the DIP-type solvers (models/dip_unet.py, solvers/{common,dip_loop,dip,seqdip,udig_dip,sgdip}.py).

Tiny problems (≤ 32×32, small nets, few steps) on the real operators (physics/mri.py,
physics/ct.py) and the real ``models.denoiser.Denoiser`` driven by an oracle ε-network.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.diffusion import DiffusionSchedule
from models.denoiser import Denoiser
from models.dip_unet import DIPUNet, bilinear_upsample2, build_dip_net
from physics.mri import MultiCoilMRI
from solvers.common import net_output, resolve_config
from solvers.dip_loop import dip_loss
from solvers.dip import VanillaDIP
from solvers.seqdip import SeqDIP
from solvers.sgdip import SelfGuidedDIP
from solvers.udig_dip import UDiGDIP, purification_timesteps, default_config as udig_defaults
from utils.complex import to_channels
from utils.rng import NoiseStreams
from physics.base import LinearOperator

SMALL_NET = {"channels": (8, 16, 16)}
H = W = 24


# ------------------------------------------------------------------------------------ fixtures
pytestmark = pytest.mark.usefixtures("one_thread")


class MaskedFFT(LinearOperator):
    """Minimal single-coil stand-in (A = M·fft2c) that, unlike physics.mri, accepts NaN input."""

    modality, is_complex = "MRI", True

    def __init__(self, mask):
        super().__init__()
        self.mask, self.image_shape = mask, tuple(mask.shape)
        self.measurement_shape = (1, *self.image_shape)

    def forward(self, x):
        return (self.mask * torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)),
                                                              norm="ortho"), dim=(-2, -1)))[:, None]

    def adjoint(self, y):
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(self.mask * y[:, 0], dim=(-2, -1)),
                                                  norm="ortho"), dim=(-2, -1))

    input_image = adjoint


def _phantom(h=H, w=W, complex_=True) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    img = ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1).float() * 0.7
    img = img + ((xx - 0.2) ** 2 / 0.05 + (yy + 0.1) ** 2 / 0.1 < 1).float() * 0.3
    if not complex_:
        return img[None]
    return (img * torch.exp(1j * 0.5 * xx)).to(torch.complex64)[None]


def _mri_problem(h=H, w=W, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(w, generator=g) < 0.3).float()
    mask[w // 2 - 2: w // 2 + 2] = 1.0
    mask = mask.expand(h, w).clone()
    A = MultiCoilMRI(mask)
    x = _phantom(h, w)
    y = A(x)
    y = y + 0.01 * torch.randn(y.shape, generator=g, dtype=y.dtype)
    return A, x, y


def _cfg(kind: str, **over):
    base = dict(net=SMALL_NET, lr=3e-3, log_every=5, disable_progress=True)
    if kind in ("udig", "seq"):
        base.update(num_outer=5, inner_steps=4)
    if kind == "udig":
        base.update(t_start=100, t_end=10, purify_start=0, purify_stop=4)
    if kind in ("dip", "sg"):
        base.update(num_steps=20)
    if kind == "dip":
        base.update(input_channels=4)
    base.update(over)
    return base


class OracleEpsNet(nn.Module):
    """ε-network that is perfect for a known clean image: ε = (x_t − √ᾱ x0)/√(1−ᾱ)."""

    def __init__(self, x0: torch.Tensor, sched: DiffusionSchedule):
        super().__init__()
        self.register_buffer("x0", to_channels(x0).double())
        self.abar = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float64)

    def forward(self, x, t):
        a = self.abar[t.long()].reshape(-1, 1, 1, 1)
        return ((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).float()


def _oracle_denoiser(x0: torch.Tensor) -> Denoiser:
    sched = DiffusionSchedule()
    return Denoiser(OracleEpsNet(x0, sched), sched, is_complex=torch.is_complex(x0), learn_sigma=False)


class RecordingDenoiser:
    """Stand-in prior with the documented ``purify`` interface: shrinks x and adds seeded noise."""

    def __init__(self):
        self.calls = []

    def purify(self, x, t_start, num_steps=1, eta=0.0, noise=None):
        self.calls.append((int(t_start), num_steps, eta))
        self.max_abs = float(x.abs().max())
        n = NoiseStreams.coerce(noise, x.device).like(x)
        return 0.9 * x + 0.01 * n


def _make(kind: str, seed=0, denoiser=None, **over):
    cfg = _cfg(kind, **over)
    if kind == "udig":
        return UDiGDIP(cfg, denoiser=denoiser or RecordingDenoiser(), seed=seed)
    if kind == "seq":
        return SeqDIP(cfg, seed=seed)
    if kind == "dip":
        return VanillaDIP(cfg, seed=seed)
    return SelfGuidedDIP(cfg, seed=seed)


KINDS = ["udig", "seq", "dip", "sg"]


def _nmse(a, b):
    return float((a - b).abs().pow(2).sum() / b.abs().pow(2).sum())


# -------------------------------------------------------------------------------------- U-Net
@pytest.mark.parametrize("is_complex", [True, False])
@pytest.mark.parametrize("hw", [(13, 31), (24, 24), (17, 8), (1, 5)])
def test_unet_shapes_any_size(is_complex, hw):
    net = build_dip_net(SMALL_NET, is_complex, seed=0)
    x = torch.randn(2, *hw, dtype=torch.complex64 if is_complex else torch.float32)
    out = net_output(net, x, is_complex)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(torch.view_as_real(out) if is_complex else out).all()


def test_unet_default_architecture_and_transposed_variant():
    net = DIPUNet(2, 2)  # default (64, 128, 256, 256): 3 down levels
    assert net.levels == 3 and net.channels == (64, 128, 256, 256)
    assert isinstance(net.inc.block[1], nn.BatchNorm2d)
    assert net(torch.randn(1, 2, 19, 21)).shape == (1, 2, 19, 21)
    net_t = DIPUNet(1, 1, channels=(4, 8), bilinear=False, norm="instance")
    assert net_t(torch.randn(1, 1, 9, 10)).shape == (1, 1, 9, 10)
    with pytest.raises(ValueError):
        DIPUNet(1, 1, norm="layer")
    with pytest.raises(ValueError):
        net_t(torch.randn(1, 2, 8, 8))  # wrong channel count


def test_bilinear_upsample_matches_interpolate():
    x = torch.randn(2, 3, 5, 7)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(bilinear_upsample2(x), ref, atol=1e-6, rtol=1e-6)


def test_build_dip_net_deterministic_and_leaves_global_rng():
    state = torch.random.get_rng_state()
    a = build_dip_net(SMALL_NET, True, seed=3).state_dict()
    b = build_dip_net(SMALL_NET, True, seed=3).state_dict()
    c = build_dip_net(SMALL_NET, True, seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 1)


# --------------------------------------------------------------------------- the inner loop
def _fit(A, y, steps, lam=0.5, lr=3e-3, log_every=5, **over):
    """One outer iteration of ``steps`` optimiser steps with z = z₀ frozen (aSeqDIP, K = 1)."""
    return SeqDIP(_cfg("seq", num_outer=1, inner_steps=steps, lam=lam, lr=lr, log_every=log_every, **over),
                  seed=0)(y, A)


def test_fit_decreases_loss():
    A, x, y = _mri_problem()
    z = A.input_image(y)
    r = _fit(A, y, 40)
    hist = r.history
    assert hist["step"] == list(range(5, 41, 5))
    assert hist["loss"][-1] < 0.3 * hist["loss"][0]
    assert "nan_events" not in hist
    final, data, reg = dip_loss(r.x_hat, y, A, 0.5, z)
    assert math.isclose(float(final), float(data) + 0.5 * float(reg), rel_tol=1e-6)
    # "sum" reduction is the plain squared norm
    _, d_sum, _ = dip_loss(r.x_hat, y, A, 0.0, None, reduction="sum")
    assert math.isclose(float(d_sum), float((A(r.x_hat) - y).abs().pow(2).sum()), rel_tol=1e-5)


class NaNOnceMRI(LinearOperator):
    """Wraps an operator; forward returns NaN on the listed call numbers (1-based)."""

    def __init__(self, A, bad_calls):
        super().__init__()
        self.A, self.bad, self.n = A, set(bad_calls), 0
        self.is_complex, self.image_shape = A.is_complex, A.image_shape
        self.modality, self.measurement_shape = A.modality, A.measurement_shape

    def forward(self, x):
        self.n += 1
        out = self.A(x)
        return out * float("nan") if self.n in self.bad or "all" in self.bad else out

    def input_image(self, y):
        return self.A.input_image(y)

    def adjoint(self, y):
        return self.A.adjoint(y)


@pytest.mark.parametrize("op, detected_at", [("real", 10), ("permissive", 10)])
def test_nan_guard_rolls_back_and_halves_lr(op, detected_at):
    A, x, y = _mri_problem()
    if op == "permissive":
        A = MaskedFFT(A.mask)
        torch.testing.assert_close(A(x), MultiCoilMRI(A.mask)(x))
    # forward call 7 (step 7) returns NaN: NaN gradients poison θ.  The loop switches the real
    # operator's own NaN check off (physics.finite_checks; a host sync per call on GPU), so with
    # both operators the NaN is caught at the next check step (10).
    bad = NaNOnceMRI(A, bad_calls=[7])
    r = _fit(bad, y, 30)
    hist = r.history
    assert hist["nan_events"] == [{"step": detected_at, "lr": 1.5e-3}]
    assert hist["lr"][-1] == 1.5e-3
    assert torch.isfinite(torch.view_as_real(r.x_hat)).all()
    assert all(math.isfinite(v) for v in hist["loss"])
    assert detected_at not in hist["step"] and hist["loss"][-1] < hist["loss"][0]


def test_inner_loop_has_no_host_sync(monkeypatch):
    """Between check steps the loop reads nothing back from the device: count the tensor→host
    conversions (bool / item / tolist) of whole solves with one check step (the last): they do not
    grow with the number of steps (only ``y``'s NaN check, the last step's losses and the finiteness
    check of the fitted output sync).  The operator's own per-call NaN check would add one per step."""
    A, x, y = _mri_problem()
    counts = []
    for steps in (10, 30):
        calls = {"n": 0}
        for name in ("__bool__", "item", "tolist"):
            orig = getattr(torch.Tensor, name)

            def counted(self, *a, _orig=orig, **k):
                calls["n"] += 1
                return _orig(self, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, counted)
        _fit(A, y, steps, log_every=1000)
        monkeypatch.undo()
        counts.append(calls["n"])
    assert counts[0] == counts[1] <= 3, counts
    assert A.check_finite            # restored after the loop
    with pytest.raises(ValueError, match="NaN"):
        A(x * float("nan"))


def test_finite_checks_context_restores():
    from physics import finite_checks
    from physics.ct import ParallelBeamCT

    ct = ParallelBeamCT(16, num_views=4)
    bad = torch.full((1, 16, 16), float("nan"))
    with finite_checks(ct, False):
        assert torch.isnan(ct(bad)).any()          # passes through unchecked
    with pytest.raises(ValueError, match="NaN"):
        ct(bad)
    with pytest.raises(RuntimeError), finite_checks(ct, False):
        raise RuntimeError("boom")
    assert ct.check_finite


def test_nan_guard_gives_up():
    A, x, y = _mri_problem()
    bad = NaNOnceMRI(A, bad_calls=["all"])
    with pytest.raises(RuntimeError, match="diverged"):
        _fit(bad, y, 50, lr=1e-4, log_every=1, max_nan_events=3)


# ----------------------------------------------------------------------------- solver contract
@pytest.mark.parametrize("kind", KINDS)
def test_bit_identical_with_and_without_x_gt(kind):
    A, x, y = _mri_problem()
    r0 = _make(kind)(y, A)
    seen = []

    def cb(step, x_hat, info):  # computes metrics from x_gt, must not influence anything
        assert torch.equal(info["x_gt"], x)
        seen.append((step, -10 * math.log10(_nmse(x_hat, info["x_gt"]))))

    r1 = _make(kind)(y, A, x_gt=x, callback=cb)
    assert torch.equal(r0.x_hat, r1.x_hat)
    assert r0.history == r1.history
    assert [s for s, _ in seen] == r0.history["step"]
    assert r0.x_hat.shape == x.shape and r0.x_hat.dtype == x.dtype


@pytest.mark.parametrize("kind", KINDS)
def test_seed_reproducible_and_seed_dependent(kind):
    A, x, y = _mri_problem()
    state = torch.random.get_rng_state()
    a = _make(kind, seed=1)(y, A).x_hat
    b = _make(kind, seed=1)(y, A).x_hat
    c = _make(kind, seed=2)(y, A).x_hat
    assert torch.equal(torch.random.get_rng_state(), state)  # no global RNG use
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("kind", KINDS)
def test_nan_measurements_raise(kind):
    A, x, y = _mri_problem()
    y = y.clone()
    y[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        _make(kind)(y, A)


@pytest.mark.parametrize("kind", KINDS)
def test_solver_reduces_data_misfit(kind):
    A, x, y = _mri_problem()
    r = _make(kind)(y, A)
    assert r.history["data_loss"][-1] < r.history["data_loss"][0]


def test_ct_real_images():
    from physics.ct import ParallelBeamCT

    A = ParallelBeamCT(16, num_views=8)
    x = _phantom(16, 16, complex_=False)
    y = A(x)
    den = _oracle_denoiser(x)
    solvers = [_make("udig", denoiser=den, num_outer=2, inner_steps=3, purify_stop=2, z0="fbp"),
               _make("seq", num_outer=2, inner_steps=3, z0="adjoint"),
               _make("sg", num_steps=6), _make("dip", num_steps=6)]
    for solver in solvers:
        r = solver(y, A)
        assert r.x_hat.shape == x.shape and r.x_hat.dtype == torch.float32
        assert torch.isfinite(r.x_hat).all()


# ----------------------------------------------------------------------------------- uDiG-DIP
@pytest.mark.parametrize("kind", ["linear", "cosine", "geometric"])
def test_t_schedule_decreasing_and_endpoints(kind):
    ts = purification_timesteps(kind, 300, 5, 17)
    assert len(ts) == 17 and ts[0] == 300 and ts[-1] == 5
    assert all(a >= b for a, b in zip(ts, ts[1:])) and ts[0] > ts[len(ts) // 2] > ts[-1]
    assert purification_timesteps(kind, 50, 50, 3) == [50, 50, 50]
    with pytest.raises(ValueError):
        purification_timesteps(kind, 5, 300, 4)


def test_schedules_differ():
    lin, cos, geo = (purification_timesteps(k, 300, 5, 11) for k in ("linear", "cosine", "geometric"))
    assert lin[5] == 152 and cos[5] == 152 and geo[5] == round(300 * (5 / 300) ** 0.5)
    assert cos[1] > lin[1] > geo[1]


def test_udig_purification_uses_configured_schedule_and_window():
    A, x, y = _mri_problem()
    den = RecordingDenoiser()
    solver = UDiGDIP(_cfg("udig", num_outer=7, purify_start=2, purify_stop=6, t_start=90, t_end=30,
                          t_schedule="linear", reverse_steps=3, eta=0.5), denoiser=den, seed=0)
    r = solver(y, A)
    assert r.history["t"] == [90, 70, 50, 30] == r.info["t_schedule"]
    assert r.history["purify_outer"] == [2, 3, 4, 5]
    assert den.calls == [(t, 3, 0.5) for t in (90, 70, 50, 30)]
    assert r.history["step"] == [5, 10, 15, 20, 25, 28]  # every log_every-th step and the last


def test_udig_config_validation():
    with pytest.raises(ValueError, match="denoiser"):
        UDiGDIP(_cfg("udig"), denoiser=None)
    with pytest.raises(ValueError, match="unknown config field"):
        UDiGDIP({"num_outre": 3}, denoiser=RecordingDenoiser())
    with pytest.raises(ValueError):
        UDiGDIP(_cfg("udig", purify_stop=99), denoiser=RecordingDenoiser())
    # no purification window → no denoiser needed
    UDiGDIP(_cfg("udig", purify_start=0, purify_stop=0))
    cfg = udig_defaults()
    assert cfg.purify_stop <= cfg.num_outer and cfg.t_end <= cfg.t_start
    resolved = resolve_config(udig_defaults(), {"net": {"norm": "instance"}})
    assert resolved.net.norm == "instance" and tuple(resolved.net.channels) == (64, 128, 256, 256)


def test_oracle_purification_beats_aseqdip():
    """With a perfect prior (purify returns the true image), uDiG-DIP must beat aSeqDIP."""
    A, x, y = _mri_problem()
    den = _oracle_denoiser(x)
    # the real Denoiser.purify with the oracle ε-net returns the truth from any t
    z = den.purify(A.input_image(y), 150, noise=torch.Generator().manual_seed(0))
    assert _nmse(z, x) < 1e-8
    common = dict(num_outer=20, inner_steps=10, lam=1.0)
    r_seq = SeqDIP(_cfg("seq", **common), seed=0)(y, A)
    r_udig = UDiGDIP(_cfg("udig", **common, purify_stop=20), denoiser=den, seed=0)(y, A)
    e_seq, e_udig, e_zf = _nmse(r_seq.x_hat, x), _nmse(r_udig.x_hat, x), _nmse(A.input_image(y), x)
    # measured (CPU, 1 thread): e_udig ≈ 0.022, e_seq ≈ 0.075, zero-filled ≈ 0.047
    assert e_udig < 0.5 * e_seq and e_udig < e_zf, (e_udig, e_seq, e_zf)


def test_configdict_input_and_progress_bar(capsys):
    from solvers.seqdip import default_config as seq_defaults

    cfg = seq_defaults()
    cfg.num_outer, cfg.inner_steps, cfg.log_every, cfg.disable_progress = 2, 3, 2, False
    cfg.net.channels = (4, 8)
    A, x, y = _mri_problem()
    r = SeqDIP(cfg, seed=0)(y, A)
    assert r.history["step"] == [2, 4, 6] and "t" not in r.history
    assert r.info["config"]["net"]["channels"] == (4, 8)


def test_purify_normalize_scales_input_to_unit_max():
    A, x, y = _mri_problem()
    den = RecordingDenoiser()
    UDiGDIP(_cfg("udig", num_outer=2, purify_stop=1, purify_normalize=True), denoiser=den)(y, A)
    assert len(den.calls) == 1 and abs(den.max_abs - 1.0) < 1e-5
