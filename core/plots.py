"""Plotting for every part of the project: pyplot on the Agg backend, one figure at a time, under one style that reads
on a light page and a dark one; figures saved atomically."""

from __future__ import annotations

import threading
from pathlib import Path

from core.files import atomic_write

INK = "#777777"
"""Text and line colour of the plots: readable on a white page and on a dark one (contrast about 4.5 on both)."""
PLOT_STYLE = {
    "savefig.transparent": True,  # the page's own background shows through: no white block in a dark theme
    "figure.facecolor": "none",
    "axes.facecolor": "none",
    "text.color": INK,
    "axes.labelcolor": INK,
    "axes.titlecolor": INK,
    "axes.edgecolor": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "legend.facecolor": "none",
    "legend.edgecolor": INK,
    "legend.labelcolor": INK,
    "boxplot.boxprops.color": INK,
    "boxplot.whiskerprops.color": INK,
    "boxplot.capprops.color": INK,
    "boxplot.flierprops.markeredgecolor": INK,
}
"""Every plot of the project is drawn under this style (see `plotting`)."""


_PLOTTING = threading.RLock()


def plotting():
    """``with plotting() as plt:``: pyplot on the Agg backend, under PLOT_STYLE."""
    import contextlib

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    @contextlib.contextmanager
    def styled():
        with _PLOTTING, plt.rc_context(PLOT_STYLE):  # pyplot's state is global: one figure at a time
            yield plt

    return styled()


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    # A band left empty above the titles: the app lays its label and buttons over the top of each image.
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
