"""Checkpoint save/load of ADM models: round trip, wrapped formats, and the error messages."""
from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

from models.priors import PRIORS, get_prior_config, list_priors, model_kwargs
from models.checkpoint import (CheckpointMismatchError, CorruptCheckpointError, build_adm_model,
                               candidate_paths, load_adm_checkpoint, load_state_dict_file,
                               save_adm_checkpoint)

TINY = {
    "image_size": 32, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1,
    "channel_mult": (1, 2), "learn_sigma": True, "attention_resolutions": "16", "num_heads": 2,
    "num_head_channels": -1, "num_heads_upsample": -1, "use_scale_shift_norm": True,
    "dropout": 0.0, "resblock_updown": True, "use_fp16": False, "use_new_attention_order": False,
}


def _demo(is_complex: bool) -> str:
    """Name of the small shipped prior of each kind (the registry's demo entries)."""
    names = [n for n in list_priors() if PRIORS[n].num_params is None
             and bool(PRIORS[n].is_complex) == is_complex]
    if not names:
        pytest.skip("no small demo prior of this kind in the prior registry")
    return names[0]


def _tiny(seed=0, **over):
    torch.manual_seed(seed)
    cfg = dict(TINY, **over)
    model = build_adm_model(cfg)
    with torch.no_grad():  # zero-initialised output layers would make every output 0
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), cfg


def _inputs(cfg, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg["in_channels"], cfg["image_size"], cfg["image_size"], generator=g)
    return x, torch.tensor([17.0, 503.0])


def _out(model, cfg):
    x, t = _inputs(cfg)
    with torch.no_grad():
        return model(x, t)


# --------------------------------------------------------------------------- round trip
def test_save_load_round_trip(tmp_path):
    model, cfg = _tiny()
    ref = _out(model, cfg)
    assert ref.abs().max() > 0
    path = save_adm_checkpoint(tmp_path / "sub" / "tiny.pt", model, cfg, extra={"step": 7})
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["tiny.pt"]  # no temp file left behind
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"config", "state_dict", "extra"} and raw["extra"]["step"] == 7
    for cfg_arg in (None, cfg):  # config from the file, or given
        loaded = load_adm_checkpoint(path, cfg_arg)
        assert not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        assert torch.equal(_out(loaded, cfg), ref)
    # dtype argument
    loaded64 = load_adm_checkpoint(path, cfg, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in loaded64.parameters())
    # overwriting an existing file works (os.replace)
    other, _ = _tiny(seed=3)
    save_adm_checkpoint(path, other, cfg)
    assert torch.equal(_out(load_adm_checkpoint(path), cfg), _out(other, cfg))


def test_ema_preferred(tmp_path):
    model, cfg = _tiny()
    ema_model, _ = _tiny(seed=5)
    path = save_adm_checkpoint(tmp_path / "ema.pt", model, cfg, ema_state=ema_model.state_dict())
    assert torch.equal(_out(load_adm_checkpoint(path), cfg), _out(ema_model, cfg))
    raw_sd = load_state_dict_file(path, prefer_ema=False)
    for k, v in model.state_dict().items():
        assert torch.equal(raw_sd[k], v)


@pytest.mark.parametrize("wrap", ["bare", "model", "state_dict", "ema", "module.",
                                  "state_dict+module.", "nested"])
def test_wrapped_formats(tmp_path, wrap):
    model, cfg = _tiny()
    sd = model.state_dict()
    prefixed = OrderedDict(("module." + k, v) for k, v in sd.items())
    obj = {
        "bare": sd,
        "model": {"model": sd, "step": 10},
        "state_dict": {"state_dict": sd, "optimizer": {"lr": 1e-4}},
        "ema": {"ema": sd, "model": OrderedDict((k, torch.zeros_like(v)) for k, v in sd.items())},
        "module.": prefixed,
        "state_dict+module.": {"state_dict": prefixed},
        "nested": {"model": {"state_dict": prefixed}},
    }[wrap]
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    loaded_sd = load_state_dict_file(path)
    assert list(loaded_sd) == list(sd)
    assert all(torch.equal(loaded_sd[k], sd[k]) for k in sd)
    assert torch.equal(_out(load_adm_checkpoint(path, cfg), cfg), _out(model, cfg))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,size", [("AAPM256_1M.pt", "1.5 GB"),
                                       ("fastmri_knee_320_complex_1m.pt", "1.4 GB")])
def test_missing_file_message(tmp_path, name, size):
    with pytest.raises(FileNotFoundError) as info:
        load_adm_checkpoint(tmp_path / name, get_prior_config(name))
    msg = str(info.value)
    assert name in msg
    assert size in msg
    assert "--ckpt=" in msg
    assert "checkpoints/" in msg
    assert "Pretrained diffusion priors" in msg
    assert "fastmri_brain_320_complex_1m.pth" in msg and ".pth" in msg
    assert str(tmp_path / name) in msg


