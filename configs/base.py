"""Fields shared by every run config (``main.py --config=configs/<file>.py``).

Any field can be overridden on the command line: ``--config.physics.acceleration=8``,
``--config.solver_cfg.udigdip.t_start=300``.  Each solver's sub-config starts from that solver's
``default_config()`` (``solvers/<name>.py``), whose comments say which values come from a paper
and the valid range of each numeric field (its ``RANGES`` table, checked by its constructor).
The fields below state their valid values in their comments; :data:`RANGES` and :data:`CHOICES`
are those statements as tables, checked by ``main.py`` before anything is loaded or written.

Precedence of solver settings (``main.py``): the command line wins over the config file, and
within each, ``modality_overrides.<MRI|CT>.<solver>.<field>`` wins over ``solver_cfg.<solver>.<field>``.
So ``--config.solver_cfg.udigdip.num_outer=5`` applies to both modalities even where the config
file sets ``modality_overrides.MRI.udigdip.num_outer``; ``--config.modality_overrides.MRI.udigdip.
num_outer=5`` sets it for MRI only.

Dependencies: ``configs`` sits above ``solvers`` (nothing under ``solvers/`` imports ``configs``).
Building a config imports every registered solver module, on purpose: the defaults of each
algorithm are written once, next to the algorithm, and every solver's fields must exist when the
command line is applied (``--solver`` may pick any of them; the config is locked, so an override
of a missing field is an error) and when the config is saved with the run.
"""
import copy

import ml_collections

from solvers import REGISTRY as SOLVER_REGISTRY
from solvers import default_config as solver_default_config
from solvers.common import Range
from solvers.perf import default_config as perf_defaults

#: largest seed (``seed``, ``physics.mask_seed``): numpy's and sigpy's generators take 32-bit seeds
MAX_SEED = 2 ** 32 - 1

#: valid range of every numeric run field (dotted path → ``solvers.common.Range``); the solver
#: sub-configs have theirs in their solver's ``RANGES``
RANGES = {
    "seed": Range(0, MAX_SEED, integer=True),
    "batch_size": Range(1, 4096, integer=True),
    "data.max_slices": Range(0, integer=True),
    "data.image_size": Range(0, 4096, integer=True),     # and 0 or >= 8 (utils.data_config)
    "data.crop": Range(0, 8192, integer=True),
    "data.calib_width": Range(4, 1024, integer=True),
    "physics.acceleration": Range(1, 1024),
    "physics.center_fraction": Range(0, 1),
    "physics.mask_seed": Range(0, MAX_SEED, integer=True),
    "physics.num_views": Range(1, 10000, integer=True),
    "physics.angle_range": Range(0, 180, lo_open=True, hi_open=True),
    "physics.num_detectors": Range(0, 100000, integer=True),
    "physics.noise_sigma": Range(0),
    "physics.noise_level": Range(0, 10),
    "physics.I0": Range(1, 1e12),
    "physics.mu_max": Range(0, 10, lo_open=True),
    "physics.pixel_mm": Range(0, 1000, lo_open=True),
}
#: valid values of the run's string fields with a fixed set of choices (mask names: physics.masks)
CHOICES = {
    "data.units": ("unit", "hu"),
    "data.maps": ("espirit", "rss"),
    "data.normalize": ("max", "percentile", "none"),
    "physics.noise": ("none", "gaussian", "relative", "poisson"),
}


