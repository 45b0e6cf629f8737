"""Seeded noise streams (utils/rng.py): a batch's per-slice draws equal one-slice draws."""
import pytest
import torch

from utils.rng import NoiseStreams, make_generator, randn_like


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64])
def test_per_slice_streams_equal_one_slice_streams(dtype):
    batch = NoiseStreams.per_slice([5, 9, 5])
    singles = [NoiseStreams(seeds=[s]) for s in (5, 9, 5)]
    for _ in range(3):                                   # successive draws stay aligned
        x = batch.randn((3, 4, 6), dtype)
        for b, one in enumerate(singles):
            torch.testing.assert_close(x[b:b + 1], one.randn((1, 4, 6), dtype), rtol=0, atol=0)
    assert not torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])   # same seed, same stream
    u = batch.rand((3, 2)); assert u.min() >= 0 and u.max() < 1


def test_complex_noise_has_unit_variance_parts_and_generator_coercion():
    z = randn_like(torch.zeros(200_000, dtype=torch.complex128), make_generator(0))
    assert abs(z.real.var().item() - 1) < 0.02 and abs(z.imag.var().item() - 1) < 0.02
    g1, g2 = make_generator(3), make_generator(3)
    shared = NoiseStreams.coerce(g1)
    torch.testing.assert_close(shared.randn((2, 5)), torch.randn((2, 5), generator=g2))
    with pytest.raises(TypeError, match="NoiseStreams"):
        NoiseStreams.coerce(3)
    with pytest.raises(ValueError, match="one per slice"):
        NoiseStreams.per_slice([1, 2]).randn((3, 4))
