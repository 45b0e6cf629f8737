"""Train a small ADM diffusion prior by denoising score matching (ε-prediction).

    python train.py --config=configs/train_prior.py:ct  --workdir=exp/train_ct
    python train.py --config=configs/train_prior.py:mri --workdir=exp/train_mri \
        --config.train.num_steps=3000

Loss: E_{x₀, t~U{0..T-1}, ε~N(0,I)} ‖ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t) − ε‖² with the same linear β
schedule (1e-4 … 0.02, 1000 steps) and the same ADM UNet (``models/adm_unet.py``) as the
released DDS priors, so a trained file loads through the same loader
(``models/checkpoint.py``) and is driven by the same :class:`models.denoiser.Denoiser`.

Training images: every ``*.npy`` in ``config.data.train_dir`` (made by ``utils/prepare_data.py``;
CT float [H, W] in [0, 1], MRI complex [H, W] with magnitude ≲ 1), area-resampled to the model's
``image_size``.  Augmentation: random flips; for complex data also a random global phase
e^{iφ} (the prior must not care about the absolute phase).  Optional random-ellipse phantoms
(``config.data.phantom_fraction``).

Optimiser AdamW, gradient clipping, EMA of the weights (the EMA is what gets exported).
Checkpoints ``<workdir>/checkpoints/ckpt_<step>.pt`` (model, EMA, optimiser, step, RNG state);
re-running the same command resumes from the latest one.  At the end the EMA weights are
exported to ``config.export_path`` in the loader's format, with a loss curve PNG, a samples PNG
(DDIM from pure noise) and a denoising PNG (Tweedie at several t on held-out slices).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from models.adm_unet import create_adm_model
from models.checkpoint import save_adm_checkpoint
from models.denoiser import Denoiser
from models.diffusion import DiffusionSchedule

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/train_prior.py:ct", "Training config.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints and logs (resumed if it holds checkpoints).")
flags.DEFINE_integer("threads", 0, "torch CPU threads (0 = torch default).")


# --------------------------------------------------------------------------- data
def load_training_images(folder: str | Path, image_size: int, is_complex: bool) -> torch.Tensor:
    """All ``*.npy`` slices of ``folder`` as ``[N, C, S, S]`` float32 (C = 2 for complex).

    Slices whose size differs from ``image_size`` are area-resampled (real and imaginary
    parts separately).  Raises ``FileNotFoundError`` / ``ValueError`` with the fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"training folder {folder} does not exist; create it with "
            f"`.venv/bin/python -m utils.prepare_data --out data` (needs apt packages, see README)"
        )
    files = sorted(folder.glob("*.npy"))
    if not files:
        raise ValueError(f"no .npy slices in {folder}")
    out = []
    for f in files:
        a = np.load(f)
        if a.ndim != 2:
            raise ValueError(f"{f}: expected a 2-D slice, got shape {a.shape}")
        if is_complex != np.iscomplexobj(a):
            raise ValueError(f"{f}: expected {'complex' if is_complex else 'real'} data, got {a.dtype}")
        t = torch.from_numpy(a)
        t = torch.stack((t.real, t.imag)) if is_complex else t[None]
        out.append(t.float())
    x = torch.stack(out)
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    return x


