"""One-step Tweedie denoising PSNR of diffusion priors on DDS sample folders.

For a clean slice x₀ and step t: x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε (ε ~ N(0, I), complex for MRI),
x̂₀ = (x_t − √(1−ᾱ_t) ε̂(x_t, t)) / √ᾱ_t, PSNR = 10 log₁₀(max|x₀|² / mean|x̂₀ − x₀|²) — the
quantity of the model card (``train.py`` figures use the same definition).  ``num_noise`` noise
draws per slice and t are averaged (in PSNR); the noise comes from one generator seeded with
``seed`` and is drawn in a fixed order, so every prior sees exactly the same x_t.

    python -m utils.prior_eval --modality=CT --priors=demo_ct_64,broad_ct_64 \\
        --sets=indist_samples,val_samples,ood_samples \\
        --out=models/priors/broad_ct_64_card/tweedie.json --plot=models/priors/broad_ct_64_card/tweedie.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

DEFAULT_TS = (25, 50, 100, 150, 200, 300, 500)


def _noise(shape, is_complex: bool, g: torch.Generator) -> torch.Tensor:
    n = torch.randn(shape, generator=g)
    return torch.complex(n, torch.randn(shape, generator=g)) if is_complex else n


@torch.no_grad()
def tweedie_psnr(denoiser, images, ts=DEFAULT_TS, seed: int = 0, num_noise: int = 4) -> dict:
    """``{t: [PSNR of slice i]}`` (dB, mean over ``num_noise`` draws) for ``images`` (a list of
    ``[H, W]`` tensors: complex for a complex prior, real otherwise).  Raises ``ValueError`` for
    a dtype that does not fit the prior, an empty list or a t outside the schedule."""
    images = list(images)
    if not images:
        raise ValueError("tweedie_psnr: no images")
    if num_noise < 1:
        raise ValueError(f"tweedie_psnr: num_noise must be >= 1, got {num_noise}")
    T = denoiser.schedule.num_steps
    bad = [t for t in ts if not 0 <= int(t) < T]
    if bad:
        raise ValueError(f"tweedie_psnr: steps {bad} outside [0, {T})")
    g = torch.Generator().manual_seed(seed)
    out = {int(t): [] for t in ts}
    for x in images:
        if torch.is_complex(x) != bool(denoiser.is_complex):
            raise ValueError(f"tweedie_psnr: a {'complex' if denoiser.is_complex else 'real'} prior "
                             f"needs {'complex' if denoiser.is_complex else 'real'} images, got {x.dtype}")
        if x.ndim != 2:
            raise ValueError(f"tweedie_psnr: images must be [H, W], got shape {tuple(x.shape)}")
        peak = float(x.abs().max()) ** 2
        for t in ts:
            x0 = x[None].expand(num_noise, *x.shape)
            xt = denoiser.schedule.q_sample(x0, int(t), _noise(x0.shape, x.is_complex(), g))
            err = (denoiser(xt, int(t)) - x0).abs().pow(2).flatten(1).mean(1)
            out[int(t)].append(float(np.mean(10 * np.log10(peak / err.clamp_min(1e-20).numpy()))))
    return out


def warp_slice(x: torch.Tensor, zoom: float, angle_deg: float) -> torch.Tensor:
    """A slice seen at another field of view / position: rotated by ``angle_deg`` and magnified
    by ``zoom`` about the centre (``train.affine_warp``, bilinear, 0 outside; complex slices warp
    real and imaginary parts alike); CT stays in [0, 1]."""
    from train import affine_warp

    h = torch.view_as_real(x).permute(2, 0, 1)[None] if x.is_complex() else x[None, None]
    w = affine_warp(h.float(), torch.tensor([float(angle_deg)]), torch.tensor([float(zoom)]), torch.zeros(1, 2))[0]
    return torch.complex(w[0], w[1]) if x.is_complex() else w[0].clamp(0, 1)


def evaluate(priors, sets, modality: str, ts=DEFAULT_TS, seed: int = 0, num_noise: int = 4,
             warp: tuple[float, float] | None = None) -> dict:
    """Tweedie PSNR of each prior (name or path) on each DDS folder's ``modality`` slices
    (``warp`` = (zoom, angle°): every slice first goes through :func:`warp_slice`).

    Returns ``{"ts", "seed", "num_noise", "modality", "results": {prior: {set: {"mean": {t: dB},
    "volumes": {volume: {t: dB}}, "slices": {name: {t: dB}}}}}}``.  Every prior gets the same
    noise (same seed, same order)."""
    from models.priors import load_prior
    from utils.data import load_dds_folder

    data = {s: load_dds_folder(s, modality, require_maps=False) for s in sets}
    res = {}
    for p in priors:
        den = load_prior(p).eval()
        res[str(p)] = {}
        for s, samples in data.items():
            imgs = [smp.x_ref if warp is None else warp_slice(smp.x_ref, *warp) for smp in samples]
            vals = tweedie_psnr(den, imgs, ts, seed, num_noise)
            names = [smp.name for smp in samples]
            vols = sorted({n.split("/")[0] for n in names})
            res[str(p)][str(s)] = {
                "mean": {str(t): float(np.mean(v)) for t, v in vals.items()},
                "volumes": {vol: {str(t): float(np.mean([x for n, x in zip(names, v) if n.split("/")[0] == vol]))
                                  for t, v in vals.items()} for vol in vols},
                "slices": {n: {str(t): vals[t][i] for t in vals} for i, n in enumerate(names)},
            }
    return {"ts": [int(t) for t in ts], "seed": seed, "num_noise": num_noise, "modality": modality,
            "warp": None if warp is None else {"zoom": warp[0], "angle_deg": warp[1]}, "results": res}


def plot(report: dict, path) -> None:
    """One panel per sample folder: PSNR vs t, one line per prior."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priors = list(report["results"])
    sets = list(report["results"][priors[0]])
    fig, axes = plt.subplots(1, len(sets), figsize=(4.2 * len(sets), 3.4), squeeze=False)
    for ax, s in zip(axes[0], sets):
        for p in priors:
            m = report["results"][p][s]["mean"]
            ax.plot(report["ts"], [m[str(t)] for t in report["ts"]], "o-", label=Path(p).stem)
        ax.set_title(f"{report['modality']}: {Path(s).name}"), ax.set_xlabel("t"), ax.set_ylabel("Tweedie PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modality", required=True, choices=["CT", "MRI"])
    ap.add_argument("--priors", required=True, help="comma list of prior names or .pt paths")
    ap.add_argument("--sets", default="indist_samples,val_samples,ood_samples", help="comma list of DDS folders")
    ap.add_argument("--ts", default=",".join(map(str, DEFAULT_TS)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_noise", type=int, default=4)
    ap.add_argument("--warp", default=None,
                    help="ZOOM,ANGLE: evaluate every slice rotated by ANGLE degrees and magnified by ZOOM")
    ap.add_argument("--out", default=None, help="JSON file for the numbers")
    ap.add_argument("--plot", default=None, help="PNG file for the curves")
    args = ap.parse_args(argv)
    try:
        ts = [int(t) for t in args.ts.split(",")]
    except ValueError:
        raise SystemExit(f"--ts must be a comma list of integers, got {args.ts!r}")
    warp = None
    if args.warp:
        try:
            warp = tuple(float(v) for v in args.warp.split(","))
        except ValueError:
            warp = ()
        if len(warp) != 2 or warp[0] <= 0:
            raise SystemExit(f"--warp must be ZOOM,ANGLE with ZOOM > 0, got {args.warp!r}")
    report = evaluate([p for p in args.priors.split(",") if p], [s for s in args.sets.split(",") if s],
                      args.modality, ts, args.seed, args.num_noise, warp)
    report["command"] = " ".join(["python -m utils.prior_eval"] + (sys.argv[1:] if argv is None else list(argv)))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(report, args.plot)
    for p, per in report["results"].items():
        for s, r in per.items():
            print(f"{Path(p).stem:>14s} {s:>16s} " + " ".join(f"{r['mean'][str(t)]:6.2f}" for t in ts))


if __name__ == "__main__":
    main()
