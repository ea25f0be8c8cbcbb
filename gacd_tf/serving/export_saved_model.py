"""Export a classifier as a versioned TF Serving SavedModel."""

import tensorflow as tf

from gacd_tf.serving.serving_module import ServingModule
from gacd_tf.serving.write_version import write_version


def export_saved_model(model, export_dir, version=None, overwrite=False):
    """Writes ``model`` to ``export_dir/N`` as a SavedModel TF Serving loads as is.

    Uses ``tf.saved_model.save`` with the signatures of
    :class:`ServingModule` (``serving_default``, ``features``,
    ``encoded_images``) and the tag ``serve``; the write is atomic (see
    :func:`write_version`).

    Args:
        model: a Keras classifier following the gacd_tf interface, fixed H x W.
        export_dir: the model base path ``BASE/NAME``.
        version: integer version ``N``; ``None`` takes the next free one.
        overwrite: replace an existing version ``N``.

    Returns:
        the version folder ``BASE/NAME/N`` (str).

    Raises:
        ModelError: the model does not follow the interface or has no fixed size.
        ConfigError: bad folder/version, or the version exists without ``overwrite``.

    Example:
    >>> export_saved_model(build_model("resnet8"), "exports/resnet8")  # doctest: +SKIP
    'exports/resnet8/1'
    """
    module = ServingModule(model)
    signatures = module.signatures()

    def write(folder):
        tf.saved_model.save(module, folder, signatures=signatures)

    return write_version(export_dir, write, version=version, overwrite=overwrite)