AUGMENT_DEFAULTS = {"hflip": 0.5, "vflip": 0.0, "rotate_deg": 0.0, "zoom": (1.0, 1.0),
                    "translate": 0.0, "intensity": (1.0, 1.0), "geometric_prob": 1.0}


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def affine_warp(x: torch.Tensor, angle_deg: torch.Tensor, zoom: torch.Tensor,
                shift: torch.Tensor) -> torch.Tensor:
    """Rotate by ``angle_deg``, magnify by ``zoom`` (> 1 zooms in: a smaller field of view fills
    the image; < 1 zooms out, the border is filled with 0 = air / no signal) and shift the
    content by ``shift`` (fractions of the image side, [B, 2] as (x, y)), about the image centre,
    one transform per image of ``x [B, C, H, W]`` (bilinear; channels = (real, imag) are warped
    alike, so a complex image keeps its phase).  Angle 0, zoom 1, shift 0 returns ``x``
    unchanged (up to float rounding)."""
    b = x.shape[0]
    if not (angle_deg.shape == zoom.shape == (b,) and shift.shape == (b, 2)):
        raise ValueError(f"affine_warp: expected angle/zoom [{b}] and shift [{b}, 2], got "
                         f"{tuple(angle_deg.shape)}, {tuple(zoom.shape)}, {tuple(shift.shape)}")
    if bool((zoom <= 0).any()):
        raise ValueError("affine_warp: zoom factors must be > 0")
    a = torch.deg2rad(angle_deg.double())
    c, s = torch.cos(a) / zoom.double(), torch.sin(a) / zoom.double()
    # output pixel p (normalised coords) samples the input at R(-a)/zoom · p - shift·2
    theta = torch.stack((torch.stack((c, -s, -2 * shift[:, 0].double()), -1),
                         torch.stack((s, c, -2 * shift[:, 1].double()), -1)), 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, is_complex: bool, gen: torch.Generator, cfg=None) -> torch.Tensor:
    """Random augmentation of a training batch ``x [B, C, H, W]`` (C = 2: real, imag).

    ``cfg`` (``config.augment``; missing keys = :data:`AUGMENT_DEFAULTS`, i.e. left-right flips
    only): each image independently gets a left-right flip with probability ``hflip``, an
    up-down flip with probability ``vflip``; then, with probability ``geometric_prob``, one
    bilinear warp (:func:`affine_warp`) with a rotation ~ U(-``rotate_deg``, ``rotate_deg``)
    degrees, a zoom ~ log-uniform in ``zoom`` = (min, max) and a shift ~ U(-``translate``,
    ``translate``) of the image side per axis; then an intensity factor ~ U(``intensity``)
    (CT: clipped back to [0, 1], the HU window's range). Complex data finally get a random
    global phase e^{iφ}, φ ~ U[0, 2π) (the prior must not care about the absolute phase).
    Every draw comes from ``gen``, so a batch is reproducible from the generator state;
    shapes and dtype are preserved."""
    a = dict(AUGMENT_DEFAULTS)
    if cfg is not None:
        a.update({k: cfg[k] for k in (cfg.keys() if hasattr(cfg, "keys") else cfg)})
    unknown = set(a) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown augmentation fields {sorted(unknown)}; known: {sorted(AUGMENT_DEFAULTS)}")
    for key in ("hflip", "vflip", "geometric_prob"):
        if not 0.0 <= float(a[key]) <= 1.0:
            raise ValueError(f"augment.{key} must be a probability in [0, 1], got {a[key]!r}")
    zlo, zhi = (float(v) for v in a["zoom"])
    ilo, ihi = (float(v) for v in a["intensity"])
    if not (0 < zlo <= zhi and 0 < ilo <= ihi):
        raise ValueError(f"augment.zoom and augment.intensity must be ranges (lo, hi) with 0 < lo <= hi, "
                         f"got {a['zoom']!r}, {a['intensity']!r}")
    if float(a["rotate_deg"]) < 0 or float(a["translate"]) < 0:
        raise ValueError("augment.rotate_deg and augment.translate must be >= 0")
    b = x.shape[0]
    flip = torch.rand(b, generator=gen) < float(a["hflip"])
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if float(a["vflip"]) > 0:
        flip = torch.rand(b, generator=gen) < float(a["vflip"])
        x = torch.where(flip[:, None, None, None], x.flip(-2), x)
    rot, tr = float(a["rotate_deg"]), float(a["translate"])
    if rot > 0 or zlo != 1.0 or zhi != 1.0 or tr > 0:
        angle = _uniform(b, -rot, rot, gen)
        zoom = torch.exp(_uniform(b, math.log(zlo), math.log(zhi), gen))
        shift = _uniform(2 * b, -tr, tr, gen).reshape(b, 2)
        keep = torch.rand(b, generator=gen, dtype=torch.float64) >= float(a["geometric_prob"])
        angle, zoom = torch.where(keep, 0.0, angle), torch.where(keep, 1.0, zoom)
        shift = torch.where(keep[:, None], 0.0, shift)
        x = affine_warp(x, angle, zoom, shift)
    if ilo != 1.0 or ihi != 1.0:
        scale = _uniform(b, ilo, ihi, gen).to(x.dtype)
        x = x * scale[:, None, None, None]
        if not is_complex:
            x = x.clamp(0.0, 1.0)
    if is_complex:
        phi = torch.rand(b, generator=gen) * 2 * math.pi
        c, s = torch.cos(phi)[:, None, None], torch.sin(phi)[:, None, None]
        re, im = x[:, 0], x[:, 1]
        x = torch.stack((c * re - s * im, s * re + c * im), dim=1)
    return x


