"""Per-case PNG report and the batch overview (PNG + HTML ranking cases by score)."""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slice(arr: np.ndarray, axis: int, index: int) -> np.ndarray:
    s = np.take(arr, index, axis=axis)
    return np.rot90(s)  # (i, j) -> rows = j reversed: anterior/superior up for the usual orientations


def case_report(flair, amap, mask, info: dict, path: str | Path, n_slices: int = 4, title: str = "") -> Path:
    """The `n_slices` most anomalous slices (FLAIR, map overlaid, mask outline) and the per-slice
    score curve, in one PNG."""
    from ..preprocess.geometry import image_to_xyz

    plt = _plt()
    img = image_to_xyz(flair).astype(np.float32)
    m = image_to_xyz(amap).astype(np.float32)
    k = image_to_xyz(mask) > 0
    ss = info.get("slice_scores") or {}
    axis = int(ss.get("axis", 2))
    values = np.asarray(ss.get("values") or np.zeros(img.shape[axis]), np.float64)
    order = [int(i) for i in np.argsort(-values, kind="stable")[:n_slices]] if values.size else []
    lo, hi = np.percentile(img[img > 0], [1, 99.5]) if (img > 0).any() else (0.0, 1.0)
    mmax = float(info.get("map_range", [0, 1])[1]) or 1.0
    # overlay only the upper tail of the map (a map may be non-zero over the whole brain)
    nz = m[m > 0]
    tail = float(np.percentile(nz, 95)) if nz.size else 0.0
    thr = float(info.get("threshold", tail))
    vmin = min(tail, thr) if np.isfinite(thr) else tail
    fig = plt.figure(figsize=(3.2 * max(len(order), 1), 6.4))
    gs = fig.add_gridspec(2, max(len(order), 1), height_ratios=[3, 1.4])
    for col, idx in enumerate(order):
        ax = fig.add_subplot(gs[0, col])
        ax.imshow(_slice(img, axis, idx), cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        ov = _slice(m, axis, idx)
        ax.imshow(np.ma.masked_where(ov < vmin, ov), cmap="hot", alpha=0.6, vmin=vmin, vmax=max(mmax, vmin + 1e-6),
                  interpolation="nearest")
        ks = _slice(k, axis, idx)
        if ks.any():
            ax.contour(ks.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
        ax.set_title(f"slice {idx}  score {values[idx]:.3g}", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(gs[1, :])
    ax.plot(np.arange(values.size), values, color="tab:red", lw=1)
    for idx in order:
        ax.axvline(idx, color="gray", lw=0.5, ls=":")
    ax.set_xlabel(f"slice (voxel axis {axis})")
    ax.set_ylabel("slice score")
    fig.suptitle(f"{title}  image score {info.get('image_score', float('nan')):.4g}  "
                 f"{len(info.get('components', []))} finding(s), {info.get('anomalous_volume_ml', 0):.2f} mL",
                 fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def overview(rows: list[dict], out_dir: str | Path, detector: str) -> dict[str, Path]:
    """overview.png (cases ranked by image score) and index.html (table linking each report)."""
    plt = _plt()
    out = Path(out_dir)
    ok = sorted([r for r in rows if r.get("status") == "ok"], key=lambda r: -float(r["image_score"]))
    failed = [r for r in rows if r.get("status") != "ok"]
    fig, ax = plt.subplots(figsize=(8, 0.28 * max(len(ok), 3) + 1.2))
    names = [r["case"] for r in ok][::-1]
    ax.barh(names, [float(r["image_score"]) for r in ok][::-1], color="tab:red")
    ax.set_xlabel("image score")
    ax.set_title(f"{detector}: {len(ok)} case(s) ranked by score" + (f", {len(failed)} failed" if failed else ""))
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    png = out / "overview.png"
    fig.savefig(png, dpi=80)
    plt.close(fig)
    lines = ["<!doctype html><html><head><meta charset='utf-8'><title>uad batch</title>",
             "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}"
             "img.t{height:90px}</style></head><body>",
             f"<h1>{html.escape(detector)}: cases ranked by image score</h1><img src='overview.png'>",
             "<table><tr><th>rank</th><th>case</th><th>image score</th><th>findings</th><th>volume (mL)</th>"
             "<th>seconds</th><th>report</th></tr>"]
    for rank, r in enumerate(ok, 1):
        c = html.escape(r["case"])
        lines.append(f"<tr><td>{rank}</td><td>{c}</td><td>{float(r['image_score']):.4g}</td><td>{r['n_findings']}</td>"
                     f"<td>{float(r['anomalous_volume_ml']):.2f}</td><td>{float(r['seconds']):.1f}</td>"
                     f"<td><a href='{c}/report.png'><img class='t' src='{c}/report.png'></a></td></tr>")
    lines.append("</table>")
    if failed:
        lines.append("<h2>Failed cases</h2><ul>")
        lines += [f"<li>{html.escape(r['case'])}: {html.escape(str(r.get('error', '')))}</li>" for r in failed]
        lines.append("</ul>")
    lines.append("</body></html>")
    index = out / "index.html"
    index.write_text("\n".join(lines))
    return {"png": png, "html": index}
