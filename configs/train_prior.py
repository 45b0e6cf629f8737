"""Training configs for the small shipped diffusion priors (``train.py``).

``--config=configs/train_prior.py:ct`` or ``:mri``.  The model hyper-parameters are those of the
registry entries ``demo_ct_64`` / ``demo_mri_64`` in ``models/prior_registry.py`` (one source of truth);
everything here is our choice (sized to train on 2 CPU cores in under an hour), not the paper's.
"""
import ml_collections

from models.priors import get_prior_config


def get_config(modality: str = "ct"):
    modality = modality.lower()
    if modality not in ("ct", "mri"):
        raise ValueError(f"modality must be 'ct' or 'mri', got {modality!r}")
    name = f"demo_{modality}_64"
    prior = get_prior_config(name)
    folder = "CT" if modality == "ct" else "MRI"
    c = ml_collections.ConfigDict()
    c.prior_name = name
    c.seed = 0
    c.is_complex = prior.is_complex
    c.model = prior.model
    c.schedule = prior.schedule
    c.export_path = prior.checkpoint
    c.card_dir = f"models/priors/{name}_card"

    c.data = ml_collections.ConfigDict()
    c.data.train_dir = f"data/train/{folder}"          # utils/prepare_data.py output
    c.data.heldout_dir = "data/heldout/CT/cranium" if modality == "ct" else "data/heldout/MRI/colin27/slice"
    c.data.phantom_fraction = 0.0                      # share of random-ellipse phantoms per batch

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 2500
    c.train.batch_size = 16
    c.train.lr = 5e-4
    c.train.warmup = 100
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.995
    c.train.log_every = 10
    c.train.ckpt_every = 250
    c.train.progress = True
    return c
