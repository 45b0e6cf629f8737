"""The DIP loop (solvers/dip_loop.py) checked against the maths directly, and B slices against their
one-slice solves.

* the loss the loop optimises and logs is ``‖A f − y‖² + λ‖f − z‖²`` recomputed from the logged
  estimate, per slice, for both reductions;
* with no data (an all-zero mask) the autoencoding term pulls ``f_θ(z)`` onto ``z``;
* the slices of a batch draw their networks and noise from their own seeds;
* one slice through the loop = a plain ``DIPUNet`` + ``torch.optim.Adam`` loop, bit for bit (CPU),
  and a one-slice call = a B = 1 call with per-slice seeds and callbacks, bit for bit;
* slice ``b`` of a batch = its one-slice solve (float64 to round-off, float32 loosely) for every
  variant, with per-slice NaN guards.

Tiny problems only (16×16, small nets, few steps, one thread).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import solvers
from models.dip_unet import build_dip_net
from physics import stack_physics
from physics.mri import MultiCoilMRI
from solvers.base import split_result
from solvers.dip import VanillaDIP
from solvers.seqdip import SeqDIP
from solvers.sgdip import SelfGuidedDIP
from solvers.udig_dip import UDiGDIP
from tests.dip_problems import H, eps_denoiser as _denoiser, mri_problems as _problem
from utils.complex import from_channels, to_channels
from utils.rng import NoiseStreams, make_generator, randn_like

NET = {"channels": (4, 8, 8)}

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(**over):
    c = dict(net=NET, lr=3e-3, log_every=2, disable_progress=True, num_outer=4, inner_steps=3)
    c.update(over)
    return c


UDIG = dict(t_start=100, t_end=10, purify_start=0, purify_stop=3)


def _rel(a, b):
    return float((a - b).abs().norm() / b.abs().norm())


# ------------------------------------------------------------------------- the loss, directly
class RecordingSeqDIP(SeqDIP):
    """aSeqDIP that keeps every input z_k it trains on (z₀ and each update)."""

    def initial_input(self, p):
        z = super().initial_input(p)
        self.zs = [z.clone()]
        return z

    def update_input(self, p, k, x, z, history):
        z = super().update_input(p, k, x, z, history)
        self.zs.append(z.clone())
        return z


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_logged_loss_is_the_dip_objective_per_slice(reduction):
    """At every step, slice b's logged (and optimised) loss = ‖A x_b − y_b‖² + λ‖x_b − z_b‖² recomputed
    from the logged estimate x_b, that slice's data only and the input z_k of its outer iteration."""
    ops, ys = _problem(torch.float64)
    y, A = torch.cat(ys), stack_physics(ops)
    lam = 0.7
    seen = [[], []]
    solver = RecordingSeqDIP(_cfg(num_outer=3, inner_steps=2, log_every=1, lam=lam, reduction=reduction),
                             seeds=[0, 1])
    solver(y, A, callback=[lambda s, x, info, b=b: seen[b].append((s, x, info)) for b in range(2)])
    red = (lambda t: t.abs().square().mean()) if reduction == "mean" else (lambda t: t.abs().square().sum())
    for b in range(2):
        assert [s for s, _, _ in seen[b]] == list(range(1, 7))
        for step, x, info in seen[b]:
            z = solver.zs[info["outer"]][b:b + 1]
            data = float(red(ops[b](x) - ys[b]))
            reg = float(red(x - z))
            assert reg > 1e-3 * data                          # the λ term is not negligible
            assert info["data_loss"] == pytest.approx(data, rel=1e-10)
            assert info["reg_loss"] == pytest.approx(reg, rel=1e-10)
            assert info["loss"] == pytest.approx(data + lam * reg, rel=1e-10)
    assert len(solver.zs) == 4 and not torch.equal(solver.zs[0], solver.zs[1])   # z really changes


def _phantom() -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H, dtype=torch.float64),
                            torch.linspace(-1, 1, H, dtype=torch.float64), indexing="ij")
    img = ((xx / 0.8) ** 2 + (yy / 0.6) ** 2 < 1).double() * 0.7 + 0.2 * xx
    return img.to(torch.complex128)[None]


class PhantomInputSeqDIP(SeqDIP):
    """aSeqDIP whose z₀ is a fixed image (so that the autoencoding target is not zero)."""

    def initial_input(self, p):
        return _phantom().expand(p.batch, H, H).clone()