def phantom_batch(n: int, image_size: int, is_complex: bool, seed: int) -> torch.Tensor:
    """Random-ellipse phantoms ``[n, C, S, S]`` (extra / fallback training data)."""
    from utils.phantoms import random_ellipses, rasterize_ellipses

    imgs = []
    for i in range(n):
        img = torch.as_tensor(rasterize_ellipses(random_ellipses(seed=seed + i), image_size, supersample=2),
                              dtype=torch.float32)
        img = img / img.abs().max().clamp_min(1e-6)
        imgs.append(torch.stack((img, torch.zeros_like(img))) if is_complex else img[None])
    return torch.stack(imgs)


# --------------------------------------------------------------------------- checkpoints
def latest_checkpoint(workdir: Path) -> Path | None:
    ckpts = sorted((workdir / "checkpoints").glob("ckpt_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return ckpts[-1] if ckpts else None


def save_training_state(path: Path, step, model, ema, opt, gen, losses, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"step": step, "model": model.state_dict(), "ema": ema.state_dict(),
                "opt": opt.state_dict(), "gen": gen.get_state(), "losses": losses,
                "seconds": seconds}, tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- figures
def clip_to_data_range(x0: torch.Tensor) -> torch.Tensor:
    """Project x̂₀ onto the data range (guided-diffusion's ``clip_denoised``): CT [0, 1], MRI |x| ≤ 1."""
    if torch.is_complex(x0):
        mag = x0.abs()
        return x0 * (mag.clamp(max=1.0) / mag.clamp_min(1e-8))
    return x0.clamp(0.0, 1.0)


@torch.no_grad()
def sample_ddim(denoiser: Denoiser, n: int, image_size: int, steps: int, seed: int,
                eta: float = 1.0) -> torch.Tensor:
    """Samples from pure noise, ``[n, H, W]`` (complex noise for MRI): ``steps`` respaced DDIM
    steps with ``eta`` (1 = ancestral-like), x̂₀ clipped to the data range at every step
    (as guided-diffusion's ``clip_denoised=True``) and ε re-derived from the clipped x̂₀."""
    sched = denoiser.schedule
    g = torch.Generator().manual_seed(seed)
    shape = (n, image_size, image_size)
    x = torch.randn(shape, generator=g)
    if denoiser.is_complex:
        x = torch.complex(x, torch.randn(shape, generator=g))
    ts = sched.timesteps(steps)
    for t, t_next in zip(ts, sched.next_steps(ts)):
        x0 = clip_to_data_range(sched.tweedie_x0(x, denoiser.eps(x, t), t))
        if t_next < 0:
            return x0
        eps = sched.eps_from_x0(x, x0, t)
        x = sched.ddim_step(x, x0, eps, t, t_next, eta=eta, generator=g)
    return x


def save_figures(outdir: Path, denoiser: Denoiser, losses: list, heldout: torch.Tensor | None,
                 image_size: int, seed: int) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    # loss curve (moving average)
    steps, vals = np.array([s for s, _ in losses]), np.array([v for _, v in losses])
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(steps, vals, alpha=0.3, label="loss")
    if len(vals) > 20:
        k = max(len(vals) // 50, 5)
        ax.semilogy(steps[k - 1:], np.convolve(vals, np.ones(k) / k, mode="valid"), label=f"mean of {k}")
    ax.set_xlabel("step"), ax.set_ylabel("ε-MSE"), ax.legend(), fig.tight_layout()
    fig.savefig(outdir / "loss_curve.png", dpi=120), plt.close(fig)

    report = {}
    samples = sample_ddim(denoiser, 8, image_size, 100, seed)
    fig, axes = plt.subplots(1, 8, figsize=(16, 2.3))
    for a, s in zip(axes, samples):
        a.imshow(s.abs().numpy(), cmap="gray", vmin=0, vmax=1), a.axis("off")
    fig.suptitle("samples from pure noise (100 DDIM steps, η = 1, x̂₀ clipped to the data range)")
    fig.tight_layout(), fig.savefig(outdir / "samples.png", dpi=100), plt.close(fig)

    if heldout is not None:
        x0 = heldout[:4]
        ts = [50, 150, 300, 500]
        g = torch.Generator().manual_seed(seed)
        fig, axes = plt.subplots(len(x0), 1 + 2 * len(ts), figsize=(2 * (1 + 2 * len(ts)), 2 * len(x0)))
        psnrs = {t: [] for t in ts}
        for r, x in enumerate(x0):
            axes[r, 0].imshow(x.abs().numpy(), cmap="gray", vmin=0, vmax=1), axes[r, 0].set_title("held-out")
            for j, t in enumerate(ts):
                noise = torch.randn(x.shape, generator=g) if not torch.is_complex(x) else torch.complex(
                    torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g))
                xt = denoiser.schedule.q_sample(x[None], t, noise[None])
                xh = denoiser(xt, t)[0]
                mse = (xh - x).abs().pow(2).mean()
                psnrs[t].append(float(10 * torch.log10(x.abs().max() ** 2 / mse)))
                axes[r, 1 + 2 * j].imshow(xt[0].abs().numpy(), cmap="gray", vmin=0, vmax=1)
                axes[r, 1 + 2 * j].set_title(f"x_t, t={t}")
                axes[r, 2 + 2 * j].imshow(xh.abs().numpy(), cmap="gray", vmin=0, vmax=1)
                axes[r, 2 + 2 * j].set_title(f"x̂₀ {psnrs[t][-1]:.1f} dB")
        for a in axes.flat:
            a.axis("off")
        fig.tight_layout(), fig.savefig(outdir / "denoising.png", dpi=90), plt.close(fig)
        report["tweedie_psnr_heldout"] = {str(t): float(np.mean(v)) for t, v in psnrs.items()}
    return report


# --------------------------------------------------------------------------- main loop
def train(config, workdir: Path) -> dict:
    tc, dc = config.train, config.data
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model_cfg = config.model.to_dict()
    image_size, is_complex = model_cfg["image_size"], config.is_complex
    load_size = int(dc.get("load_size", 0) or image_size)
    if load_size < image_size:
        raise ValueError(f"data.load_size ({load_size}) must be >= the model's image_size ({image_size})")
    aug_cfg = config.get("augment")
    aug_cfg = aug_cfg.to_dict() if aug_cfg is not None else None
    data = load_training_images(dc.train_dir, load_size, is_complex)
    logging.info("training on %d slices from %s, %s", len(data), dc.train_dir, tuple(data.shape))

    model = create_adm_model(model_cfg)
    ema = create_adm_model(model_cfg)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = DiffusionSchedule(**config.schedule.to_dict())
    step, losses, seconds_before = 0, [], 0.0
    last = latest_checkpoint(workdir)
    if last is not None:
        st = torch.load(last, weights_only=False)
        model.load_state_dict(st["model"]), ema.load_state_dict(st["ema"]), opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step, losses = st["step"], st["losses"]
        seconds_before = float(st.get("seconds", float("nan")))  # NaN: written before timing was stored
        logging.info("resumed from %s (step %d)", last, step)
    elif tc.get("init_from"):
        from models.checkpoint import load_state_dict_file

        sd = load_state_dict_file(tc.init_from, prefer_ema=True)
        model.load_state_dict(sd), ema.load_state_dict(sd)
        logging.info("initialised model and EMA from %s", tc.init_from)

    n_params = sum(p.numel() for p in model.parameters())
    t0 = time.time()
    bar = tqdm(total=tc.num_steps, initial=step, desc="train", dynamic_ncols=True, disable=not tc.progress)
    model.train()
    while step < tc.num_steps:
        idx = torch.randint(0, len(data), (tc.batch_size,), generator=gen)
        x0 = augment(data[idx], is_complex, gen, aug_cfg)
        if x0.shape[-1] != image_size:
            x0 = F.interpolate(x0, size=(image_size, image_size), mode="area")
        if dc.phantom_fraction > 0:
            n_ph = int(round(dc.phantom_fraction * tc.batch_size))
            if n_ph:
                x0[:n_ph] = phantom_batch(n_ph, image_size, is_complex, seed=config.seed * 100003 + step)
        t = torch.randint(0, sched.num_steps, (tc.batch_size,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sched.q_sample(x0, t, noise)
        out = model(xt, t.float())
        loss = F.mse_loss(out[:, : x0.shape[1]], noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        lr = tc.lr * min(1.0, (step + 1) / max(tc.warmup, 1))
        for g_ in opt.param_groups:
            g_["lr"] = lr
        opt.step()
        with torch.no_grad():
            decay = min(tc.ema_decay, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(decay).add_(pm.detach(), alpha=1 - decay)
        step += 1
        if step % tc.log_every == 0 or step == 1:
            losses.append((step, float(loss.detach())))
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        bar.update(1)
        if step % tc.ckpt_every == 0 or step == tc.num_steps:
            save_training_state(workdir / "checkpoints" / f"ckpt_{step}.pt", step, model, ema, opt, gen, losses,
                                seconds_before + time.time() - t0)
            for old in sorted((workdir / "checkpoints").glob("ckpt_*.pt"),
                              key=lambda p: int(p.stem.split("_")[1]))[:-2]:
                old.unlink()
    bar.close()
    seconds = time.time() - t0

    export = Path(config.export_path)
    save_adm_checkpoint(export, ema, model_cfg, extra={
        "prior": config.prior_name, "is_complex": is_complex, "schedule": config.schedule.to_dict(),
        "train_steps": step, "batch_size": tc.batch_size, "data": str(dc.train_dir),
        "augment": aug_cfg, "load_size": load_size, "init_from": tc.get("init_from") or None})
    denoiser = Denoiser(ema.eval(), sched, is_complex=is_complex, learn_sigma=model_cfg["learn_sigma"])
    heldout = None
    if dc.heldout_dir and Path(dc.heldout_dir).is_dir():
        h = load_training_images(dc.heldout_dir, image_size, is_complex)
        heldout = torch.complex(h[:, 0], h[:, 1]) if is_complex else h[:, 0]
    report = save_figures(Path(config.card_dir), denoiser, losses, heldout, image_size, config.seed)
    report.update({"steps": step, "seconds_this_run": seconds, "train_seconds_total": seconds_before + seconds, "num_params": n_params,
                   "augment": aug_cfg, "load_size": load_size, "init_from": tc.get("init_from") or None,
                   "final_loss_mean_last_10pct": float(np.mean([v for _, v in losses[-max(len(losses) // 10, 1):]])),
                   "command": " ".join(sys.argv), "export": str(export), "torch": torch.__version__})
    (Path(config.card_dir) / "train_report.json").write_text(json.dumps(report, indent=1))
    return report


def main(argv):
    del argv
    if FLAGS.threads:
        torch.set_num_threads(FLAGS.threads)
    workdir = Path(FLAGS.workdir or f"exp/train_{FLAGS.config.prior_name}")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(FLAGS.config.to_json_best_effort(indent=1))
    report = train(FLAGS.config, workdir)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
