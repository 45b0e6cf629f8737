"""train.py: a few steps of denoising score matching on tiny real-format data, export in the
loader's format, resume from the latest checkpoint, and the model-card figures."""
import json

import numpy as np
import pytest
import torch

import train as train_mod
from configs.train_prior import get_config
from models.priors import load_prior


def _tiny_config(tmp_path, modality):
    rng = np.random.default_rng(0)
    data = tmp_path / "train"
    data.mkdir()
    for i in range(4):
        img = rng.random((24, 24)).astype(np.float32)
        if modality == "mri":
            img = (img * np.exp(1j * rng.random((24, 24)))).astype(np.complex64)
        np.save(data / f"{i:03d}.npy", img)
    c = get_config(modality)
    c.model.image_size = 16          # 24² slices are area-resampled to 16²
    c.model.num_channels = 32
    c.model.channel_mult = (1, 1)
    c.model.attention_resolutions = "8"
    c.data.train_dir = str(data)
    c.data.heldout_dir = str(data)
    c.train.num_steps = 3
    c.train.batch_size = 2
    c.train.ckpt_every = 2
    c.train.log_every = 1
    c.train.progress = False
    c.export_path = str(tmp_path / f"prior_{modality}.pt")
    c.card_dir = str(tmp_path / "card")
    return c


@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_train_export_resume(tmp_path, modality):
    torch.set_num_threads(1)
    c = _tiny_config(tmp_path, modality)
    work = tmp_path / "work"
    report = train_mod.train(c, work)
    assert report["steps"] == 3
    assert np.isfinite(report["final_loss_mean_last_10pct"])
    # exported in the loader's format: load_prior by path rebuilds the same network
    den = load_prior(c.export_path)
    assert den.is_complex == (modality == "mri")
    x = torch.rand(2, 16, 16)
    if den.is_complex:
        x = torch.complex(x, torch.rand(2, 16, 16))
    st = torch.load(train_mod.latest_checkpoint(work), weights_only=False)
    ema = train_mod.create_adm_model(c.model.to_dict())
    ema.load_state_dict(st["ema"])
    from utils.complex import to_channels

    with torch.no_grad():
        ref = ema.eval()(to_channels(x), torch.full((2,), 10.0))
    assert torch.equal(to_channels(den.eps(x, 10)), ref)
    # figures and report of the model card
    for f in ("loss_curve.png", "samples.png", "denoising.png", "train_report.json"):
        assert (tmp_path / "card" / f).stat().st_size > 0
    # resume: the next run starts at step 3 and keeps the loss history
    c.train.num_steps = 4
    report2 = train_mod.train(c, work)
    assert report2["steps"] == 4
    st2 = torch.load(train_mod.latest_checkpoint(work), weights_only=False)
    assert st2["step"] == 4 and [s for s, _ in st2["losses"]][:3] == [1, 2, 3]
    assert json.loads((tmp_path / "card" / "train_report.json").read_text())["steps"] == 4


def test_missing_training_folder_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        train_mod.load_training_images(tmp_path / "nope", 16, False)


def test_wrong_dtype_is_explained(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="complex"):
        train_mod.load_training_images(tmp_path, 8, True)


# ----------------------------------------------------------------------------------------------
# augmentation
# ----------------------------------------------------------------------------------------------
NO_AUG = {"hflip": 0.0, "vflip": 0.0, "rotate_deg": 0.0, "zoom": (1.0, 1.0), "translate": 0.0,
          "geometric_prob": 1.0, "intensity": (1.0, 1.0)}


def _batch(is_complex, b=3, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 2 if is_complex else 1, n, n, generator=g)


def test_affine_warp_identity_rotation_and_shift():
    x = _batch(False)
    b = x.shape[0]
    same = train_mod.affine_warp(x, torch.zeros(b), torch.ones(b), torch.zeros(b, 2))
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)
    # 90° is an exact pixel permutation (counter-clockwise as displayed, row 0 on top)
    r = train_mod.affine_warp(x, torch.full((b,), 90.0), torch.ones(b), torch.zeros(b, 2))
    torch.testing.assert_close(r, torch.rot90(x, 1, (-2, -1)), atol=1e-5, rtol=0)
    # a shift of one pixel to the right; the uncovered column is 0
    s = train_mod.affine_warp(x, torch.zeros(b), torch.ones(b), torch.tensor([[1 / 20, 0.0]] * b))
    torch.testing.assert_close(s[..., 1:], x[..., :-1], atol=1e-5, rtol=0)
    assert float(s[..., 0].abs().max()) < 1e-5
    # zoom out by 2: a constant image covers the central quarter, the rest is 0
    z = train_mod.affine_warp(torch.ones(1, 1, 20, 20), torch.zeros(1), torch.full((1,), 0.5), torch.zeros(1, 2))
    assert float(z[0, 0, 5:15, 5:15].min()) > 0.99 and float(z[0, 0, :4].abs().max()) < 1e-6
    assert abs(float(z.mean()) - 0.25) < 0.03
    # zoom in by 2: the centre fills the image (the corner pixel comes from near the centre)
    ramp = torch.arange(20.0)[None, None, None, :].expand(1, 1, 20, 20)
    zi = train_mod.affine_warp(ramp, torch.zeros(1), torch.full((1,), 2.0), torch.zeros(1, 2))
    assert 4.5 < float(zi[0, 0, 0, 0]) < 5.5 and 13.5 < float(zi[0, 0, 0, -1]) < 14.5
    with pytest.raises(ValueError, match="zoom"):
        train_mod.affine_warp(x, torch.zeros(b), torch.zeros(b), torch.zeros(b, 2))