@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_without_data_the_autoencoding_term_pulls_f_onto_z(lam):
    """All-zero mask: A = 0, so only λ‖f_θ(z) − z‖² drives θ.  With λ > 0, f_θ(z) moves onto z;
    with λ = 0 every gradient is zero and the network does not move at all."""
    A = MultiCoilMRI(torch.zeros(H, H, dtype=torch.float64))
    y = A(torch.zeros(1, H, H, dtype=torch.complex128))
    first = []
    # output="last_fit": x_hat = f_θ(z₀) after the steps (not f_θ(f_θ(z₀)))
    solver = PhantomInputSeqDIP(_cfg(num_outer=1, inner_steps=60, log_every=5, lam=lam, lr=1e-2,
                                     output="last_fit"), seed=0)
    r = solver(y, A, callback=lambda s, x, info: first.append(x) if not first else None)
    z = _phantom()
    assert all(v == 0 for v in r.history["data_loss"])
    if lam:
        ratio = float((r.x_hat - z).abs().square().sum() / (first[0] - z).abs().square().sum())
        assert ratio < 0.1, ratio
        assert r.history["reg_loss"][-1] < 0.1 * r.history["reg_loss"][0]
    else:
        assert torch.equal(r.x_hat, first[0])


# ------------------------------------------------------------------------- seeds and noise
class NoiseDenoiser:
    """``purify`` returns pure noise from the given stream and records it."""

    def __init__(self):
        self.draws = []

    def purify(self, x, t_start, num_steps=1, eta=0.0, noise=None):
        n = NoiseStreams.coerce(noise, x.device).like(x)
        self.draws.append(n.clone())
        return 0.1 * n


@pytest.mark.parametrize("seeds", [[5, 6], None])
def test_slices_draw_from_their_own_seeds(seeds):
    """Two identical slices: slice b's network is build_dip_net(seed_b) and its purification noise
    comes from a generator seeded seed_b + 1 — so with seeds [5, 6] the slices differ, and with
    seeds=None (every slice uses seed=5) they are the same solve."""
    ops, ys = _problem(torch.float64, B=1)
    y, A = torch.cat([ys[0], ys[0]]), stack_physics([ops[0], ops[0]])
    den = NoiseDenoiser()
    first = [[], []]
    r = UDiGDIP(_cfg(**UDIG, log_every=1), den, seed=5, seeds=seeds)(
        y, A, callback=[lambda s, x, info, b=b: first[b].append(x) for b in range(2)])
    per_slice = seeds or [5, 5]
    for b, s in enumerate(per_slice):
        want = randn_like(y.new_zeros(1, H, H), make_generator(s + 1))
        torch.testing.assert_close(den.draws[0][b:b + 1], want, rtol=0, atol=0)
        net = build_dip_net(NET, True, s).double()
        x0 = from_channels(net(to_channels(ops[0].input_image(ys[0]))), True)
        torch.testing.assert_close(first[b][0], x0.detach(), rtol=1e-10, atol=1e-12)
    if seeds is None:
        torch.testing.assert_close(r.x_hat[0], r.x_hat[1], rtol=1e-10, atol=1e-12)
        assert torch.equal(den.draws[0][0], den.draws[0][1])
    else:
        assert not torch.allclose(r.x_hat[0], r.x_hat[1], atol=1e-3)
        assert not torch.allclose(den.draws[0][0], den.draws[0][1])


# ------------------------------------------------------------------------- one slice, bit for bit
def test_one_slice_equals_plain_dipunet_with_torch_adam():
    """One slice through the loop is, op for op, a DIPUNet trained by torch.optim.Adam on
    mean|A f − y|² + λ mean|f − z|², z updated to f_θ(z) after each outer iteration (CPU, float32)."""
    ops, ys = _problem(torch.float32, B=1)
    A, y = ops[0], ys[0]
    K, N, lam, lr = 3, 4, 0.5, 3e-3
    got = SeqDIP(_cfg(num_outer=K, inner_steps=N, lam=lam, lr=lr, weight_decay=0.01), seed=3)(y, A).x_hat

    net = build_dip_net(NET, True, 3)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=0.01)
    f = lambda zz: from_channels(net(to_channels(zz)), True)  # noqa: E731
    z = A.input_image(y)
    for _ in range(K):
        for _ in range(N):
            opt.zero_grad()
            x = f(z)
            loss = (A(x) - y).abs().square().mean() + lam * (x - z).abs().square().mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            z = f(z)
    with torch.no_grad():
        want = f(z)
    assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["udigdip", "aseqdip", "dip", "sgdip"])