def test_sibling_names(tmp_path):
    assert tmp_path / "fastmri_brain_320_complex_1m.pth" in candidate_paths(
        tmp_path / "fastmri_knee_320_complex_1m.pt")
    assert tmp_path / "AAPM256_1M.pth" in candidate_paths(tmp_path / "AAPM256_1M.pt")
    model, cfg = _tiny()
    torch.save(model.state_dict(), tmp_path / "fastmri_brain_320_complex_1m.pth")
    with pytest.warns(UserWarning, match="fastmri_brain_320_complex_1m.pth"):
        loaded = load_adm_checkpoint(tmp_path / "fastmri_knee_320_complex_1m.pt", cfg)
    assert torch.equal(_out(loaded, cfg), _out(model, cfg))


def test_wrong_keys_message(tmp_path):
    model, cfg = _tiny()
    path = save_adm_checkpoint(tmp_path / "tiny.pt", model, cfg)
    # different architecture: 2 res blocks per level → missing keys
    with pytest.raises(CheckpointMismatchError) as info:
        load_adm_checkpoint(path, dict(cfg, num_res_blocks=2))
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "missing keys" in msg and re.search(r"input_blocks\.\d+\.0\.", msg)
    # renamed key → listed as unexpected and missing
    sd = model.state_dict()
    sd["bogus.weight"] = sd.pop("out.2.weight")
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(RuntimeError) as info:
        load_adm_checkpoint(tmp_path / "bad.pt", cfg)
    msg = str(info.value)
    assert "bogus.weight" in msg and "out.2.weight" in msg
    # wider network → shape mismatches with both shapes
    with pytest.raises(CheckpointMismatchError) as info:
        load_adm_checkpoint(path, dict(cfg, num_channels=64))
    msg = str(info.value)
    assert "shape mismatches" in msg and "(32, 1, 3, 3)" in msg and "(64, 1, 3, 3)" in msg


def test_wrong_config_hint_names_matching_prior(tmp_path):
    """A demo CT checkpoint loaded with the MRI config: the error says which config fits."""
    ct_name, mri_name = _demo(False), _demo(True)
    ct = get_prior_config(ct_name)
    model = build_adm_model(ct)
    path = save_adm_checkpoint(tmp_path / "some_prior.pt", model, model_kwargs(ct))
    with pytest.raises(CheckpointMismatchError) as info:
        load_adm_checkpoint(path, get_prior_config(mri_name))
    msg = str(info.value)
    assert "input_blocks.0.0.weight" in msg
    assert f"'{ct_name}'" in msg and "exactly" in msg


#: Seeds of 4096 random bytes whose torch.load fails with UnpicklingError (0), IndexError (17),
#: UnicodeDecodeError (54) and KeyError (62) (torch 2.13; an unseeded os.urandom made this flaky).
GARBAGE_SEEDS = (0, 17, 54, 62)


@pytest.mark.parametrize("damage", ["half", "empty"] + [f"garbage{s}" for s in GARBAGE_SEEDS])
def test_truncated_file_message(tmp_path, damage):
    model, cfg = _tiny()
    good = save_adm_checkpoint(tmp_path / "good.pt", model, cfg)
    data = good.read_bytes()
    bad = tmp_path / "AAPM256_1M.pt"
    if damage.startswith("garbage"):
        content = np.random.default_rng(int(damage[len("garbage"):])).bytes(4096)
    else:
        content = {"half": data[: len(data) // 2], "empty": b""}[damage]
    bad.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        load_adm_checkpoint(bad, cfg)
    msg = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "incomplete" in msg and "re-download" in msg.lower()
    assert f"{bad.stat().st_size:,} bytes" in msg
    assert "1.5 GB" in msg  # expected size of the named release
    with pytest.raises(CorruptCheckpointError):
        load_state_dict_file(bad)


# --------------------------------------------------------------------------- load_prior
@pytest.mark.parametrize("is_complex", [False, True])
def test_load_prior_from_name_and_path(tmp_path, is_complex):
    from models.denoiser import Denoiser
    from models.priors import load_prior

    name = _demo(is_complex)
    prior = get_prior_config(name)
    torch.manual_seed(0)
    unet = build_adm_model(prior)
    path = save_adm_checkpoint(tmp_path / f"{name}.pt", unet, prior)
    g = torch.Generator().manual_seed(0)
    n = prior.model.image_size
    x = torch.rand(1, n, n, generator=g)
    if prior.is_complex:
        x = torch.complex(x, torch.rand(1, n, n, generator=g))
    for den in (load_prior(name, ckpt=path), load_prior(path)):
        assert isinstance(den, Denoiser)
        assert den.is_complex == prior.is_complex and den.learn_sigma == prior.model.learn_sigma
        assert not any(p.requires_grad for p in den.parameters())
        with torch.no_grad():
            out = den(x, 300)
        assert out.shape == x.shape and out.dtype == x.dtype
        # the Denoiser calls the UNet exactly as documented (channels, raw float t)
        with torch.no_grad():
            eps_direct = unet.eval()(torch.view_as_real(x).permute(0, 3, 1, 2)
                                     if prior.is_complex else x[:, None],
                                     torch.tensor([300.0]))[:, : den.channels]
        eps = den.eps(x, 300)
        eps_ch = torch.view_as_real(eps).permute(0, 3, 1, 2) if prior.is_complex else eps[:, None]
        torch.testing.assert_close(eps_ch, eps_direct)
