"""``models/adm_unet.py`` against the reference guided-diffusion implementation.

(a) The released DDS checkpoints' manifests (key, order, shape, dtype, counts) are reproduced
    exactly by ``create_adm_model`` from the manifest config and from ``configs/priors.py``
    (built on the ``meta`` device: no memory).
(b) Two tiny reference models (32×32, perturbed random weights stored in float16, the reference
    output computed from exactly those values) load strictly and reproduce the reference forward
    pass ``model.eval()(x, t)`` in float32.

The reference files live in ``tests/data/`` (``tests/data/README.md`` says what each holds).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from configs.priors import get_prior_config, model_kwargs

REF = Path(__file__).resolve().parent / "data"
REFERENCE_MODELS = ["adm_tiny_ct.pt", "adm_tiny_mri.pt"]
MANIFESTS = {
    "manifest_AAPM256.json": "AAPM256_1M",
    "manifest_fastmri_knee_320_complex.json": "fastmri_knee_320_complex_1m",
}


def _create(cfg, device=None):
    from models.adm_unet import create_adm_model

    if device is None:
        return create_adm_model(model_kwargs(cfg))
    with torch.device(device):
        return create_adm_model(model_kwargs(cfg))


def _load_manifest(name):
    return json.loads((REF / name).read_text())


def _compare_to_manifest(model, man):
    sd = model.state_dict()
    keys = list(sd)
    ref_keys = [k for k, _, _ in man["state_dict"]]
    missing = [k for k in ref_keys if k not in sd]
    extra = [k for k in keys if k not in set(ref_keys)]
    assert not missing and not extra, f"missing {missing[:5]}, unexpected {extra[:5]}"
    assert keys == ref_keys, "same keys but different state_dict order"
    for k, shape, dtype in man["state_dict"]:
        assert list(sd[k].shape) == list(shape), f"{k}: {list(sd[k].shape)} vs {shape}"
        assert str(sd[k].dtype).replace("torch.", "") == dtype, f"{k}: {sd[k].dtype} vs {dtype}"
    assert len(sd) == man["num_tensors"]
    assert sum(v.numel() for v in sd.values()) == man["num_params"]
    assert sum(p.numel() for p in model.parameters()) == man["num_params"]


@pytest.mark.parametrize("manifest", list(MANIFESTS))
def test_manifest_from_manifest_config(manifest):
    man = _load_manifest(manifest)
    model = _create(man["config"], device="meta")
    _compare_to_manifest(model, man)


@pytest.mark.parametrize("manifest", list(MANIFESTS))
def test_manifest_from_prior_registry(manifest):
    """configs/priors.py holds the same architecture (and param counts) as the manifests."""
    man = _load_manifest(manifest)
    prior = get_prior_config(MANIFESTS[manifest])
    assert prior.num_params == man["num_params"] and prior.num_tensors == man["num_tensors"]
    kw = model_kwargs(prior)
    for k, v in model_kwargs(man["config"]).items():
        assert kw[k] == v, f"{k}: registry {kw[k]!r} vs manifest {v!r}"
    _compare_to_manifest(_create(prior, device="meta"), man)


def test_attention_placement_aapm_vs_knee():
    """320//16 = 20 is no down-sampling factor: the knee model only attends in the middle."""
    aapm = {k.rsplit(".qkv", 1)[0] for k in _create(get_prior_config("AAPM256_1M"), "meta")
            .state_dict() if k.endswith("qkv.weight")}
    knee = {k.rsplit(".qkv", 1)[0] for k in _create(get_prior_config("fastmri_knee_320_complex_1m"),
                                                     "meta").state_dict() if k.endswith("qkv.weight")}
    assert aapm == {"input_blocks.9.1", "middle_block.1", "output_blocks.2.1", "output_blocks.3.1"}
    assert knee == {"middle_block.1"}


@pytest.mark.parametrize("fname", REFERENCE_MODELS)
def test_tiny_reference_forward(fname):
    ref = torch.load(REF / fname, map_location="cpu", weights_only=True)
    model = _create(ref["config"])
    sd = model.state_dict()
    assert list(sd) == list(ref["state_dict"]), "state_dict key order differs from the reference"
    model.load_state_dict(ref["state_dict"], strict=True)
    model.eval()
    with torch.no_grad():
        out = model(ref["x"].float(), ref["t"].float())
    exp = ref["expected"]
    assert out.shape == exp.shape and out.dtype == torch.float32
    rel = (torch.linalg.vector_norm(out - exp) / torch.linalg.vector_norm(exp)).item()
    assert rel <= 1e-5, f"relative L2 error {rel:.3e}"
    torch.testing.assert_close(out, exp, rtol=1e-4, atol=1e-4)
    # sanity: the reference output depends on t (a broken time embedding would not)
    with torch.no_grad():
        out_t = model(ref["x"].float(), ref["t"].float() + 100)
    assert (torch.linalg.vector_norm(out_t - exp) / torch.linalg.vector_norm(exp)).item() > 1e-3


@pytest.mark.parametrize("fname", REFERENCE_MODELS)
def test_tiny_reference_via_checkpoint_loader(fname, tmp_path):
    """The reference file (config + state_dict + extra keys) loads through
    ``load_adm_checkpoint`` and the loaded model reproduces the reference output."""
    from models.checkpoint import load_adm_checkpoint

    path = REF / fname
    ref = torch.load(path, map_location="cpu", weights_only=True)
    model = load_adm_checkpoint(path, ref["config"])
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        out = model(ref["x"], ref["t"])
    torch.testing.assert_close(out, ref["expected"], rtol=1e-4, atol=1e-4)
