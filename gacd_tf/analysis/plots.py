"""Every picture the analysis commands draw (matplotlib, headless Agg canvas).

No other module imports matplotlib. Figures are built with
``matplotlib.figure.Figure`` on an Agg canvas (never ``pyplot``), so nothing
needs a display and no global figure state leaks between calls. Sizes are
fixed: a figure is ``panels x PANEL`` inches at :data:`DPI`, so a file's pixel
size depends only on its panel count (:func:`figure_pixels`).
"""

import math

import numpy as np

DPI = 100
HEATMAP_PANEL = (4.8, 4.6)  # inches per heat-map panel (width, height)
SCATTER_PANEL = (4.2, 4.2)  # inches per t-SNE panel
CHART = (6.4, 4.0)  # inches of a line or bar chart
# Natural target class, natural source class, adversarial source images (paper Figure 5).
TSNE_COLORS = ("tab:blue", "tab:green", "tab:red")


def figure_pixels(panel, panels=1):
    """``(width, height)`` in pixels of a figure of ``panels`` side-by-side panels.

    Example:
    >>> figure_pixels(SCATTER_PANEL, 3)
    (1260, 420)
    """
    return int(round(panel[0] * panels * DPI)), int(round(panel[1] * DPI))


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path):
    # No "Software" metadata: the same data gives the same bytes.
    figure.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def heatmaps(panels, path, labels=None, title=None, vmax=None):
    """Draws matrices side by side as heat maps with one shared colour scale.

    Args:
        panels: list of ``(title, matrix [C, C])``.
        path: the PNG to write.
        labels: class names for the axes (shown when C <= 20).
        title: the figure's title.
        vmax: top of the colour scale (default: the largest finite entry;
            the bottom is 0, as for ``|corr_T - corr_S|``).

    Returns:
        ``path``.

    Example:
    >>> heatmaps([("natural", diff_nat), ("PGD-20", diff_adv)], "kd.png")  # doctest: +SKIP
    """
    matrices = [np.asarray(m, dtype=np.float64) for _, m in panels]
    finite = [m[np.isfinite(m)] for m in matrices]
    top = vmax if vmax is not None else max([float(f.max()) for f in finite if f.size] + [1e-12])
    figure = _figure((HEATMAP_PANEL[0] * len(panels), HEATMAP_PANEL[1]))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, (name, _), matrix in zip(axes, panels, matrices):
        image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
        ax.set_title(f"{name}  (mean {np.nanmean(matrix):.3f})", fontsize=10)
        size = matrix.shape[0]
        if labels is not None and size <= 20:
            ax.set_xticks(range(size), labels, rotation=90, fontsize=7)
            ax.set_yticks(range(size), labels, fontsize=7)
        else:
            ax.set_xlabel("class")
            ax.set_ylabel("class")
    figure.colorbar(image, ax=list(axes), shrink=0.8)
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def scatter_panels(panels, path, title=None):
    """Draws 2-D point clouds side by side (t-SNE maps), one panel per model.

    Args:
        panels: list of dicts with ``title`` and ``groups``: a list of
            ``(label, points [n, 2], colour, marker)``.
        path: the PNG to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    figure = _figure((SCATTER_PANEL[0] * len(panels), SCATTER_PANEL[1]))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        for label, points, colour, marker in panel["groups"]:
            points = np.asarray(points)
            ax.scatter(points[:, 0], points[:, 1], s=9, c=colour, marker=marker, label=label,
                       alpha=0.75, linewidths=0.6 if marker == "x" else 0)
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="best", fontsize=7, markerscale=1.5)
    if title:
        figure.suptitle(title, fontsize=11)
    return _save(figure, path)


def _numeric(values):
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def metric_curves(values, series, path, xlabel, ylabel="accuracy", failed=(), title=None,
                  log_x=None):
    """Plots metrics against a swept value; failed points are marked, not dropped.

    Args:
        values: the grid values (numbers or strings), in grid order.
        series: dict name -> list of y (None where the run failed).
        path: the PNG to write.
        xlabel: the swept flag.
        ylabel: the y axis label.
        failed: grid values whose run failed (drawn as grey crosses on the x axis).
        title: the figure's title.
        log_x: a log x axis (None: when the values are positive and span a
            factor of 20 or more, as swept hyper-parameters do).

    Returns:
        ``path``.
    """
    figure = _figure(CHART)
    ax = figure.subplots()
    numbers = _numeric(values)
    if numbers is not None:
        x = numbers
        positive = [v for v in numbers if v > 0]
        if log_x or (log_x is None and len(positive) == len(numbers)
                     and max(positive) / min(positive) >= 20):
            ax.set_xscale("log")
        ax.set_xticks(numbers, [str(v) for v in values])
        ax.minorticks_off()
    else:
        x = list(range(len(values)))
        ax.set_xticks(x, [str(v) for v in values])
    order = np.argsort(x, kind="stable")
    for name, ys in series.items():
        points = [(x[i], ys[i]) for i in order if ys[i] is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    failed_x = [x[i] for i, v in enumerate(values) if v in set(failed)]
    if failed_x:
        ax.scatter(failed_x, [0.0] * len(failed_x), marker="x", c="grey", s=50, zorder=3,
                   label="failed run", clip_on=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(figure, path)


def grouped_bars(names, series, path, ylabel="accuracy", title=None, errors=None,
                 size=CHART):
    """Grouped bar chart: one group per name, one bar per series (e.g. natural, robust).

    Args:
        names: the groups (models), in order.
        series: dict name -> list of heights (None draws no bar).
        path: the PNG to write.
        ylabel: the y axis label.
        title: the figure's title.
        errors: optional dict name -> list of error-bar half-lengths (e.g. the
            standard deviation over seeds; None draws no error bar).
        size: ``(width, height)`` in inches.

    Returns:
        ``path``.
    """
    figure = _figure(size)
    ax = figure.subplots()
    width = 0.8 / max(1, len(series))
    errors = errors or {}
    for j, (label, heights) in enumerate(series.items()):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(names))]
        hs = [h if h is not None and math.isfinite(h) else 0.0 for h in heights]
        spread = errors.get(label)
        if spread is not None:
            spread = [e if e is not None and math.isfinite(e) else 0.0 for e in spread]
        bars = ax.bar(xs, hs, width, label=label, yerr=spread,
                      capsize=2 if spread is not None else 0)
        ax.bar_label(bars, [f"{h:.3f}" if h is not None else "" for h in heights], fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
    ax.set_ylabel(ylabel)
    tops = [(h or 0) + ((errors.get(label) or [0] * len(hs))[i] or 0)
            for label, hs in series.items() for i, h in enumerate(hs)]
    ax.set_ylim(0, 1.05 * max([1e-6] + tops))
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(figure, path)
