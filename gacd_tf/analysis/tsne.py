"""t-SNE maps of penultimate features under a targeted attack (paper Figure 5)."""

import os

import numpy as np
import tensorflow as tf

from gacd_tf.analysis import plots
from gacd_tf.errors import DataError
from gacd_tf.models.interface import features_and_logits


def class_images(split, label, examples):
    """The first ``examples`` images of class ``label`` in ``split`` (file order), as
    float32 [n, H, W, 3] in [0, 1]."""
    members = np.flatnonzero(np.asarray(split.labels) == label)[:examples]
    if len(members) < 2:
        raise DataError(f"{split.info.name} {split.split} holds {len(members)} example(s) of "
                        f"class {label}; a t-SNE map needs at least 2 per class")
    return split.images[members].astype(np.float32) / 255.0


def feature_map(model, images_source, images_target, source, target, attack, perplexity=30.0,
                seed=0, batch_size=256):
    """t-SNE of one model's features of two classes plus targeted adversarial examples.

    Adversarial examples are made from the ``source`` images against this
    model by ``attack`` with the target labels (use a targeted objective,
    :class:`gacd_tf.analysis.TargetedCrossEntropy`), i.e. crafted to be
    classified as ``target``. All natural and adversarial features are
    embedded together in 2-D (scikit-learn ``TSNE``, PCA start, fixed seed).

    Args:
        model: a classifier following the gacd_tf interface.
        images_source, images_target: float32 images in [0, 1] of each class.
        source, target: the two class ids (labels of those images).
        attack: a targeted attack, e.g. ``PGD(steps=20, objective=TargetedCrossEntropy())``.
        perplexity: t-SNE perplexity (capped below a third of the point count).
        seed: t-SNE random state.
        batch_size: images per forward pass / attack batch.

    Returns:
        dict with ``points`` [n_t + 2 n_s, 2], ``groups`` (0 natural target,
        1 natural source, 2 adversarial source, per point) and the numbers:
        ``source_accuracy`` and ``target_accuracy`` (natural),
        ``adv_to_target`` (fraction of adversarial examples classified as
        the target: the attack's success), ``adv_still_source`` (still
        classified as the source: robust), ``adv_nearer_target_centroid``
        (fraction whose features lie closer to the target class's natural
        feature centroid than to the source's, in the original feature space).

    Example:
    >>> result = feature_map(model, trucks, birds, 9, 2, attack)  # doctest: +SKIP
    >>> result["adv_to_target"]  # doctest: +SKIP
    0.12
    """
    from sklearn.manifold import TSNE

    both = features_and_logits(model)

    @tf.function(reduce_retracing=True)
    def craft(x, labels):
        return attack(model, x, labels)

    def forward(images):
        feats, preds = [], []
        for start in range(0, len(images), batch_size):
            f, z = both(images[start:start + batch_size], training=False)
            feats.append(f.numpy().astype(np.float64))
            preds.append(np.argmax(z.numpy(), -1))
        return np.concatenate(feats), np.concatenate(preds)

    adversarial = []
    for start in range(0, len(images_source), batch_size):
        chunk = tf.constant(images_source[start:start + batch_size])
        labels = tf.fill([tf.shape(chunk)[0]], tf.constant(target, tf.int32))
        adversarial.append(craft(chunk, labels).numpy())
    adversarial = np.concatenate(adversarial)
    f_t, p_t = forward(images_target)
    f_s, p_s = forward(images_source)
    f_a, p_a = forward(adversarial)
    features = np.concatenate([f_t, f_s, f_a])
    groups = np.concatenate([np.zeros(len(f_t), int), np.ones(len(f_s), int),
                             np.full(len(f_a), 2)])
    perplexity = float(min(perplexity, max(1.0, (len(features) - 1) / 3.0)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(features)
    to_target = np.linalg.norm(f_a - f_t.mean(0), axis=1)
    to_source = np.linalg.norm(f_a - f_s.mean(0), axis=1)
    return {
        "points": points,
        "groups": groups,
        "source_accuracy": float(np.mean(p_s == source)),
        "target_accuracy": float(np.mean(p_t == target)),
        "adv_to_target": float(np.mean(p_a == target)),
        "adv_still_source": float(np.mean(p_a == source)),
        "adv_nearer_target_centroid": float(np.mean(to_target < to_source)),
        "perplexity": perplexity,
    }


def tsne_figure(maps, path, source_name, target_name, title=None):
    """Draws several models' :func:`feature_map` results side by side in one PNG.

    Args:
        maps: dict model name -> :func:`feature_map` result, in panel order.
        path: the PNG to write.
        source_name, target_name: the classes' names for the legend.
        title: the figure's title.

    Returns:
        ``path``.
    """
    labels = (target_name, source_name, f"adv {source_name} -> {target_name}")
    markers = ("o", "o", "x")
    panels = []
    for name, result in maps.items():
        groups = [(labels[g], result["points"][result["groups"] == g], plots.TSNE_COLORS[g],
                   markers[g]) for g in range(3)]
        panels.append({"title": f"{name}: adv classified {target_name} "
                                f"{result['adv_to_target']:.0%}, {source_name} "
                                f"{result['adv_still_source']:.0%}", "groups": groups})
    return plots.scatter_panels(panels, path, title=title)


def summary(result):
    """The JSON-able numbers of a :func:`feature_map` result (no points)."""
    return {k: v for k, v in result.items() if k not in ("points", "groups")}


def tsne_maps(models, split, source, target, attack, output_dir, filename="tsne.png",
              examples=100, perplexity=30.0, seed=0, names=None, maps=None):
    """Computes (or reuses) each model's t-SNE map and draws them in one PNG.

    Args:
        models: dict name -> classifier, in panel order.
        split: the :class:`gacd_tf.data.ArraySplit` to take images from.
        source, target: adversarial examples of ``source`` are crafted
            towards ``target``.
        attack: a targeted attack.
        output_dir: an existing folder.
        filename: the PNG's name.
        examples: images per class.
        perplexity, seed: t-SNE settings.
        names: ``(source name, target name)`` for the legend.
        maps: dict name -> earlier :func:`feature_map` result to reuse; new
            results are added to it.

    Returns:
        dict name -> :func:`feature_map` result of the models drawn.
    """
    maps = {} if maps is None else maps
    images_s = class_images(split, source, examples)
    images_t = class_images(split, target, examples)
    for name, model in models.items():
        if name not in maps:
            maps[name] = feature_map(model, images_s, images_t, source, target, attack,
                                     perplexity=perplexity, seed=seed)
    names = names or (f"class {source}", f"class {target}")
    drawn = {name: maps[name] for name in models}
    tsne_figure(drawn, os.path.join(output_dir, filename), *names,
                title=f"t-SNE of penultimate features: {names[1]}, {names[0]} and "
                      f"adversarial {names[0]} crafted as {names[1]}")
    return drawn
