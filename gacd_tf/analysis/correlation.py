"""Teacher/student logit-correlation maps (paper Figures 3-4) as numbers and heat maps."""

import os

import numpy as np

from gacd_tf.analysis import plots
from gacd_tf.analysis.tables import slug
from gacd_tf.evaluation import correlation_difference, logit_correlation


def correlation_maps(teacher, students, dataset, attack, output_dir, labels=None,
                     attack_name="adversarial", teacher_matrices=None):
    """``|corr_T - corr_S|`` on natural and adversarial inputs for each student.

    The teacher's two correlation matrices are computed once; each model is
    attacked with its own adversarial examples (``attack(model, x, y)``).
    Writes ``correlation_<student>.png`` (natural and adversarial heat maps
    side by side, one colour scale) and ``correlation_<student>.npz`` (the
    teacher's two matrices and the two differences) per student into
    ``output_dir``.

    Args:
        teacher: the teacher classifier.
        students: dict name -> student classifier (same classes).
        dataset: ``tf.data.Dataset`` of ``(image, label[, index])`` batches.
        attack: e.g. ``PGD(steps=20)``.
        output_dir: an existing folder.
        labels: class names for the heat maps' axes.
        attack_name: the adversarial panel's title.
        teacher_matrices: ``{"natural": [C, C], "adversarial": [C, C]}`` computed
            before for this teacher and dataset (skips recomputing them).

    Returns:
        ``(summary, teacher_matrices)``: summary maps each student name to
        ``{"natural": mean |difference|, "adversarial": ..., "heatmap": file name}``.

    Example:
    >>> summary, _ = correlation_maps(teacher, {"gacd": student}, test_ds,
    ...                               PGD(steps=20), "runs/report")  # doctest: +SKIP
    >>> summary["gacd"]["natural"]  # doctest: +SKIP
    0.071
    """
    if teacher_matrices is None:
        teacher_matrices = {"natural": logit_correlation(teacher, dataset),
                            "adversarial": logit_correlation(teacher, dataset, attack)}
    summary = {}
    for name, student in students.items():
        nat, nat_mean = correlation_difference(teacher_matrices["natural"], student, dataset)
        adv, adv_mean = correlation_difference(teacher_matrices["adversarial"], student, dataset,
                                               attack)
        filename = f"correlation_{slug(name)}.png"
        plots.heatmaps([("natural", nat), (attack_name, adv)], os.path.join(output_dir, filename),
                       labels=labels, title=f"|corr_T - corr_S|, student {name}",
                       vmax=max(float(np.nanmax(nat)), float(np.nanmax(adv)), 1e-12))
        summary[name] = {"natural": nat_mean, "adversarial": adv_mean, "heatmap": filename}
        np.savez(os.path.join(output_dir, f"correlation_{slug(name)}.npz"),
                 teacher_natural=teacher_matrices["natural"],
                 teacher_adversarial=teacher_matrices["adversarial"],
                 difference_natural=nat, difference_adversarial=adv)
    return summary, teacher_matrices
