"""The operator contract (physics/base.py) for every operator: adjointness through the inherited
self-test, supports, stacking, and the degradation registry (physics/registry.py)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import physics
from physics import (DEGRADATIONS, MODALITIES, LinearOperator, MultiCoilMRI, ParallelBeamCT,
                     finite_checks, make_physics, modality_of, stack_physics)
from physics.coils import synthetic_coil_maps
from physics.masks import get_mask
from physics.mri import ifft2c

pytestmark = pytest.mark.usefixtures("one_thread")


def _crandn(*shape, seed=0, dtype=torch.complex128):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    base = dict(mask="uniform1d", acceleration=4.0, center_fraction=0.08, mask_seed=0,
                num_views=12, angle_range=90.0, num_detectors=0, noise_sigma=0.0)
    return SimpleNamespace(**{**base, **kw})


def _sample(modality, H=32, W=32, coils=4):
    if modality == "MRI":
        maps = None if coils == 0 else synthetic_coil_maps(coils, H, W, seed=1)
        return SimpleNamespace(x_ref=torch.zeros(H, W, dtype=torch.complex64), sens_maps=maps)
    return SimpleNamespace(x_ref=torch.zeros(H, W), sens_maps=None)


def _disk(H, W, r):
    yy, xx = torch.meshgrid(torch.arange(H) - H // 2, torch.arange(W) - W // 2, indexing="ij")
    return (yy ** 2 + xx ** 2 <= r ** 2).to(torch.float32)


# --------------------------------------------------------------------------- every operator
def _operators():
    """(id, factory) for every registry degradation and a set of geometries."""
    ops = [(f"registry-{d}", (lambda d=d: make_physics(d, _cfg(), _sample(modality_of(d), 32, 32))))
           for d in DEGRADATIONS]
    ops += [
        ("mri-odd-multicoil", lambda: MultiCoilMRI(get_mask("uniform2d", (33, 29), 3, seed=2),
                                                   synthetic_coil_maps(4, 33, 29, seed=2))),
        ("mri-single-coil", lambda: MultiCoilMRI(get_mask("uniform1d", (32, 32), 4, seed=1))),
        ("mri-batched-mask-and-maps", lambda: MultiCoilMRI(
            torch.stack([get_mask("gaussian1d", (24, 27), 3, seed=s) for s in range(3)]),
            _crandn(3, 5, 24, 27, seed=4))),
        ("mri-batched-mask-shared-maps", lambda: MultiCoilMRI(
            torch.stack([get_mask("gaussian2d", (31, 31), 4, seed=s) for s in range(2)]),
            synthetic_coil_maps(3, 31, 31, seed=5))),
        ("mri-weighted-mask", lambda: MultiCoilMRI(
            torch.rand(20, 18, generator=torch.Generator().manual_seed(6), dtype=torch.float64),
            _crandn(2, 2, 20, 18, seed=6))),
        ("mri-stacked", lambda: stack_physics([MultiCoilMRI(get_mask("uniform1d", (16, 20), 2, seed=s),
                                                            synthetic_coil_maps(3, 16, 20, seed=s))
                                               for s in range(3)])),
        ("ct-odd", lambda: ParallelBeamCT(33, num_views=23)),
        ("ct-la-90", lambda: ParallelBeamCT(40, num_views=30, angle_range=90.0)),
        ("ct-custom-detectors", lambda: ParallelBeamCT(31, num_views=20, num_detectors=50)),
        ("ct-spacing", lambda: ParallelBeamCT(24, num_views=9, num_detectors=41, detector_spacing=0.7)),
        ("ct-explicit-angles", lambda: ParallelBeamCT(20, angles=[0.0, 45.0, 90.0, 200.0, -30.0])),
    ]
    return ops


OPERATORS = _operators()


@pytest.mark.parametrize("make", [f for _, f in OPERATORS], ids=[i for i, _ in OPERATORS])
def test_adjointness_self_test(make):
    op = make()
    assert isinstance(op, LinearOperator)
    assert op.adjointness_test() < 1e-12
    low = torch.complex64 if op.is_complex else torch.float32
    assert op.adjointness_test(torch.Generator().manual_seed(3), dtype=low) < 1e-5


@pytest.mark.parametrize("make", [f for _, f in OPERATORS], ids=[i for i, _ in OPERATORS])
def test_contract_attributes(make):
    op = make()
    assert op.modality in MODALITIES and op.is_complex is (op.modality == "MRI")
    assert isinstance(op.input_label, str) and op.input_label
    H, W = op.image_shape
    B = op.batch_size or 2
    dtype = torch.complex128 if op.is_complex else torch.float64
    x = _crandn(B, H, W, seed=1, dtype=dtype)
    y = op(x)
    assert y.shape == (B, *op.measurement_shape) and y.dtype == dtype
    assert torch.allclose(op.normal(x), op.adjoint(y), rtol=1e-12, atol=1e-12)
    assert op.input_image(y).shape == (B, H, W)
    support = op.image_support()
    assert support.dtype == torch.float32 and support.shape[1:] == (H, W)
    assert support.shape[0] in (1, B) and set(support.unique().tolist()) <= {0.0, 1.0}
    mask = op.measurement_mask(y)
    assert mask.dtype == y.real.dtype and mask.ndim == y.ndim
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask.expand_as(y.real).shape == y.shape


class _UnconjugatedMapsMRI(MultiCoilMRI):
    def adjoint(self, y):
        return torch.sum(self._maps_for(y) * ifft2c(self._mask_for(y) * y), dim=1)


class _InterpAdjointCT(ParallelBeamCT):
    def adjoint(self, y):
        return self.backproject(y, "interp")


class _ScaledAdjointMRI(MultiCoilMRI):
    def adjoint(self, y):
        return 1.01 * super().adjoint(y)


class _UnmaskedAdjointMRI(MultiCoilMRI):
    """Wrong only for measurements outside the range of A (unsampled k-space not zeroed)."""

    def adjoint(self, y):
        return torch.sum(self._maps_for(y).conj() * ifft2c(y), dim=1)


def test_adjointness_self_test_rejects_wrong_adjoints():
    H, W = 24, 22
    mask, maps = get_mask("uniform1d", (H, W), 2, seed=0), synthetic_coil_maps(4, H, W, seed=0)
    assert MultiCoilMRI(mask, maps).adjointness_test() < 1e-12
    assert _UnconjugatedMapsMRI(mask, maps).adjointness_test() > 1e-3
    assert 0.005 < _ScaledAdjointMRI(mask, maps).adjointness_test() < 0.02   # off by 1 %
    assert _UnmaskedAdjointMRI(mask, maps).adjointness_test() > 1e-3
    assert _InterpAdjointCT(24, num_views=10).adjointness_test() > 1e-3


def test_adjointness_self_test_is_seeded():
    op = ParallelBeamCT(16, num_views=5)
    a = op.adjointness_test(torch.Generator().manual_seed(1), dtype=torch.float32)
    assert a == op.adjointness_test(torch.Generator().manual_seed(1), dtype=torch.float32)


# -------------------------------------------------------------------------------- supports
def test_image_support_of_mri_maps():
    H, W = 30, 26
    disk = _disk(H, W, 9)
    maps = synthetic_coil_maps(4, H, W, seed=2) * disk
    assert torch.equal(MultiCoilMRI(torch.ones(H, W), maps).image_support(), disk[None])
    full = MultiCoilMRI(torch.ones(H, W), synthetic_coil_maps(4, H, W, seed=2)).image_support()
    assert torch.equal(full, torch.ones(1, H, W))
    assert torch.equal(MultiCoilMRI(torch.ones(H, W)).image_support(), torch.ones(1, H, W))
    # per-slice maps → per-slice supports
    disks = torch.stack([_disk(H, W, 5), _disk(H, W, 11)])
    maps_b = synthetic_coil_maps(3, H, W, seed=1)[None] * disks[:, None]
    assert torch.equal(MultiCoilMRI(torch.ones(H, W), maps_b).image_support(), disks)
    assert torch.equal(ParallelBeamCT(16, num_views=4).image_support(), torch.ones(1, 16, 16))


def test_measurement_mask():
    H, W = 16, 18
    mask = get_mask("uniform1d", (H, W), 3, seed=4)
    op = MultiCoilMRI(mask, synthetic_coil_maps(3, H, W))
    y = op(_crandn(2, H, W, dtype=torch.complex64))
    m = op.measurement_mask(y)
    assert m.dtype == torch.float32
    for b in range(2):
        for c in range(3):
            assert torch.equal(m.expand_as(y.real)[b, c], mask)
    masks = torch.stack([get_mask("uniform2d", (H, W), 3, seed=s) for s in range(2)])
    opb = MultiCoilMRI(masks, synthetic_coil_maps(3, H, W))
    yb = opb(_crandn(2, H, W))
    assert torch.equal(opb.measurement_mask(yb).expand_as(yb.real)[:, 1], masks.double())
    weights = mask * torch.linspace(0.5, 2.0, W)
    assert torch.equal(MultiCoilMRI(weights).measurement_mask(y[:, :1])[0, 0], mask)  # where M ≠ 0
    ct = ParallelBeamCT(16, num_views=4)
    s = ct(torch.rand(2, 16, 16, dtype=torch.float64))
    assert torch.equal(ct.measurement_mask(s).expand_as(s), torch.ones_like(s))


# -------------------------------------------------------------------------------- stacking
def _mri_ops(n=3, H=16, W=20, C=3):
    return [MultiCoilMRI(get_mask("uniform1d", (H, W), 2, seed=s), synthetic_coil_maps(C, H, W, seed=s))
            for s in range(n)]


def test_stack_mri_equals_slices():
    ops = _mri_ops()
    A = stack_physics(ops)
    assert A.mask.shape == (3, 16, 20) and A.sens_maps.shape == (3, 3, 16, 20) and A.batch_size == 3
    x = _crandn(3, 16, 20, seed=2, dtype=torch.complex64)
    assert torch.equal(A(x), torch.cat([o(x[b:b + 1]) for b, o in enumerate(ops)]))
    y = A(x)
    assert torch.equal(A.adjoint(y), torch.cat([o.adjoint(y[b:b + 1]) for b, o in enumerate(ops)]))
    for b, o in enumerate(ops):                        # slice(b) undoes the stacking
        assert torch.equal(A.slice(b).mask, o.mask) and torch.equal(A.slice(b).sens_maps, o.sens_maps)
    with pytest.raises(ValueError, match="out of range"):
        A.slice(3)
    # a batched operator contributes all its slices
    AB = stack_physics([A, ops[0]])
    assert AB.batch_size == 4 and torch.equal(AB.mask[3], ops[0].mask)
    single = stack_physics([MultiCoilMRI(o.mask) for o in ops])
    assert single.sens_maps is None and single.mask.shape == (3, 16, 20)
    assert ops[0].slice(0) is ops[0]                   # shared operator


def test_stack_mri_errors():
    ops = _mri_ops(2)
    with pytest.raises(ValueError, match="num_coils"):
        stack_physics([ops[0], MultiCoilMRI(ops[1].mask)])
    with pytest.raises(ValueError, match="single-coil and multi-coil"):   # maps with C = 1
        stack_physics([_mri_ops(1, C=1)[0], MultiCoilMRI(ops[1].mask)])
    with pytest.raises(ValueError, match="image_shape"):
        stack_physics([ops[0], _mri_ops(1, H=18)[0]])
    with pytest.raises(ValueError, match="num_coils"):
        stack_physics([ops[0], _mri_ops(1, C=4)[0]])
    with pytest.raises(ValueError, match="one kind"):
        stack_physics([ops[0], ParallelBeamCT(16, num_views=4)])
    with pytest.raises(ValueError, match="at least one"):
        stack_physics([])
    with pytest.raises(ValueError, match="LinearOperator"):
        stack_physics([torch.nn.Identity()])


def test_stack_ct_same_geometry_and_mismatch():
    a, b = ParallelBeamCT(24, num_views=10), ParallelBeamCT(24, num_views=10)
    assert stack_physics([a, b]) is a and a.slice(5) is a
    cases = {
        "angles": ParallelBeamCT(24, num_views=11),
        "angle_range": ParallelBeamCT(24, angles=a.angles_deg, angle_range=90.0),
        "num_detectors": ParallelBeamCT(24, num_views=10, num_detectors=40),
        "image_size": ParallelBeamCT(26, num_views=10, num_detectors=a.num_detectors),
        "detector_spacing": ParallelBeamCT(24, num_views=10, detector_spacing=0.5),
    }
    for what, other in cases.items():
        with pytest.raises(ValueError, match=what):
            stack_physics([a, b, other])
    shifted = ParallelBeamCT(24, angles=a.angles_deg + 0.5)
    with pytest.raises(ValueError, match="angles"):
        stack_physics([a, shifted])


# --------------------------------------------------------------------------------- checks
def test_finite_checks_method_and_function():
    op = MultiCoilMRI(torch.ones(8, 8))
    bad = torch.full((1, 8, 8), complex("nan"), dtype=torch.complex64)
    with op.finite_checks(False):
        assert torch.isnan(op(bad)).all()
    assert op.check_finite
    wrapper = torch.nn.Sequential(op)                 # operators inside a module are found too
    with finite_checks(wrapper, False):
        assert not op.check_finite
    assert op.check_finite
    with pytest.raises(ValueError, match="NaN"):
        op(bad)
    with finite_checks(object(), False) as o:         # anything else is left alone
        assert o is not None


# -------------------------------------------------------------------------------- registry
def test_registry_names_and_modalities():
    assert DEGRADATIONS == ("MRI-multi", "SV-CT", "LA-CT")
    assert [modality_of(d) for d in DEGRADATIONS] == ["MRI", "CT", "CT"]
    for d in DEGRADATIONS:
        op = make_physics(d, _cfg(), _sample(modality_of(d)))
        assert op.modality == modality_of(d) == physics.degradation(d).modality
    for bad in ("MRI-single", "CT", "", None):
        with pytest.raises(ValueError, match="valid: MRI-multi, SV-CT, LA-CT"):
            modality_of(bad)
        with pytest.raises(ValueError, match="unknown degradation"):
            make_physics(bad, _cfg(), _sample("CT"))


def test_registry_mri_builder():
    cfg = _cfg(mask="gaussian1d", acceleration=4.0, mask_seed=3)
    op = make_physics("MRI-multi", cfg, _sample("MRI", 32, 40))
    assert torch.equal(op.mask, get_mask("gaussian1d", (32, 40), 4.0, 0.08, seed=3))
    assert op.num_coils == 4 and op.image_shape == (32, 40)
    assert make_physics("MRI-multi", cfg, _sample("MRI", coils=0)).num_coils == 1


@pytest.mark.parametrize("angle_range", [90.0, 60.0, 150.0])
def test_limited_angle_ct_spans_angle_range(angle_range):
    V = 30
    op = make_physics("LA-CT", _cfg(num_views=V, angle_range=angle_range), _sample("CT", 32, 32))
    ang = op.angles_deg
    assert len(ang) == V and ang.min() == 0.0
    assert np.allclose(np.diff(ang), angle_range / V)
    assert math.isclose(ang.max(), angle_range * (1 - 1 / V))        # the arc [0, angle_range)
    assert math.isclose(op.fbp_scale, math.radians(angle_range) / V)
    sv = make_physics("SV-CT", _cfg(num_views=V, angle_range=angle_range), _sample("CT", 32, 32))
    assert math.isclose(sv.angles_deg.max(), 180.0 * (1 - 1 / V))    # SV-CT always scans 180°


def test_registry_ct_builder_options_and_errors():
    op = make_physics("SV-CT", _cfg(num_detectors=0), _sample("CT", 32, 32))
    assert op.num_detectors == physics.ct.default_num_detectors(32)
    assert make_physics("SV-CT", _cfg(num_detectors=50), _sample("CT", 32, 32)).num_detectors == 50
    with pytest.raises(ValueError, match="square"):
        make_physics("SV-CT", _cfg(), _sample("CT", 32, 30))
    for bad in (180.0, 0.0, 270.0):
        with pytest.raises(ValueError, match="angle_range"):
            make_physics("LA-CT", _cfg(angle_range=bad), _sample("CT", 32, 32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_contract_on_cuda():
    for op in (MultiCoilMRI(get_mask("uniform1d", (32, 30), 3), synthetic_coil_maps(4, 32, 30)),
               ParallelBeamCT(32, num_views=12)):
        op = op.cuda()
        assert op.device.type == "cuda" and op.adjointness_test() < 1e-12
        assert op.image_support().is_cuda
        y = op(torch.zeros(1, *op.image_shape, dtype=torch.complex64 if op.is_complex else torch.float32,
                           device="cuda"))
        assert op.measurement_mask(y).is_cuda
