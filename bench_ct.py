"""Benchmark: physics.ct.ParallelBeamCT (sparse Siddon matrix, torch) vs skimage radon/iradon.

CPU only.  For each view count (default 60 and 180) at 256²:
* matrix build time (cold cache) of A/Aᵀ and of the FBP interpolating back-projector, nnz of A;
* median wall time over ``--repeats`` runs of forward ``A x``, adjoint ``Aᵀ y`` and FBP (ramp),
  float32 batch 1 (plus forward+adjoint for a batch of 8, per image);
* ``skimage.transform.radon`` (forward), ``iradon(filter_name=None)`` (back-projection) and
  ``iradon(filter_name="ramp")`` (FBP), circle=False;
* accuracy on the modified Shepp–Logan phantom: forward relative L2 error vs the analytic line
  integrals (bins > 1.5 px from a tangent ray; skimage evaluated at its own detector grid), and
  FBP PSNR (whole image, data_range = max of the reference).

Usage: ``python bench_ct.py [--size 256] [--views 60 180] [--repeats 5] [--out exp/bench_ct.json]``
Prints a markdown table and writes the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from physics import ct
from utils import phantoms as P


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (also triggers dtype conversion caches)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _psnr(x, ref):
    return float(10 * np.log10(ref.max() ** 2 / np.mean((x - ref) ** 2)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--views", type=int, nargs="+", default=[60, 180])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skimage-repeats", type=int, default=3)
    ap.add_argument("--out", default="exp/bench_ct.json")
    args = ap.parse_args()

    from skimage.transform import iradon, radon

    n = args.size
    e = P.shepp_logan_ellipses()
    img = P.rasterize_ellipses(e, n, supersample=4)
    x32 = torch.from_numpy(img).float()[None]
    x8 = x32.repeat(8, 1, 1)
    results = []
    for v in args.views:
        ct.clear_cache()
        t0 = time.perf_counter()
        op = ct.ParallelBeamCT(n, num_views=v)
        t_build = time.perf_counter() - t0
        y32 = op(x32)
        y8 = op(x8)
        t0 = time.perf_counter()
        op.backproject(y32)  # builds the interpolating back-projector used by fbp()
        t_bp_build = time.perf_counter() - t0
        r = {
            "size": n,
            "views": v,
            "detectors": op.num_detectors,
            "nnz": op.nnz,
            "build_s": t_build,
            "fbp_backprojector_build_s": t_bp_build,
            "ours_forward_s": _median_time(lambda: op(x32), args.repeats),
            "ours_adjoint_s": _median_time(lambda: op.adjoint(y32), args.repeats),
            "ours_fbp_s": _median_time(lambda: op.fbp(y32), args.repeats),
            "ours_fwd_adj_batch8_per_image_s": _median_time(lambda: op.adjoint(op(x8)), args.repeats) / 8,
        }
        theta = op.angles_deg
        sino_sk = radon(img, theta, circle=False)  # [D', V]
        r["skimage_detectors"] = int(sino_sk.shape[0])
        r["skimage_radon_s"] = _median_time(lambda: radon(img, theta, circle=False), args.skimage_repeats)
        r["skimage_backproj_s"] = _median_time(
            lambda: iradon(sino_sk, theta, filter_name=None, circle=False, output_size=n), args.skimage_repeats
        )
        r["skimage_fbp_s"] = _median_time(
            lambda: iradon(sino_sk, theta, filter_name="ramp", circle=False, output_size=n), args.skimage_repeats
        )
        # accuracy (float64 for ours)
        y64 = op(torch.from_numpy(img)[None])[0].numpy()
        ya = P.ellipse_sinogram(e, n, theta, op.detector_pos)
        keep = P.tangent_distance(e, n, theta, op.detector_pos) > 1.5
        r["ours_forward_rel_err"] = float(np.linalg.norm((y64 - ya)[keep]) / np.linalg.norm(ya[keep]))
        pos_sk = np.arange(sino_sk.shape[0]) - sino_sk.shape[0] // 2  # skimage centre convention
        ya_sk = P.ellipse_sinogram(e, n, theta, pos_sk)
        keep_sk = P.tangent_distance(e, n, theta, pos_sk) > 1.5
        r["skimage_forward_rel_err"] = float(
            np.linalg.norm((sino_sk.T - ya_sk)[keep_sk]) / np.linalg.norm(ya_sk[keep_sk])
        )
        r["ours_fbp_psnr"] = _psnr(op.fbp(torch.from_numpy(y64)[None])[0].numpy(), img)
        r["ours_fbp_adjoint_bp_psnr"] = _psnr(
            op.fbp(torch.from_numpy(y64)[None], backprojector="adjoint")[0].numpy(), img
        )
        r["skimage_fbp_psnr"] = _psnr(iradon(sino_sk, theta, filter_name="ramp", circle=False, output_size=n), img)
        results.append(r)
        print(f"done {v} views", flush=True)

    meta = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "repeats": args.repeats,
        "skimage_repeats": args.skimage_repeats,
        "dtype": "float32, batch 1 unless noted",
        "note": "median wall-clock seconds; CPU shared with other jobs, so absolute times are noisy",
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)

    ms = lambda s: f"{1e3 * s:.1f}"
    print()
    print(f"CT {n}x{n}, CPU ({meta['torch_threads']} torch threads), median of {args.repeats} (ours) / "
          f"{args.skimage_repeats} (skimage) runs, times in ms")
    print()
    print("| views | build A,Aᵀ / FBP-BP (s) | nnz (M) | ours A | ours Aᵀ | ours FBP | ours A+Aᵀ /img (B=8) "
          "| skimage radon | skimage backproj | skimage FBP | fwd err ours / skimage | FBP PSNR ours / skimage (dB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['views']} | {r['build_s']:.2f} / {r['fbp_backprojector_build_s']:.2f} | {r['nnz'] / 1e6:.1f} | {ms(r['ours_forward_s'])} | "
            f"{ms(r['ours_adjoint_s'])} | {ms(r['ours_fbp_s'])} | {ms(r['ours_fwd_adj_batch8_per_image_s'])} | "
            f"{ms(r['skimage_radon_s'])} | {ms(r['skimage_backproj_s'])} | {ms(r['skimage_fbp_s'])} | "
            f"{100 * r['ours_forward_rel_err']:.2f} % / {100 * r['skimage_forward_rel_err']:.2f} % | "
            f"{r['ours_fbp_psnr']:.2f} / {r['skimage_fbp_psnr']:.2f} |"
        )
    print("\nFBP PSNR with the exact-adjoint (Siddon) back-projector instead: "
          + ", ".join(f"{r['views']} views {r['ours_fbp_adjoint_bp_psnr']:.2f} dB" for r in results))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
