"""Figures for runs and training (matplotlib, Agg backend, no pyplot state).

All functions accept torch tensors or numpy arrays of shape ``[H,W]`` (or with leading singleton
dims such as ``[1,H,W]``), complex (MRI: the magnitude ``|x|`` is shown) or real (CT: the values
are shown as they are).  Files are written atomically (``utils.fileio.atomic_writer``).

* :func:`save_image_png` — one image, grey, no axes.
* :func:`comparison_figure` — reference | input (zero-filled / FBP) | reconstruction | error map
  ``|rec − ref|`` (with colour bar); ref/input/rec share one colour range (the reference's).
* :func:`curves_png` — PSNR / SSIM / loss(es) versus iteration (oracle best PSNR marked).
* :func:`loss_curve_png` — training loss curve(s) for ``train.py``.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping, Optional, Sequence, Union

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # never switch the backend of an interactive pyplot
    matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

import numpy as np  # noqa: E402

from utils.fileio import atomic_writer, to_float, to_numpy  # noqa: E402
from utils.run_log import history_columns  # noqa: E402

ArrayLike = Any
MetricsLike = Union[Mapping[str, Any], str, None]


def to_display(img: ArrayLike) -> np.ndarray:
    """``[.., H, W]`` tensor/array → real ``[H, W]`` float64: ``|x|`` if complex, else ``x``.

    Leading singleton dims are squeezed; anything else left over raises ``ValueError``.
    """
    a = to_numpy(img)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a single image [H, W] (or [1, H, W]), got shape {a.shape}; "
                         "select one slice of the batch before plotting")
    a = np.abs(a) if np.iscomplexobj(a) else a
    return np.asarray(a, dtype=np.float64)


def display_range(ref: ArrayLike) -> tuple[float, float]:
    """Colour range for ``ref``: ``(min(0, ref.min()), ref.max())`` over finite values."""
    a = to_display(ref)
    fin = a[np.isfinite(a)]
    if fin.size == 0:
        return 0.0, 1.0
    lo, hi = min(0.0, float(fin.min())), float(fin.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _save_fig(fig: Figure, path, dpi: int = 100) -> None:
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def save_image_png(path, img: ArrayLike, vmin: Optional[float] = None,
                   vmax: Optional[float] = None, cmap: str = "gray") -> None:
    """Save the magnitude (complex) / values (real) of one image as a PNG, pixel for pixel.

    Default range: :func:`display_range` of the image itself; values outside are clipped.
    """
    a = to_display(img)
    lo, hi = display_range(a)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax
    import matplotlib.image as mimage

    with atomic_writer(path, "wb") as f:
        mimage.imsave(f, np.nan_to_num(a), vmin=vmin, vmax=vmax, cmap=cmap, format="png")


def format_metrics(m: MetricsLike) -> str:
    """``{"psnr": .., "ssim": ..}`` → ``"PSNR 31.20 dB / SSIM 0.8612"``; a string unchanged."""
    if m is None:
        return ""
    if isinstance(m, str):
        return m
    parts = []
    p, s = to_float(m.get("psnr")), to_float(m.get("ssim"))
    if p is not None:
        parts.append(f"PSNR {p:.2f} dB")
    if s is not None:
        parts.append(f"SSIM {s:.4f}")
    return " / ".join(parts)


def comparison_figure(path, ref: Optional[ArrayLike], inp: Optional[ArrayLike], rec: ArrayLike,
                      *, input_metrics: MetricsLike = None, rec_metrics: MetricsLike = None,
                      input_label: str = "input", rec_label: str = "reconstruction",
                      suptitle: Optional[str] = None, err_vmax: Optional[float] = None,
                      vmin: Optional[float] = None, vmax: Optional[float] = None,
                      dpi: int = 100) -> None:
    """Save ``reference | input | reconstruction | |rec − ref|`` as one PNG.

    Args:
        ref, inp, rec: images (see module docstring); ``ref`` or ``inp`` may be ``None`` (their
            panels, and the error map without ``ref``, are dropped).
        input_metrics / rec_metrics: dict with ``psnr``/``ssim`` (or a ready string) shown in
            the panel titles.
        input_label: e.g. ``"zero-filled"`` or ``"FBP"``; rec_label: e.g. the solver name.
        err_vmax: upper end of the error colour scale (default: max error) — fix it to compare
            error maps across solvers.
        vmin, vmax: shared display range of ref/input/rec (default :func:`display_range` of
            ``ref``, else of ``rec``).
    """
    rec_d = to_display(rec)
    ref_d = to_display(ref) if ref is not None else None
    inp_d = to_display(inp) if inp is not None else None
    lo, hi = display_range(ref_d if ref_d is not None else rec_d)
    vmin = lo if vmin is None else vmin
    vmax = hi if vmax is None else vmax

    panels = []  # (title, image, kind)
    if ref_d is not None:
        panels.append(("reference", ref_d, "img"))
    if inp_d is not None:
        panels.append((_title(input_label, input_metrics), inp_d, "img"))
    panels.append((_title(rec_label, rec_metrics), rec_d, "img"))
    if ref_d is not None:
        if ref_d.shape != rec_d.shape:
            raise ValueError(f"reference {ref_d.shape} and reconstruction {rec_d.shape} differ")
        panels.append(("|rec − ref|", np.abs(_error(rec, ref)), "err"))

    fig = Figure(figsize=(3.2 * len(panels), 3.6), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, im, kind) in zip(axes, panels):
        if kind == "img":
            ax.imshow(im, cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        else:
            fin = im[np.isfinite(im)]
            top = err_vmax if err_vmax is not None else (float(fin.max()) if fin.size else 1.0)
            h = ax.imshow(im, cmap="inferno", vmin=0.0, vmax=max(top, 1e-12),
                          interpolation="nearest")
            fig.colorbar(h, ax=ax, shrink=0.8)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    _save_fig(fig, path, dpi)


def _error(rec: ArrayLike, ref: ArrayLike) -> np.ndarray:
    """``|rec − ref|`` for the displayed quantity (magnitudes for complex images)."""
    return to_display(rec) - to_display(ref)


def _title(label: str, m: MetricsLike) -> str:
    t = format_metrics(m)
    return f"{label}\n{t}" if t else label


def _steps(cols: Mapping[str, list], n: int) -> list:
    st = cols.get("step")
    return list(st) if st is not None and len(st) == n else list(range(n))


def _xy(steps: Sequence, vals: Sequence) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for s, v in zip(steps, vals):
        f = to_float(v)
        if f is not None and np.isfinite(f):
            xs.append(float(s))
            ys.append(f)
    return np.asarray(xs), np.asarray(ys)


def curves_png(path, history, *, title: Optional[str] = None,
               loss_keys: Optional[Sequence[str]] = None, mark_oracle: bool = True,
               dpi: int = 100) -> None:
    """PSNR / SSIM / loss(es) versus iteration in one PNG (panels only for what is present).

    ``history``: a ``MetricsCallback``, a dict of lists (``step``, ``psnr``, ``ssim``, losses)
    or a list of dicts.  Loss panel: ``loss_keys`` or every other numeric column, log-scaled when
    all values are positive.  With ``mark_oracle`` the best PSNR is marked and labelled
    "oracle best" (it is selected with the reference).
    """
    cols = history_columns(history)
    n = max((len(v) for v in cols.values()), default=0)
    steps = _steps(cols, n)
    skip = {"step", "psnr", "ssim", "nmse"}
    if loss_keys is None:
        loss_keys = [k for k, v in cols.items() if k not in skip and any(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)]
    panels = [k for k in ("psnr", "ssim") if k in cols] + (["loss"] if loss_keys else [])
    if not panels:
        panels = ["empty"]
    fig = Figure(figsize=(4.0 * len(panels), 3.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, p in zip(axes, panels):
        if p in ("psnr", "ssim"):
            x, y = _xy(steps, cols[p])
            ax.plot(x, y, lw=1.2)
            ax.set_ylabel("PSNR (dB)" if p == "psnr" else "SSIM")
            if len(y):
                ax.plot(x[-1:], y[-1:], "o", color="C0", ms=4, label=f"final {y[-1]:.4g}")
                if p == "psnr" and mark_oracle:
                    i = int(np.argmax(y))
                    ax.plot(x[i:i + 1], y[i:i + 1], "*", color="C3", ms=9,
                            label=f"oracle best {y[i]:.2f} @ {x[i]:.0f}")
                ax.legend(fontsize=7)
        elif p == "loss":
            allpos = True
            for j, k in enumerate(loss_keys):
                x, y = _xy(steps, cols.get(k, []))
                if len(y):
                    ax.plot(x, y, lw=1.0, label=k, color=f"C{j}")
                    allpos = allpos and bool((y > 0).all())
            if allpos:
                ax.set_yscale("log")
            ax.set_ylabel("loss")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no history", ha="center", va="center")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    _save_fig(fig, path, dpi)


def loss_curve_png(path, losses: Union[Sequence[float], Mapping[str, Sequence[float]]],
                   steps: Optional[Sequence[float]] = None, *, title: str = "training loss",
                   logy: bool = True, smooth: int = 0, xlabel: str = "step",
                   dpi: int = 100) -> None:
    """Training loss curve(s) (for ``train.py``).

    ``losses``: a list of values or ``{name: list}``; ``steps``: x values (default 0..n-1, per
    curve).  ``smooth > 1`` overlays a moving average of that window.  Log scale when ``logy``
    and every value is positive.
    """
    curves = dict(losses) if isinstance(losses, Mapping) else {"loss": losses}
    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    ax = fig.subplots()
    allpos = True
    for j, (name, vals) in enumerate(curves.items()):
        vals = [to_float(v) for v in (vals.tolist() if hasattr(vals, "tolist") else vals)]
        xs = list(steps) if steps is not None and len(steps) == len(vals) else range(len(vals))
        x, y = _xy(xs, vals)
        if not len(y):
            continue
        allpos = allpos and bool((y > 0).all())
        ax.plot(x, y, lw=0.8, color=f"C{j}", alpha=0.5 if smooth > 1 else 1.0, label=name)
        if smooth > 1 and len(y) >= smooth:
            k = np.ones(smooth) / smooth
            ax.plot(x[smooth - 1:], np.convolve(y, k, mode="valid"), lw=1.5, color=f"C{j}",
                    label=f"{name} (avg {smooth})")
    if logy and allpos:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    _save_fig(fig, path, dpi)


__all__ = ["save_image_png", "comparison_figure", "curves_png", "loss_curve_png",
           "to_display", "display_range", "format_metrics"]
