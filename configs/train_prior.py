"""Training configs for the small shipped diffusion priors (``train.py``).

``--config=configs/train_prior.py:<variant>`` with ``<variant>`` one of

* ``ct`` / ``mri`` — the recipe of ``demo_ct_64`` / ``demo_mri_64`` (one subject per modality,
  ``data/train/<CT|MRI>``, left-right flips only; the MRI prior also gets a random global phase);
* ``ct_broad`` / ``mri_broad`` — ``broad_ct_64`` / ``broad_mri_64``: the same network, trained
  on ``data/train_broad/<CT|MRI>`` (more sources, subject/region-level hold-outs, see
  ``utils/prepare_data.py``) with geometric and intensity augmentation (``augment`` below).

The model hyper-parameters are those of the registry entries in ``models/prior_registry.py`` (one
source of truth); everything here is our choice (sized to train on one CPU core in about an
hour), not the paper's.

Fields
------
``data.train_dir``        folder of ``*.npy`` training slices (CT float [0, 1], MRI complex).
``data.heldout_dir``      held-out slices for the denoising figure of the model card.
``data.load_size``        slices are area-resampled to this size when loaded, augmented at this
                          size and area-resampled to the model's ``image_size`` afterwards
                          (0 = ``image_size``; 128 keeps detail when zooming in).
``data.phantom_fraction`` share of random-ellipse phantoms per batch.
``augment.hflip`` / ``augment.vflip``   probability of a left-right / up-down flip per image.
``augment.rotate_deg``    rotation ~ U(-rotate_deg, rotate_deg) degrees about the image centre.
``augment.zoom``          (min, max) magnification, log-uniform: > 1 zooms in (smaller field
                          of view), < 1 zooms out (the border is filled with 0 = air).
``augment.translate``     shift ~ U(-translate, translate) of the image side per axis.
``augment.geometric_prob`` probability that an image gets the rotation/zoom/shift warp at all.
``augment.intensity``     (min, max) of a uniform intensity factor (CT is clipped to [0, 1]).
                          Complex (MRI) images always get a random global phase e^{iφ}.
``train.init_from``       exported prior (``.pt``) whose EMA weights initialise the model and
                          its EMA when ``--workdir`` holds no checkpoint ("" = random init).
``train.*``               steps, batch, AdamW lr / warm-up / weight decay, gradient clipping,
                          EMA decay, logging and checkpoint intervals, progress bar.
"""
import ml_collections

from models.prior_registry import get_prior_config

VARIANTS = {
    "ct": ("demo_ct_64", "CT", "data/train/CT", "data/heldout/CT/cranium"),
    "mri": ("demo_mri_64", "MRI", "data/train/MRI", "data/heldout/MRI/colin27/slice"),
    "ct_broad": ("broad_ct_64", "CT", "data/train_broad/CT", "data/heldout/CT/cranium"),
    "mri_broad": ("broad_mri_64", "MRI", "data/train_broad/MRI", "data/heldout/MRI/colin27/slice"),
}


def get_config(variant: str = "ct"):
    variant = variant.lower()
    if variant not in VARIANTS:
        raise ValueError(f"training config must be one of {', '.join(VARIANTS)}, got {variant!r}")
    name, modality, train_dir, heldout_dir = VARIANTS[variant]
    broad = variant.endswith("_broad")
    prior = get_prior_config(name)
    c = ml_collections.ConfigDict()
    c.prior_name = name
    c.seed = 0
    c.is_complex = prior.is_complex
    c.model = prior.model
    c.schedule = prior.schedule
    c.export_path = prior.checkpoint
    c.card_dir = f"models/priors/{name}_card"

    c.data = ml_collections.ConfigDict()
    c.data.train_dir = train_dir                       # utils/prepare_data.py output
    c.data.heldout_dir = heldout_dir
    c.data.load_size = 128 if broad else 0
    c.data.phantom_fraction = 0.0

    c.augment = ml_collections.ConfigDict()
    c.augment.hflip = 0.5
    c.augment.vflip = 0.0
    c.augment.rotate_deg = 0.0
    c.augment.zoom = (1.0, 1.0)
    c.augment.translate = 0.0
    c.augment.geometric_prob = 1.0
    c.augment.intensity = (1.0, 1.0)
    if broad:
        c.augment.vflip = 0.1 if modality == "CT" else 0.2
        c.augment.rotate_deg = 15.0 if modality == "CT" else 20.0
        c.augment.zoom = (0.7, 1.4)
        c.augment.translate = 0.08
        c.augment.geometric_prob = 0.8
        c.augment.intensity = (0.9, 1.1) if modality == "CT" else (0.6, 1.15)

    c.train = ml_collections.ConfigDict()
    # demo_ct_64: 2500; demo_mri_64 used --config.train.num_steps=1000; broad: the steps trained
    c.train.num_steps = {"ct": 2500, "mri": 2500, "ct_broad": 2400, "mri_broad": 1000}[variant]
    c.train.batch_size = 16
    c.train.lr = 5e-4
    c.train.warmup = 100
    c.train.weight_decay = 0.0
    c.train.grad_clip = 1.0
    c.train.ema_decay = 0.995
    c.train.log_every = 10
    c.train.ckpt_every = 250
    c.train.progress = True
    # broad MRI: continue from the shipped demo_mri_64 (its training data is a subset of the
    # broad set and it never saw the validation / OOD subjects); broad CT starts from scratch
    # because demo_ct_64 saw the Cranium regions that broad_ct_64 holds out.
    c.train.init_from = "models/priors/demo_mri_64.pt" if variant == "mri_broad" else ""
    return c