@pytest.mark.parametrize("is_complex", [False, True])
def test_augment_off_is_identity_up_to_global_phase(is_complex):
    x = _batch(is_complex)
    y = train_mod.augment(x.clone(), is_complex, torch.Generator().manual_seed(1), NO_AUG)
    assert y.shape == x.shape and y.dtype == x.dtype
    if not is_complex:
        torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    else:
        zx, zy = torch.complex(x[:, 0], x[:, 1]), torch.complex(y[:, 0], y[:, 1])
        torch.testing.assert_close(zy.abs(), zx.abs(), atol=1e-5, rtol=0)
        ratio = zy / zx                                       # one unit phase factor per image
        torch.testing.assert_close(ratio.abs(), torch.ones_like(ratio.abs()), atol=1e-4, rtol=0)
        spread = (ratio / ratio[:, :1, :1]).angle().abs().amax(dim=(1, 2))
        assert float(spread.max()) < 1e-3
        assert float(ratio[:, 0, 0].angle().std()) > 0.1     # the phases differ between images


def test_flip_twice_is_identity():
    x = _batch(False)
    for key in ("hflip", "vflip"):
        cfg = dict(NO_AUG, **{key: 1.0})
        once = train_mod.augment(x.clone(), False, torch.Generator().manual_seed(0), cfg)
        assert not torch.equal(once, x)
        torch.testing.assert_close(once, x.flip(-1 if key == "hflip" else -2))
        twice = train_mod.augment(once, False, torch.Generator().manual_seed(5), cfg)
        torch.testing.assert_close(twice, x)


def test_intensity_scaling_of_a_constant_image():
    x = torch.full((64, 1, 8, 8), 0.5)
    y = train_mod.augment(x, False, torch.Generator().manual_seed(0), dict(NO_AUG, intensity=(0.8, 1.2)))
    per_img = y.flatten(1)
    assert float((per_img.max(1).values - per_img.min(1).values).max()) < 1e-7   # still constant
    v = per_img[:, 0]
    assert float(v.min()) >= 0.4 - 1e-6 and float(v.max()) <= 0.6 + 1e-6 and float(v.std()) > 0.02
    # CT stays in the HU window's range [0, 1]
    hi = train_mod.augment(torch.full((4, 1, 8, 8), 0.95), False, torch.Generator().manual_seed(0),
                           dict(NO_AUG, intensity=(1.1, 1.2)))
    assert float(hi.max()) == 1.0 and float(hi.min()) == 1.0


@pytest.mark.parametrize("variant", ["ct_broad", "mri_broad"])
def test_augment_broad_config_shapes_and_seed(variant):
    c = get_config(variant)
    cplx = bool(c.is_complex)
    x = _batch(cplx, b=6, n=32)
    a = train_mod.augment(x, cplx, torch.Generator().manual_seed(3), c.augment.to_dict())
    b = train_mod.augment(x, cplx, torch.Generator().manual_seed(3), c.augment.to_dict())
    d = train_mod.augment(x, cplx, torch.Generator().manual_seed(4), c.augment.to_dict())
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, d)
    if not cplx:
        assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_augment_rejects_bad_config():
    x = _batch(False)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_mod.augment(x, False, g, {"shear": 0.1})
    with pytest.raises(ValueError, match="probability"):
        train_mod.augment(x, False, g, {"hflip": 1.5})
    with pytest.raises(ValueError, match="lo <= hi"):
        train_mod.augment(x, False, g, {"zoom": (1.2, 0.8)})


def test_default_augment_is_the_legacy_flip_only():
    """Without a config (the demo_*_64 recipe) only left-right flips happen."""
    x = _batch(False, b=16)
    y = train_mod.augment(x, False, torch.Generator().manual_seed(0))
    flipped = [torch.equal(yi, xi.flip(-1)) for xi, yi in zip(x, y)]
    kept = [torch.equal(yi, xi) for xi, yi in zip(x, y)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_train_with_augmentation_load_size_and_init_from(tmp_path):
    """Broad recipe on tiny data: 24² slices loaded at 24², augmented, resampled to 16²; a
    second run initialised from the first export with lr = 0 exports the same weights."""
    torch.set_num_threads(1)
    c = _tiny_config(tmp_path, "ct")
    c.augment = get_config("ct_broad").augment
    c.data.load_size = 24
    c.train.num_steps = 2
    report = train_mod.train(c, tmp_path / "work")
    assert report["steps"] == 2 and report["load_size"] == 24 and report["augment"]["rotate_deg"] > 0
    first = torch.load(c.export_path, weights_only=False)
    (tmp_path / "b").mkdir()
    c2 = _tiny_config(tmp_path / "b", "ct")
    c2.augment = c.augment
    c2.train.init_from = c.export_path
    c2.train.lr = 0.0
    c2.train.num_steps = 1
    train_mod.train(c2, tmp_path / "work2")
    second = torch.load(c2.export_path, weights_only=False)
    assert second["extra"]["init_from"] == c.export_path
    for k, v in first["state_dict"].items():
        torch.testing.assert_close(second["state_dict"][k], v, atol=1e-6, rtol=0)
    c2.data.load_size = 8
    with pytest.raises(ValueError, match="load_size"):
        train_mod.train(c2, tmp_path / "work3")
