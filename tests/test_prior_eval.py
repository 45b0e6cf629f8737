"""utils/prior_eval.py: the Tweedie PSNR of the model card, on analytic stand-in priors and on
a tiny exported ADM prior."""
import json
import math

import numpy as np
import pytest
import torch

from models.diffusion import DiffusionSchedule
from utils import prior_eval


class ZeroEps:
    """ε̂ = 0: x̂₀ = x_t / √ᾱ_t, so x̂₀ − x₀ = √((1−ᾱ_t)/ᾱ_t) ε exactly (known PSNR)."""

    def __init__(self, is_complex):
        self.is_complex = is_complex
        self.schedule = DiffusionSchedule()

    def __call__(self, x_t, t):
        return self.schedule.tweedie_x0(x_t, torch.zeros_like(x_t), t)


@pytest.mark.parametrize("is_complex", [False, True])
def test_tweedie_psnr_matches_the_analytic_value(is_complex):
    den = ZeroEps(is_complex)
    x = torch.rand(48, 48, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    x[0, 0] = 1.0
    if is_complex:
        x = torch.polar(x, torch.rand(48, 48, generator=torch.Generator().manual_seed(1)))
    ts = (25, 300)
    out = prior_eval.tweedie_psnr(den, [x, x], ts, seed=0, num_noise=4)
    assert set(out) == set(ts) and all(len(v) == 2 for v in out.values())
    for t in ts:
        a = float(den.schedule.alpha_bar(t, x.real if is_complex else x))
        var = (1 - a) / a * (2 if is_complex else 1)    # complex noise: unit variance per part
        expected = 10 * math.log10(1.0 / var)
        assert abs(np.mean(out[t]) - expected) < 0.1, (t, out[t], expected)
    assert out[25][0] > out[300][0] + 10
    # same seed -> the same noise -> identical numbers; another seed -> different numbers
    assert prior_eval.tweedie_psnr(den, [x], ts, seed=0, num_noise=4)[25][0] == out[25][0]
    assert prior_eval.tweedie_psnr(den, [x], ts, seed=1, num_noise=4)[25][0] != out[25][0]


def test_tweedie_psnr_rejects_bad_input():
    den = ZeroEps(True)
    with pytest.raises(ValueError, match="complex"):
        prior_eval.tweedie_psnr(den, [torch.rand(8, 8)], (10,))
    with pytest.raises(ValueError, match="outside"):
        prior_eval.tweedie_psnr(den, [torch.rand(8, 8) + 0j], (1000,))
    with pytest.raises(ValueError, match="no images"):
        prior_eval.tweedie_psnr(den, [], (10,))


def test_evaluate_and_plot_with_a_tiny_exported_prior(tmp_path):
    """Export a tiny random ADM prior, evaluate it on a 2-volume DDS folder, write JSON + PNG."""
    from configs.train_prior import get_config
    from models.adm_unet import create_adm_model
    from models.checkpoint import save_adm_checkpoint

    torch.manual_seed(0)
    c = get_config("ct")
    c.model.image_size, c.model.channel_mult, c.model.attention_resolutions = 16, (1, 1), "8"
    path = save_adm_checkpoint(tmp_path / "tiny.pt", create_adm_model(c.model.to_dict()), c.model.to_dict(),
                               extra={"is_complex": False})
    rng = np.random.default_rng(0)
    for vol in ("a", "b"):
        (tmp_path / "dds" / "CT" / vol).mkdir(parents=True)
        for k in range(2):
            np.save(tmp_path / "dds" / "CT" / vol / f"{k:03d}.npy", rng.random((16, 16)).astype(np.float32))
    out = tmp_path / "card" / "tweedie.json"
    prior_eval.main(["--modality=CT", f"--priors={path}", f"--sets={tmp_path / 'dds'}", "--ts=10,200",
                     "--num_noise=1", f"--out={out}", f"--plot={tmp_path / 'card' / 'tweedie.png'}"])
    rep = json.loads(out.read_text())
    r = rep["results"][str(path)][str(tmp_path / "dds")]
    assert rep["ts"] == [10, 200] and set(r["volumes"]) == {"a", "b"} and len(r["slices"]) == 4
    assert all(math.isfinite(v) for v in r["mean"].values())
    assert r["mean"]["10"] == pytest.approx(np.mean([s["10"] for s in r["slices"].values()]))
    assert (tmp_path / "card" / "tweedie.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        prior_eval.main(["--modality=CT", f"--priors={path}", "--ts=a,b"])
    with pytest.raises(SystemExit, match="ZOOM"):
        prior_eval.main(["--modality=CT", f"--priors={path}", "--warp=0,10"])
    warped = prior_eval.evaluate([path], [tmp_path / "dds"], "CT", ts=(10,), num_noise=1, warp=(0.8, 10.0))
    assert warped["warp"] == {"zoom": 0.8, "angle_deg": 10.0}
    assert warped["results"][str(path)][str(tmp_path / "dds")]["mean"]["10"] != r["mean"]["10"]


def test_warp_slice():
    x = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(prior_eval.warp_slice(x, 1.0, 0.0), x, atol=1e-6, rtol=0)
    z = torch.polar(x, torch.full((16, 16), 0.7))
    w = prior_eval.warp_slice(z, 1.0, 90.0)
    assert w.dtype == z.dtype
    torch.testing.assert_close(w, torch.rot90(z, 1, (0, 1)), atol=1e-5, rtol=0)
    small = prior_eval.warp_slice(torch.ones(16, 16), 0.5, 0.0)
    assert float(small[0].max()) == 0.0 and float(small[8, 8]) == 1.0
