"""Analysis of trained models: linear transfer (:class:`LinearProbe`), logit-correlation maps, t-SNE maps,
flag sweeps and a Markdown report (``gacd-analyze``).

All pictures come from :mod:`gacd_tf.analysis.plots` (matplotlib, Agg canvas);
matplotlib and scikit-learn are the ``analysis`` extra
(``pip install -e ".[analysis]"``), needed only to draw pictures and t-SNE maps.
"""

from gacd_tf.analysis.correlation import correlation_maps
from gacd_tf.analysis.linear_probe import LinearProbe
from gacd_tf.analysis.report import Run, load_run, load_runs, render_report
from gacd_tf.analysis.sweep import run_sweep, write_sweep
from gacd_tf.analysis.targeted_objective import TargetedCrossEntropy
from gacd_tf.analysis.transfer import linear_transfer, weights_digest, write_transfer
from gacd_tf.analysis.tsne import feature_map, tsne_figure, tsne_maps

__all__ = [
    "LinearProbe", "Run", "TargetedCrossEntropy", "correlation_maps", "feature_map", "linear_transfer",
    "load_run", "load_runs", "render_report", "run_sweep", "tsne_figure", "tsne_maps",
    "weights_digest", "write_sweep", "write_transfer",
]