def test_one_slice_call_equals_batch_of_one(name):
    """``seed=s`` on one slice = ``seeds=[s]`` with a list of one callback on the stacked operator:
    the same bits, history and callback calls (CPU)."""
    ops, ys = _problem(torch.float32)
    cfg = _cfg(**(UDIG if name == "udigdip" else {}))
    if name in ("dip", "sgdip"):
        cfg = {k: v for k, v in cfg.items() if k not in ("num_outer", "inner_steps")}
        cfg.update(num_steps=7, **({"input_channels": 3, "input_noise_std": 0.05} if name == "dip" else {}))
    den = _denoiser() if name == "udigdip" else None
    seen_one, seen_b = [], []
    one = solvers.make_solver(name, cfg, den, seed=7)(ys[1], ops[1], callback=lambda *a: seen_one.append(a))
    bat = solvers.make_solver(name, cfg, den, seeds=[7])(ys[1], stack_physics([ops[1]]),
                                                         callback=[lambda *a: seen_b.append(a)])
    assert torch.equal(one.x_hat, bat.x_hat)
    assert one.history == bat.history == split_result(bat)[0].history
    assert [(s, i["loss"]) for s, _, i in seen_one] == [(s, i["loss"]) for s, _, i in seen_b]
    assert all(torch.equal(a[1], b[1]) for a, b in zip(seen_one, seen_b))


# ------------------------------------------------------------------------- B slices vs one
def _singles(cls, cfg, den, seeds, ops, ys):
    return [(cls(cfg, den, seed=s) if den is not None else cls(cfg, seed=s))(ys[b], ops[b])
            for b, s in enumerate(seeds)]


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_batched_udigdip_matches_single_runs(dtype, rtol):
    """Slice b of a B=2 solve = UDiGDIP(seed_b) alone: float64 to round-off; float32 to a loose
    tolerance (grouped vs plain convolution summation order, amplified by Adam)."""
    den = _denoiser(dtype)
    ops, ys = _problem(dtype)
    seeds = [10, 11]
    cfg = _cfg(**UDIG)
    singles = _singles(UDiGDIP, cfg, den, seeds, ops, ys)
    res = UDiGDIP(cfg, den, seeds=seeds)(torch.cat(ys), stack_physics(ops))
    assert res.x_hat.shape == (2, H, H) and res.x_hat.dtype == ys[0].dtype
    per = split_result(res)
    for b, (r, s) in enumerate(zip(per, singles)):
        rel = _rel(r.x_hat, s.x_hat)
        assert rel < rtol, (b, rel)
        assert r.history["step"] == s.history["step"]
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=max(rtol, 1e-12))
        assert r.history["t"] == s.history["t"]
        assert r.info["seed"] == seeds[b]
    # the two slices really are different problems/networks
    assert float((per[0].x_hat - per[1].x_hat).abs().max()) > 1e-3


def test_batched_seqdip_matches_single_and_no_coupling():
    dtype = torch.float64
    ops, ys = _problem(dtype, B=3)
    cfg = _cfg()
    singles = _singles(SeqDIP, cfg, None, [0, 1, 2], ops, ys)
    res = SeqDIP(cfg, seeds=[0, 1, 2])(torch.cat(ys), stack_physics(ops))
    for r, s in zip(split_result(res), singles):
        assert _rel(r.x_hat, s.x_hat) < 1e-9
    assert res.history["per_slice"] == [r.history for r in split_result(res)]
    # per-slice callbacks see exactly what a single run's callback sees
    seen = [[], [], []]
    cbs = [lambda st, x, info, b=b: seen[b].append((st, tuple(x.shape), info["outer"])) for b in range(3)]
    SeqDIP(cfg, seeds=[0, 1, 2])(torch.cat(ys), stack_physics(ops), callback=cbs)
    single_seen = []
    SeqDIP(cfg, seed=0)(ys[0].to(torch.complex64), ops[0], callback=lambda st, x, info: single_seen.append(
        (st, tuple(x.shape), info["outer"])))
    assert seen[0] == seen[1] == seen[2] == single_seen


