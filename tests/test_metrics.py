"""utils/metrics.py: agreement with scikit-image, NMSE definition, DDS min-max convention."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from utils.metrics import compute_metrics, nmse, psnr, ssim


def _pair(seed=0, H=48, W=40, complex_=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:H, :W]
    ref = 0.2 + 0.6 * np.exp(-((yy - H / 2) ** 2 + (xx - W / 3) ** 2) / 150.0) + 0.1 * np.sin(xx / 3.0)
    ref = ref + 0.05 * rng.random((H, W))
    est = ref + 0.05 * rng.standard_normal((H, W))
    if complex_:
        ph = rng.uniform(-np.pi, np.pi)
        return est * np.exp(1j * (ph + 0.3)), ref * np.exp(1j * ph)
    return est, ref


@pytest.mark.parametrize("seed", [0, 1])
def test_psnr_ssim_match_skimage(seed):
    est, ref = _pair(seed)
    dr = ref.max()
    assert abs(psnr(est, ref) - peak_signal_noise_ratio(ref, est, data_range=dr)) < 1e-4
    sk = structural_similarity(ref, est, win_size=7, data_range=dr)
    assert abs(ssim(est, ref) - sk) < 1e-4
    # an explicit data range is honoured as well
    assert abs(psnr(est, ref, data_range=2.0) - peak_signal_noise_ratio(ref, est, data_range=2.0)) < 1e-4
    assert abs(ssim(est, ref, data_range=2.0)
               - structural_similarity(ref, est, win_size=7, data_range=2.0)) < 1e-4


def test_complex_uses_magnitude_and_torch_equals_numpy():
    est, ref = _pair(3, complex_=True)
    m_est, m_ref = np.abs(est), np.abs(ref)
    dr = m_ref.max()
    assert abs(psnr(est, ref) - peak_signal_noise_ratio(m_ref, m_est, data_range=dr)) < 1e-4
    assert abs(ssim(est, ref) - structural_similarity(m_ref, m_est, win_size=7, data_range=dr)) < 1e-4
    t_est, t_ref = torch.from_numpy(est).to(torch.complex64), torch.from_numpy(ref).to(torch.complex64)
    assert abs(psnr(t_est, t_ref) - psnr(est, ref)) < 1e-3
    assert abs(ssim(t_est, t_ref) - ssim(est, ref)) < 1e-4
    # a global phase rotation of either image does not change anything
    assert abs(psnr(est * 1j, ref) - psnr(est, ref)) < 1e-9


def test_nmse_definition():
    est, ref = _pair(5)
    expected = np.linalg.norm(est - ref) ** 2 / np.linalg.norm(ref) ** 2
    assert abs(nmse(est, ref) - expected) < 1e-12
    assert nmse(ref, ref) == 0.0
    assert abs(nmse(np.zeros_like(ref), ref) - 1.0) < 1e-12
    assert abs(nmse(2 * ref, ref) - 1.0) < 1e-12
    assert psnr(ref, ref) == math.inf
    assert abs(ssim(ref, ref) - 1.0) < 1e-12


def test_dds_convention_differs_and_is_minmax_invariant():
    est, ref = _pair(7)
    p_f, p_d = psnr(est, ref), psnr(est, ref, convention="dds")
    assert abs(p_f - p_d) > 0.1  # ref has min 0.2 and max ~0.95, so min-max changes the numbers
    # invariance to a positive affine map of each image separately
    for fn in (psnr, ssim, nmse):
        a = fn(est, ref, convention="dds")
        b = fn(3.0 * est - 1.0, 0.5 * ref + 7.0, convention="dds")
        assert abs(a - b) < 1e-9, fn.__name__
    # the fastMRI convention is not invariant to such a map
    assert abs(psnr(est, ref) - psnr(est + 1.0, ref + 1.0)) > 0.1
    # dds == fastmri computed on manually min-max normalised images with data_range 1
    mm = lambda a: (a - a.min()) / (a.max() - a.min())
    assert abs(p_d - peak_signal_noise_ratio(mm(ref), mm(est), data_range=1.0)) < 1e-4
    assert abs(ssim(est, ref, convention="dds")
               - structural_similarity(mm(ref), mm(est), win_size=7, data_range=1.0)) < 1e-4
    with pytest.raises(ValueError, match="constant"):
        psnr(est, np.ones_like(ref), convention="dds")
    with pytest.raises(ValueError, match="convention"):
        psnr(est, ref, convention="bogus")


def test_compute_metrics_per_slice():
    pairs = [_pair(s) for s in range(3)]
    est = torch.tensor(np.stack([p[0] for p in pairs]))
    ref = torch.tensor(np.stack([p[1] for p in pairs]))
    out = compute_metrics(est, ref)
    assert len(out["psnr"]) == len(out["ssim"]) == len(out["nmse"]) == 3
    for i, (e, r) in enumerate(pairs):
        assert abs(out["psnr"][i] - psnr(e, r)) < 1e-9
        assert abs(out["ssim"][i] - ssim(e, r)) < 1e-9
        assert abs(out["nmse"][i] - nmse(e, r)) < 1e-9
    single = compute_metrics(est[0], ref[0], convention="dds")
    assert abs(single["psnr"] - psnr(pairs[0][0], pairs[0][1], convention="dds")) < 1e-9
    assert single["convention"] == "dds"


def test_shape_errors():
    est, ref = _pair(0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(est[:-1], ref)
    with pytest.raises(ValueError, match="compute_metrics"):
        psnr(np.stack([est, est]), np.stack([ref, ref]))
    with pytest.raises(ValueError, match="NaN"):
        ssim(est * np.nan, ref)
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(torch.zeros(2, 8, 8), torch.zeros(3, 8, 8))
