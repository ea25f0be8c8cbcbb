"""Transfer robustness: adversarial examples made on one model, counted on another.

The deployment case (SPEC "Deployment at the edge"): a quantised TFLite model
gives no usable gradients, so its robustness is measured with adversarial
examples made on the float model by a white-box attack (PGD, APGD,
AutoAttack), then classified by the deployed model.
"""

import time

import numpy as np

from gacd_tf.attacks import as_outputs
from gacd_tf.evaluation.robustness import evaluate_robustness
from gacd_tf.methods.common import unpack_batch


def _predictions(model, images, batch_size):
    out = []
    for start in range(0, len(images), batch_size):
        logits = as_outputs(model(images[start:start + batch_size], training=False))["logits"]
        out.append(np.asarray(logits).argmax(-1))
    return np.concatenate(out) if out else np.zeros([0], np.int64)


def transfer_counts(target, images, labels, adversarial, batch_size=128):
    """Counts adversarial examples made elsewhere on ``target`` (SPEC "Counting").

    A point is robust only if ``target`` classifies its clean image
    correctly AND its adversarial example correctly: an adversarial example
    that happens to be classified correctly while the clean image is not
    does not count.

    Args:
        target: callable ``target(x, training=False)`` -> logits (a Keras
            model, a :class:`gacd_tf.serving.TFLiteModel`, ...).
        images: clean float32 ``[N, H, W, 3]`` in [0, 1].
        labels: int ``[N]``.
        adversarial: float32 ``[N, H, W, 3]``, the adversarial examples.
        batch_size: images per call of ``target``.

    Returns:
        dict ``natural_accuracy``, ``robust_accuracy``, ``num_examples`` and
        the NumPy arrays ``clean_correct``, ``adversarial_correct``,
        ``robust`` (bool ``[N]``) and ``predictions`` (on the adversarial
        examples).
    """
    labels = np.asarray(labels).astype(np.int64)
    images = np.asarray(images, np.float32)
    adversarial = np.asarray(adversarial, np.float32)
    if images.shape != adversarial.shape or len(labels) != len(images):
        raise ValueError(f"images {images.shape}, adversarial {adversarial.shape} and labels "
                         f"{labels.shape} must describe the same points")
    if len(labels) == 0:
        raise ValueError("transfer_counts got no example")
    clean_correct = _predictions(target, images, batch_size) == labels
    predictions = _predictions(target, adversarial, batch_size)
    adversarial_correct = predictions == labels
    robust = clean_correct & adversarial_correct
    return {"natural_accuracy": float(clean_correct.mean()),
            "robust_accuracy": float(robust.mean()), "num_examples": len(labels),
            "clean_correct": clean_correct, "adversarial_correct": adversarial_correct,
            "robust": robust, "predictions": predictions}


def evaluate_transfer(target, source, dataset, attack, verbose=1, return_examples=False,
                      progress_file=None):
    """Robust accuracy of ``target`` under ``attack``'s adversarial examples made on ``source``.

    ``attack`` runs on ``source`` exactly as :func:`evaluate_robustness`
    runs it (AutoAttack as an ensemble: a point's first successful
    adversarial example, the clean image where no attack succeeded); each
    point's adversarial example is then classified by ``target`` and counted
    by :func:`transfer_counts` (robust only if ``target`` is right on the
    clean image and on the adversarial example).

    Args:
        target: the model counted on (e.g. a TFLite model); no gradients needed.
        source: the model attacked (e.g. the float Keras model it was exported from).
        dataset: ``tf.data.Dataset`` of ``(image, label[, index])`` batches, in
            a fixed order (it is read twice).
        attack: a gacd_tf attack (``PGD``, ``APGD``, ``AutoAttack``...).
        verbose, progress_file: as :func:`evaluate_robustness` (on ``source``).
        return_examples: also return ``x_adv``, ``robust``,
            ``clean_correct`` (on ``target``) and ``labels``.

    Returns:
        dict ``natural_accuracy`` and ``robust_accuracy`` (of ``target``),
        ``num_examples``, ``attack`` (its settings), ``seconds``, and
        ``source``: the white-box result on ``source`` (its natural and
        robust accuracy, and for AutoAttack ``robust_accuracy_by_attack``
        and ``warnings``).

    Example:
    >>> result = evaluate_transfer(load_tflite("tflite/student/2"), keras_student,
    ...                            make_dataset(test, 128, training=False),
    ...                            PGD(steps=20))  # doctest: +SKIP
    """
    start = time.time()
    made = evaluate_robustness(source, dataset, attack, verbose=verbose, return_examples=True,
                               progress_file=progress_file)
    images, labels = [], []
    for batch in dataset:
        x, y, _ = unpack_batch(batch)
        images.append(np.asarray(x, np.float32))
        labels.append(np.asarray(y))
    images, labels = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    if not np.array_equal(labels, np.asarray(made["labels"]).astype(np.int64)):
        raise ValueError("the dataset gave its examples in another order the second time; "
                         "pass a dataset in a fixed order (no shuffling)")
    batch_size = max(1, int(np.asarray(next(iter(dataset))[0]).shape[0]))
    counts = transfer_counts(target, images, labels, made["x_adv"], batch_size)
    source_result = {key: value for key, value in made.items()
                     if key != "attack" and not isinstance(value, np.ndarray)}
    result = {"natural_accuracy": counts["natural_accuracy"],
              "robust_accuracy": counts["robust_accuracy"],
              "num_examples": counts["num_examples"],
              "attack": made.get("attack"),
              "source": source_result,
              "seconds": round(time.time() - start, 2)}
    if return_examples:
        result.update(x_adv=np.asarray(made["x_adv"], np.float32), robust=counts["robust"],
                      clean_correct=counts["clean_correct"], labels=labels,
                      predictions=counts["predictions"])
    return result
