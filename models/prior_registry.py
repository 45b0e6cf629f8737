"""The registry of known diffusion priors (ADM / guided-diffusion ``UNetModel``).

A leaf module (imports ``ml_collections`` only), so that ``models/checkpoint.py`` can name the
known priors in its errors; :mod:`models.priors` is the public face (``load_prior`` + this API).

Every entry of :data:`PRIORS` is an ``ml_collections.ConfigDict`` with

* ``name``             – registry name;
* ``model``            – the guided-diffusion ``create_model``-style arguments understood by
  :func:`models.adm_unet.create_adm_model` (``image_size``, ``num_channels``, ``num_res_blocks``,
  ``channel_mult`` (tuple), ``learn_sigma``, ``attention_resolutions`` (string of resolutions),
  ``num_heads``, ``num_head_channels``, ``num_heads_upsample``, ``use_scale_shift_norm``,
  ``dropout``, ``resblock_updown``, ``use_fp16``, ``use_new_attention_order``, ``in_channels``,
  ``out_channels``);
* ``schedule``         – β schedule (linear 1e-4 → 0.02 over 1000 steps, as DDS);
* ``is_complex``       – MRI priors see complex ``[B,H,W]`` images as 2 channels (real, imag);
* ``learn_sigma``      – the network outputs 2·C channels, ε = the first C;
* ``data_scale``       – how images must be scaled before being fed to the prior;
* ``checkpoint``       – default checkpoint path (relative to the repository root);
* ``alt_names``        – other names under which the same file circulates;
* ``num_params`` / ``num_tensors`` – of the released checkpoints and of the ``broad_*_64``
  priors (``None`` for the first demo priors); a float32 checkpoint is ≈ ``4·num_params`` bytes.

The released DDS checkpoints (``AAPM256_1M``, ``fastmri_knee_320_complex_1m``) were verified
against the manifests of the released files (see ``tests/test_adm_reference.py``).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import ml_collections

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The ``create_model``-style keys handed to ``create_adm_model`` (everything else in a config,
#: e.g. ``channel_mult_str``/``attention_ds``/``time_embed_dim`` in the reference files, is
#: informative only).
MODEL_KEYS = (
    "image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma",
    "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
    "use_scale_shift_norm", "dropout", "resblock_updown", "use_fp16", "use_new_attention_order",
    "in_channels", "out_channels", "conv_resample", "dims", "class_cond", "num_classes",
    "use_checkpoint",
)

DEFAULT_SCHEDULE = {"beta_start": 1e-4, "beta_end": 0.02, "num_steps": 1000}

README_SECTION = "Pretrained diffusion priors"


def _adm(image_size, in_channels, learn_sigma, num_channels, num_res_blocks, channel_mult,
         attention_resolutions="16", num_heads=4, num_head_channels=-1):
    return {
        "image_size": image_size,
        "in_channels": in_channels,
        "out_channels": in_channels * (2 if learn_sigma else 1),
        "num_channels": num_channels,
        "num_res_blocks": num_res_blocks,
        "channel_mult": tuple(channel_mult),
        "learn_sigma": learn_sigma,
        "attention_resolutions": attention_resolutions,
        "num_heads": num_heads,
        "num_head_channels": num_head_channels,
        "num_heads_upsample": -1,
        "use_scale_shift_norm": True,
        "dropout": 0.0,
        "resblock_updown": True,
        "use_fp16": False,
        "use_new_attention_order": False,
        "class_cond": False,
        "use_checkpoint": False,
        "conv_resample": True,
        "dims": 2,
    }


_CT_SCALE = ("CT slices in [0, 1] (HU window, DDS AAPM data: about [0.08, 1]); fed to the "
             "network as is, 1 channel.")
_MRI_SCALE = ("MRI complex image normalised so that the magnitude is about <= 1 (DDS fastMRI "
              "convention); fed as 2 channels (real, imag), no further rescaling.")

_RAW = {
    "AAPM256_1M": {
        "model": _adm(256, 1, True, 256, 1, (1, 1, 2, 2, 4, 4), "16", 4, 64),
        "is_complex": False,
        "data_scale": _CT_SCALE,
        "checkpoint": "checkpoints/AAPM256_1M.pt",
        "alt_names": ["AAPM256_1M.pth"],
        "num_params": 374_022_658,
        "num_tensors": 362,
        "description": "DDS AAPM 256x256 CT prior (released, 1M iterations).",
    },
    "fastmri_knee_320_complex_1m": {
        "model": _adm(320, 2, True, 256, 1, (1, 1, 2, 2, 4, 4), "16", 4, 64),
        "is_complex": True,
        "data_scale": _MRI_SCALE,
        "checkpoint": "checkpoints/fastmri_knee_320_complex_1m.pt",
        "alt_names": ["fastmri_knee_320_complex_1m.pth", "fastmri_brain_320_complex_1m.pth",
                      "fastmri_brain_320_complex_1m.pt"],
        "num_params": 361_428_228,
        "num_tensors": 344,
        "description": ("DDS fastMRI 320x320 complex prior (released, 1M iterations; the DDS "
                        "README calls it fastmri_brain_320_complex_1m.pth, same file). "
                        "320//16 = 20 is not a down-sampling factor: only the middle block "
                        "has attention."),
    },
    # The broad_* entries come before demo_*: they have the same network, and the checkpoint
    # loader's "which config fits" hint names the last exactly matching entry (the demo prior).
    "broad_ct_64": {
        "model": _adm(64, 1, False, 32, 1, (1, 2, 2, 2), "16", 4, -1),
        "is_complex": False,
        "data_scale": _CT_SCALE,
        "checkpoint": "models/priors/broad_ct_64.pt",
        "alt_names": [],
        "num_params": 1_913_569,
        "num_tensors": 252,
        "description": ("Small CPU-trained CT prior (64x64, same network as demo_ct_64), trained "
                        "with geometric/intensity augmentation and region-level hold-outs "
                        "(models/priors/README.md)."),
    },
    "broad_mri_64": {
        "model": _adm(64, 2, False, 32, 1, (1, 2, 2, 2), "16", 4, -1),
        "is_complex": True,
        "data_scale": _MRI_SCALE,
        "checkpoint": "models/priors/broad_mri_64.pt",
        "alt_names": [],
        "num_params": 1_914_146,
        "num_tensors": 252,
        "description": ("Small CPU-trained complex MRI prior (64x64, same network as demo_mri_64), "
                        "trained on more subjects/templates with augmentation "
                        "(models/priors/README.md)."),
    },
    "demo_ct_64": {
        "model": _adm(64, 1, False, 32, 1, (1, 2, 2, 2), "16", 4, -1),
        "is_complex": False,
        "data_scale": _CT_SCALE,
        "checkpoint": "models/priors/demo_ct_64.pt",
        "alt_names": [],
        "num_params": None,
        "num_tensors": None,
        "description": "Small CPU-trained CT prior shipped with the repository (64x64).",
    },
    "demo_mri_64": {
        "model": _adm(64, 2, False, 32, 1, (1, 2, 2, 2), "16", 4, -1),
        "is_complex": True,
        "data_scale": _MRI_SCALE,
        "checkpoint": "models/priors/demo_mri_64.pt",
        "alt_names": [],
        "num_params": None,
        "num_tensors": None,
        "description": "Small CPU-trained complex MRI prior shipped with the repository (64x64).",
    },
}

#: Aliases accepted by :func:`get_prior_config`.
ALIASES = {
    "AAPM256": "AAPM256_1M",
    "aapm256": "AAPM256_1M",
    "ct": "AAPM256_1M",
    "fastmri_knee_320_complex": "fastmri_knee_320_complex_1m",
    "fastmri_brain_320_complex_1m": "fastmri_knee_320_complex_1m",
    "fastmri": "fastmri_knee_320_complex_1m",
    "mri": "fastmri_knee_320_complex_1m",
}


def _build(name: str) -> ml_collections.ConfigDict:
    raw = copy.deepcopy(_RAW[name])
    cfg = ml_collections.ConfigDict()
    cfg.name = name
    cfg.model = ml_collections.ConfigDict(raw.pop("model"))
    cfg.schedule = ml_collections.ConfigDict(dict(DEFAULT_SCHEDULE))
    cfg.learn_sigma = cfg.model.learn_sigma
    for k, v in raw.items():
        cfg[k] = v
    return cfg


PRIORS = {name: _build(name) for name in _RAW}


def list_priors() -> list[str]:
    return list(PRIORS)


def get_prior_config(name: str) -> ml_collections.ConfigDict:
    """A (deep) copy of the prior config ``name`` (aliases and the ``.pt``/``.pth`` file names
    are accepted). Unknown name → ``KeyError`` listing the valid names."""
    key = Path(str(name)).name
    for suffix in (".pt", ".pth"):
        if key.endswith(suffix):
            key = key[: -len(suffix)]
    key = ALIASES.get(key, key)
    if key not in PRIORS:
        raise KeyError(f"unknown diffusion prior {name!r}; known priors: {', '.join(PRIORS)} "
                       f"(aliases: {', '.join(ALIASES)})")
    return copy.deepcopy(PRIORS[key])


def prior_for_file(path: str | Path) -> ml_collections.ConfigDict | None:
    """The prior config whose file name matches ``path`` (its name, an alias, its default
    checkpoint file or one of its ``alt_names``), or ``None``."""
    name = Path(path).name
    try:
        return get_prior_config(name)
    except KeyError:
        pass
    for key, cfg in PRIORS.items():
        if name in {Path(cfg.checkpoint).name, *list(cfg.alt_names)}:
            return get_prior_config(key)
    return None


def model_kwargs(cfg: Any) -> dict:
    """Normalise a model config (dict, ConfigDict, a full prior entry with ``.model``, or a
    reference-file ``config``) into the plain dict handed to ``create_adm_model``: only
    :data:`MODEL_KEYS`, ``channel_mult`` as a tuple (or the guided-diffusion string form)."""
    if isinstance(cfg, ml_collections.ConfigDict):
        cfg = cfg.to_dict()
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a model config mapping, got {type(cfg).__name__}")
    if "model" in cfg and isinstance(cfg["model"], (Mapping, ml_collections.ConfigDict)):
        return model_kwargs(cfg["model"])
    out = {k: cfg[k] for k in MODEL_KEYS if k in cfg}
    cm = out.get("channel_mult", "")
    if isinstance(cm, (list, tuple)):
        out["channel_mult"] = tuple(int(c) for c in cm) if len(cm) else cfg.get("channel_mult_str", "")
    if "image_size" not in out:
        raise ValueError(f"model config lacks image_size: {sorted(cfg)}")
    return out


def expected_checkpoint_bytes(name: str) -> int | None:
    """Approximate size of a float32 checkpoint (4 bytes per parameter), if known."""
    n = get_prior_config(name).num_params
    return None if n is None else 4 * int(n)
