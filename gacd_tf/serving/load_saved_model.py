"""Load an exported SavedModel (a version folder, or the highest version of BASE/NAME)."""

import os

import tensorflow as tf

from gacd_tf.errors import ModelError
from gacd_tf.models.io import load_model
from gacd_tf.serving.served_model import ServedModel
from gacd_tf.serving.versions import existing_versions

SAVED_MODEL_FILE = "saved_model.pb"


def _resolve_version_dir(path):
    """``path`` itself if it holds ``saved_model.pb``, else its highest version folder."""
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        return path
    versions = existing_versions(path)
    for version in reversed(versions):
        folder = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(folder, SAVED_MODEL_FILE)):
            return folder
    raise ModelError(
        f"{path} holds no {SAVED_MODEL_FILE} and no integer version folder with one; pass a "
        "version folder BASE/NAME/N or a base path BASE/NAME that gacd-export wrote")


def load_saved_model(path):
    """Loads a SavedModel with ``tf.saved_model.load`` as a :class:`ServedModel`.

    Args:
        path: a version folder ``BASE/NAME/N`` (with ``saved_model.pb``) or a
            model base path ``BASE/NAME`` (its highest version is taken).

    Returns:
        :class:`ServedModel`: ``model(x, training=False) -> logits``, with
        ``input_shape`` and ``output_shape``; gradients flow through it.

    Raises:
        ModelError: the folder is missing, holds no SavedModel, or the
            SavedModel lacks the gacd_tf ``serving_default`` signature.

    Example:
    >>> model = load_saved_model("exports/resnet8")  # doctest: +SKIP
    >>> model.input_shape, model.output_shape  # doctest: +SKIP
    ((None, 32, 32, 3), (None, 10))
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelError(f"SavedModel folder {path} does not exist; pass a folder gacd-export "
                         "wrote")
    folder = _resolve_version_dir(path)
    try:
        loaded = tf.saved_model.load(folder, tags=["serve"])
    except Exception as err:  # TF raises many types for bad SavedModels.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"could not load a SavedModel from {folder} ({first}); the folder is "
                         "corrupt or not a SavedModel: pass a folder gacd-export wrote, or "
                         "export the model again") from err
    return ServedModel(loaded, folder)


def load_classifier(path, safe_mode=True):
    """A classifier from a ``.keras`` file or from a SavedModel folder gacd-export wrote.

    Args:
        path: a ``.keras`` file (:func:`gacd_tf.models.io.load_model`), or a
            SavedModel version folder ``BASE/NAME/N`` or base path
            ``BASE/NAME`` (its highest version), returned as a
            :class:`ServedModel`: callable ``model(x, training=False) ->
            logits`` with ``input_shape`` and ``output_shape``, gradients flow
            through it; not a keras.Model.
        safe_mode: for ``.keras`` files (see ``load_model``).

    Raises:
        ModelError: a path that is neither, with what to pass.
    """
    if os.path.isdir(os.fspath(path)):
        return load_saved_model(path)
    return load_model(path, safe_mode=safe_mode, saved_model=True)