def get_base_config():
    c = ml_collections.ConfigDict()
    c.deg = "MRI-multi"             # comma list of MRI-multi | SV-CT | LA-CT
    c.solvers = "udigdip,aseqdip,dip"  # comma list, see solvers.REGISTRY
    # run seed, in [0, 2^32 − 1]; slice s is solved with a seed derived from (seed, name of s)
    # (run_checks.slice_seed), so its result does not depend on which other slices are in the run
    c.seed = 0
    c.device = "auto"               # auto | cpu | cuda | cuda:1
    c.workdir = "exp"
    c.run_name = ""
    # slices reconstructed together by one solve, in [1, 4096] (every solver takes B slices, one
    # seed each); 1 = one at a time. Per-slice results equal the one-at-a-time ones up to float rounding.
    c.batch_size = 1
    # speed settings of the DIP solvers (udigdip, aseqdip, dip, sgdip), handed to each as `perf`:
    # bf16 / bf16_cpu, compile, cuda_graph ("auto" = replay each step from a CUDA graph on CUDA),
    # net_impl ("auto", "vmap", "grouped", "grouped_cl"); defaults and meaning: solvers/perf.py.
    c.perf = perf_defaults()

    # the data (utils/data.py readers; how these fields reach them: utils/data_config.py)
    c.data = ml_collections.ConfigDict()
    c.data.path = "indist_samples"  # DDS-style folder, fastMRI .h5, AAPM .npy or DICOM file/folder
    c.data.volumes = ""             # DDS folders: comma list of volume sub-folders ("" = all)
    c.data.max_slices = 0           # >= 0; 0 = all slices of the selection
    # 0 = as stored (every slice must then have the prior's size); N in [8, 4096] = resample every
    # slice to N×N: CT by area averaging in the image domain, MRI by centre-cropping (or zero-
    # padding) k-space (same field of view, intensities preserved; coil maps resampled alike, or
    # estimated at N×N for fastMRI files)
    c.data.image_size = 0
    # CT values of .npy files (DDS CT folders, AAPM files): "unit" = already in [0, 1] (the HU window
    # [-1000, 2000] of utils.data.hu_to_unit) | "hu" = Hounsfield units, mapped with that window.
    # DICOM CT is always read as HU (RescaleSlope / RescaleIntercept).
    c.data.units = "unit"
    c.data.require_maps = True      # DDS MRI folders: refuse a slice without mps/<file> (False: no coil maps)
    c.data.slices = ""              # fastMRI .h5 / .npy stacks: slice indices, e.g. "3,5,10:20" ("" = all)
    c.data.crop = 320               # fastMRI: centre crop of the coil images in [8, 8192] (0 = none)
    c.data.maps = "espirit"         # fastMRI coil maps: "espirit" (sigpy ESPIRiT) | "rss" (coil / RSS)
    c.data.calib_width = 24         # fastMRI ESPIRiT calibration width in [4, 1024] k-space lines (<= image size)
    c.data.normalize = "max"        # fastMRI intensity scale: "max" | "percentile" (99.5th) | "none"

    c.physics = ml_collections.ConfigDict()
    # MRI
    c.physics.mask = "uniform1d"    # physics.masks.MASK_NAMES
    c.physics.acceleration = 4.0    # in [1, 1024], and at least one column/point left to sample
    c.physics.center_fraction = 0.08  # in [0, 1] (fully sampled centre, fraction of the width)
    c.physics.mask_seed = 0         # in [0, 2^32 − 1]
    # CT
    c.physics.num_views = 30        # in [1, 10000]
    c.physics.angle_range = 90.0    # degrees in (0, 180); LA-CT only (SV-CT always scans 180°)
    c.physics.num_detectors = 0     # in [0, 100000]; 0 = ceil(√2 N)
    # both: measurement noise y = A x + n (physics/noise.py: the models, exactly; noise only on
    # measured entries, seeded with the slice's seed). noise_sigma / noise_level stay 0 unless theirs is chosen.
    c.physics.noise = "gaussian"    # none | gaussian | relative | poisson (CT only)
    c.physics.noise_sigma = 0.0     # gaussian: absolute σ >= 0 per measured entry (E|n|² = σ²); 0 = noiseless
    c.physics.noise_level = 0.0     # relative, in [0, 10]: σ = level × RMS of the slice's noiseless measured entries
    c.physics.I0 = 4096.0           # poisson, in [1, 1e12]: incident photons per detector bin (LoDoPaB-CT's low dose)
    c.physics.mu_max = 0.06         # poisson, in (0, 10]: μ of image value 1 in 1/mm (3 μ_water, window [-1000, 2000] HU)
    c.physics.pixel_mm = 3.83       # poisson, in (0, 1000]: pixel size in mm (shipped 64² CT samples: 3.83 mm)

    c.prior = ml_collections.ConfigDict()
    c.prior.mri = "demo_mri_64"     # models/priors.py registry name
    c.prior.ct = "demo_ct_64"
    c.prior.ckpt = ""               # override the checkpoint file (single-modality runs)
    c.prior.bf16 = False            # bf16 autocast for the prior

    c.solver_cfg = solver_defaults()
    # Per-modality overrides of solver fields, applied on top of solver_cfg for that modality,
    # e.g. --config.modality_overrides.CT.udigdip.lam=3 (the data terms of MRI and CT have
    # different scales, so λ is tuned per modality). A --config.solver_cfg.* flag wins over the
    # config FILE's values here (module docstring).
    c.modality_overrides = ml_collections.ConfigDict({"MRI": {}, "CT": {}})
    return c


def solver_defaults() -> ml_collections.ConfigDict:
    """``{name: default_config()}`` of every registered solver (``solvers.REGISTRY``)."""
    return ml_collections.ConfigDict({name: solver_default_config(name) for name in SOLVER_REGISTRY})


def solver_config_for(c, name: str, modality: str):
    """``c.solver_cfg[name]`` with ``c.modality_overrides[modality][name]`` merged in (a copy)."""
    cfg = copy.deepcopy(c.solver_cfg[name])
    over = c.modality_overrides[modality].get(name) if modality in c.modality_overrides else None
    if over:
        with cfg.unlocked():
            cfg.update(over.to_dict() if hasattr(over, "to_dict") else dict(over))
    return cfg
