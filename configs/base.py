"""Fields shared by every run config (``main.py --config=configs/<file>.py``).

Any field can be overridden on the command line: ``--config.physics.acceleration=8``,
``--config.solver_cfg.udigdip.t_start=300``.  Each solver's sub-config starts from that solver's
``default_config()`` (``solvers/<name>.py``), whose comments say which values come from a paper.

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
from solvers.perf import default_config as perf_defaults


def get_base_config():
    c = ml_collections.ConfigDict()
    c.deg = "MRI-multi"             # comma list of MRI-multi | SV-CT | LA-CT
    c.solvers = "udigdip,aseqdip,dip"  # comma list, see solvers.REGISTRY
    c.seed = 0
    c.device = "auto"               # auto | cpu | cuda | cuda:1
    c.workdir = "exp"
    c.run_name = ""
    c.log_every = 25                # metric curves / callback period (optimizer steps)
    # slices reconstructed together by one solve (every solver takes B slices, one seed each);
    # 1 = one at a time. Per-slice results equal the one-at-a-time ones up to float rounding.
    c.batch_size = 1
    # speed settings of the DIP solvers (udigdip, aseqdip, dip, sgdip), handed to each as `perf`:
    # bf16 / bf16_cpu, compile, cuda_graph ("auto" = replay each step from a CUDA graph on CUDA),
    # net_impl ("auto", "vmap", "grouped", "grouped_cl"); defaults and meaning: solvers/perf.py.
    c.perf = perf_defaults()

    c.data = ml_collections.ConfigDict()
    c.data.path = "indist_samples"  # DDS-style folder, fastMRI .h5, AAPM .npy or DICOM
    c.data.volumes = ""             # comma list of volume sub-folders ("" = all)
    c.data.max_slices = 0           # 0 = all slices of the selection

    c.physics = ml_collections.ConfigDict()
    # MRI
    c.physics.mask = "uniform1d"    # physics.masks.MASK_NAMES
    c.physics.acceleration = 4.0
    c.physics.center_fraction = 0.08
    c.physics.mask_seed = 0
    # CT
    c.physics.num_views = 30
    c.physics.angle_range = 90.0    # LA-CT only (SV-CT always scans 180°)
    c.physics.num_detectors = 0     # 0 = ceil(√2 N)
    # both: measurement noise y = A x + n (physics/noise.py: the models, exactly; noise only on
    # measured entries, slice i seeded seed + i). noise_sigma / noise_level stay 0 unless theirs is chosen.
    c.physics.noise = "gaussian"    # none | gaussian | relative | poisson (CT only)
    c.physics.noise_sigma = 0.0     # gaussian: absolute σ per measured entry (E|n|² = σ²); 0 = noiseless
    c.physics.noise_level = 0.0     # relative: σ = level × RMS of the slice's noiseless measured entries
    c.physics.I0 = 4096.0           # poisson: incident photons per detector bin (LoDoPaB-CT's low dose)
    c.physics.mu_max = 0.06         # poisson: μ of image value 1 in 1/mm (3 μ_water, window [-1000, 2000] HU)
    c.physics.pixel_mm = 3.83       # poisson: pixel size in mm (shipped 64² CT samples: 3.83 mm)

    c.prior = ml_collections.ConfigDict()
    c.prior.mri = "demo_mri_64"     # models/priors.py registry name
    c.prior.ct = "demo_ct_64"
    c.prior.ckpt = ""               # override the checkpoint file (single-modality runs)
    c.prior.bf16 = False            # bf16 autocast for the prior

    c.solver_cfg = solver_defaults()
    # Per-modality overrides of solver fields, applied on top of solver_cfg for that modality,
    # e.g. --config.modality_overrides.CT.udigdip.lam=3 (the data terms of MRI and CT have
    # different scales, so λ is tuned per modality).
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