@pytest.mark.parametrize("noise_std", [0.0, 0.05])
def test_batched_vanilla_dip_matches_single_runs(noise_std):
    """Slice b of a batched VanillaDIP = VanillaDIP(seed_b): same noise input (and per-step input
    perturbation), same network init; float32, so to a loose tolerance after 12 Adam steps and
    closely at the first logged loss."""
    ops, ys = _problem(torch.float32)
    cfg = {"net": NET, "lr": 3e-3, "log_every": 3, "disable_progress": True,
           "num_steps": 12, "input_channels": 3, "input_noise_std": noise_std}
    seeds = [4, 9]
    singles = [VanillaDIP(cfg, seed=s)(ys[b], ops[b]) for b, s in enumerate(seeds)]
    solver = solvers.make_solver("dip", cfg, seeds=seeds)
    assert isinstance(solver, VanillaDIP)
    res = solver(torch.cat(ys), stack_physics(ops))
    for b, (r, s) in enumerate(zip(split_result(res), singles)):
        assert r.history["step"] == s.history["step"] == [3, 6, 9, 12]
        assert r.history["loss"][0] == pytest.approx(s.history["loss"][0], rel=1e-5)
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=1e-2)
        assert _rel(r.x_hat, s.x_hat) < 2e-3, b
        assert r.info["seed"] == seeds[b] and r.info["config"]["num_steps"] == 12
        assert r.history["reg_loss"] == [0.0] * 4
    assert float((res.x_hat[0] - res.x_hat[1]).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="input_kind"):
        VanillaDIP({"input_kind": "bogus"}, seeds=[0])


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_batched_sgdip_matches_single_runs(dtype, rtol):
    """Self-guided DIP on B slices (trainable inputs with their own Adam, Monte-Carlo perturbations
    per slice) = one-slice runs; the final inputs z too."""
    ops, ys = _problem(dtype)
    cfg = {"net": NET, "lr": 3e-3, "z_lr": 1e-2, "log_every": 3, "disable_progress": True, "num_steps": 9,
           "num_samples": 3, "eval_samples": 4, "noise_std": 0.1}
    seeds = [2, 8]
    singles = [SelfGuidedDIP(cfg, seed=s)(ys[b], ops[b]) for b, s in enumerate(seeds)]
    res = SelfGuidedDIP(cfg, seeds=seeds)(torch.cat(ys), stack_physics(ops))
    assert res.info["z"].shape == (2, H, H)
    for b, (r, s) in enumerate(zip(split_result(res), singles)):
        assert _rel(r.x_hat, s.x_hat) < rtol, b
        assert _rel(r.info["z"], s.info["z"]) < rtol and r.info["z"].shape == (1, H, H)
        np.testing.assert_allclose(r.history["loss"], s.history["loss"], rtol=max(rtol, 1e-12))
        assert not torch.equal(s.info["z"], ops[b].input_image(ys[b]))   # z was trained
    assert float((res.x_hat[0] - res.x_hat[1]).abs().max()) > 1e-3


def test_batched_rejects_wrong_batch():
    ops, ys = _problem(torch.float32)
    cfg = {"net": NET, "num_outer": 1, "inner_steps": 1, "disable_progress": True}
    with pytest.raises(ValueError, match="seeds"):
        SeqDIP(cfg, seeds=[0, 1, 2])(torch.cat(ys), stack_physics(ops))


# ------------------------------------------------------------------------- per-slice NaN guard
class _NaNAtCall:
    """Wraps ``A.forward``: the ``at``-th forward call with gradients returns NaN for ``slices``."""

    def __init__(self, A, at: int, slices):
        self.A, self.at, self.slices, self.calls = A, at, list(slices), 0
        self.orig = A.forward
        A.forward = self

    def __call__(self, x):
        out = self.orig(x)
        if x.requires_grad:
            self.calls += 1
            if self.calls == self.at:
                mask = torch.zeros(out.shape[0], dtype=torch.bool)
                mask[self.slices] = True
                nan = torch.tensor(float("nan"), dtype=out.real.dtype)
                out = out * torch.where(mask, nan, 1.0).view(-1, *[1] * (out.ndim - 1))   # NaN gradients too
        return out


@pytest.mark.parametrize("at", [4, 5])    # 4: a check step (log_every=2); 5: NaN weights until step 6
def test_batched_nan_guard_rolls_back_only_the_bad_slice(at):
    """A NaN in slice 1 at one step: slice 1 = a single run with the same NaN (rolled back, lr
    halved, event recorded at the same step), slice 0 = an undisturbed single run (float64)."""
    dtype = torch.float64
    ops, ys = _problem(dtype)
    cfg = _cfg(num_outer=2, inner_steps=4)
    seeds = [3, 4]
    A = stack_physics(ops)
    clean0 = _singles(SeqDIP, cfg, None, seeds[:1], ops, ys)[0]
    _NaNAtCall(ops[1], at, [0])
    bad1 = _singles(SeqDIP, cfg, None, seeds[1:], ops[1:], ys[1:])[0]
    _NaNAtCall(A, at, [1])
    res = split_result(SeqDIP(cfg, seeds=seeds)(torch.cat(ys), A))
    assert bad1.history["nan_events"] and "nan_events" not in clean0.history
    assert res[1].history["nan_events"] == bad1.history["nan_events"]
    assert "nan_events" not in res[0].history
    for r, s in ((res[0], clean0), (res[1], bad1)):
        assert torch.isfinite(torch.view_as_real(r.x_hat)).all()
        assert _rel(r.x_hat, s.x_hat) < 1e-9
        assert r.history["lr"] == s.history["lr"]


