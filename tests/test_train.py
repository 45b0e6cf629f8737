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