def test_net_impls_agree_and_bad_value_fails():
    ops, ys = _problem(torch.float64)
    outs = {impl: SeqDIP(_cfg(), seeds=[0, 1], perf={"net_impl": impl})(torch.cat(ys), stack_physics(ops))
            for impl in ("vmap", "grouped", "grouped_cl", "auto")}
    for impl, r in outs.items():
        rel = _rel(r.x_hat, outs["vmap"].x_hat)
        assert rel < 1e-9, (impl, rel)
        assert r.info["perf"]["net_impl"] == (impl if impl != "auto" else "grouped_cl")
    with pytest.raises(ValueError, match="net_impl"):
        SeqDIP(_cfg(), seeds=[0, 1], perf={"net_impl": "loops"})


# ----------------------------------------------------- data-adaptive purification strength
def test_adaptive_purification_levels_follow_the_residual_rule():
    """t_adapt="residual": a threshold no purified input can miss leaves the paper's schedule
    bit for bit; one no input can meet halves each slice's level at every purification, down by
    2^adapt_max_halvings and persisting; and each slice's levels and image equal its one-slice
    solve (float64), so batch mates never change a slice's purification."""
    dtype = torch.float64
    den = _denoiser(dtype)
    ops, ys = _problem(dtype)
    y, A = torch.cat(ys), stack_physics(ops)
    base = _cfg(**UDIG)
    plain = UDiGDIP(base, den, seeds=[3, 4])(y, A)
    loose = UDiGDIP({**base, "t_adapt": "residual", "adapt_tau": 10.0}, den, seeds=[3, 4])(y, A)
    assert torch.equal(plain.x_hat, loose.x_hat)
    sched = plain.history["t"]                                    # [100, 55, 10]
    for r in split_result(loose):
        assert r.history["t"] == sched
    tight = {**base, "t_adapt": "residual", "adapt_tau": 1e-12, "adapt_max_halvings": 2}
    res = UDiGDIP(tight, den, seeds=[3, 4])(y, A)
    # k=0: 100 → 50 → 25; later iterations start from the halved scale (1/4) and halve twice more
    want = [int(sched[0] / 4), int(sched[1] / 16), int(sched[2] / 64)]
    for b, r in enumerate(split_result(res)):
        assert r.history["t"] == want, (b, r.history["t"])
        alone = UDiGDIP(tight, den, seeds=[[3, 4][b]])(ys[b], ops[b])
        assert alone.history["t"] == want
        assert _rel(r.x_hat, alone.x_hat) < 1e-9
    assert not torch.equal(res.x_hat, plain.x_hat)
    with pytest.raises(ValueError, match="reverse_steps=1"):
        UDiGDIP({**tight, "reverse_steps": 2}, den)
    with pytest.raises(ValueError, match="t_adapt"):
        UDiGDIP({**base, "t_adapt": "auto"}, den)


class _NoisyPurifier:
    """Stand-in prior: DP(x, t) = x + 0.01·t·n, n from the given noise streams (t per slice)."""

    is_complex = True

    def purify(self, x, t, num_steps=1, eta=0.0, noise=None):
        tt = (t if torch.is_tensor(t) else torch.tensor([t] * x.shape[0])).to(x.real.dtype).view(-1, 1, 1)
        return x + 1e-2 * tt * NoiseStreams.coerce(noise, x.device).like(x)


def test_adaptive_purification_halves_only_the_slices_that_need_it():
    """Two slices whose purification adds residuals ten times apart (same noise, images ten times
    apart in scale): with a threshold between them only the first slice's levels halve, and
    each slice equals its one-slice solve — its retries draw from its own noise stream only."""
    dtype = torch.float64
    ops, ys = _problem(dtype)
    ys = [ys[0], 10 * ys[1]]
    cfg = {**_cfg(**UDIG), "t_adapt": "residual", "adapt_tau": 0.05}
    res = UDiGDIP(cfg, _NoisyPurifier(), seeds=[3, 4])(torch.cat(ys), stack_physics(ops))
    per = split_result(res)
    assert per[0].history["t"] == [12, 6, 1] and per[1].history["t"] == [100, 55, 10]
    for b, s in enumerate((3, 4)):
        alone = UDiGDIP(cfg, _NoisyPurifier(), seed=s)(ys[b], ops[b])
        assert alone.history["t"] == per[b].history["t"]
        assert _rel(per[b].x_hat, alone.x_hat) < 1e-9
