"""Loading user models safely, and checking that a model fits a dataset."""

import hashlib
import os
import zipfile

import keras
import numpy as np

from gacd_tf.errors import ModelError


def load_model(path, safe_mode=True, saved_model=False):
    """Loads a ``.keras`` model (``safe_mode`` on).

    Args:
        path: a ``.keras`` file written by ``model.save``.
        safe_mode: keep True for files you did not write yourself; a model
            file from an untrusted source is code. True refuses Python
            lambdas (Lambda layers) in the file, with a ModelError that names
            ``safe_mode=False`` and the programs' ``--unsafe_load``.
        saved_model: the caller also takes a SavedModel folder gacd-export
            wrote (:func:`gacd_tf.serving.load_classifier` loads either): the
            messages then say so.

    Raises:
        ModelError: the file is missing, is not a ``.keras`` archive or does
            not hold a model, each with the path and what to do.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelError(f"{path} is a folder (a SavedModel?); this needs a .keras model file"
                         + ("; gacd_tf.serving.load_classifier loads either" if saved_model
                            else ""))
    if not os.path.isfile(path):
        what = ".keras file a run wrote" + (" or a SavedModel folder gacd-export wrote"
                                           if saved_model else "")
        raise ModelError(f"model file {path} does not exist; pass the {what}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ModelError(
            f"{path} is not a Keras v3 model file (.keras zip archive); save models with "
            "model.save('NAME.keras')"
            + (" or pass a SavedModel folder gacd-export wrote" if saved_model else "")
        )
    try:
        model = keras.saving.load_model(path, safe_mode=safe_mode, compile=False)
    except Exception as err:  # Keras raises many types for bad archives.
        if safe_mode and "safe_mode" in str(err):
            raise ModelError(
                f"{path} holds Python code (e.g. a Lambda layer) that safe_mode refuses to "
                "load, since loading it would run that code; only if you trust the file's "
                "source, pass safe_mode=False"
            ).on("safe_mode") from err
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"could not load a model from {path} ({first}); the file is corrupt or was not "
            "written by model.save('NAME.keras'): save or download it again") from err
    if not isinstance(model, keras.Model):
        raise ModelError(f"{path} holds a {type(model).__name__}, not a keras.Model")
    return model


def check_model_fits(model, info, role="model", source=None):
    """Refuses a model whose input size or class count does not fit ``info``.

    Args:
        model: a Keras model mapping [0,1] images to logits (or any object
            with ``input_shape`` and ``output_shape``, e.g. a ServedModel).
        info: the dataset's ``DatasetInfo`` (``name``, ``num_classes``,
            ``image_size``).
        role: "model", "teacher", ... used in the message.
        source: where the model came from (a path), used in the message.
    """
    where = f" ({source})" if source else ""
    in_shape = tuple(model.input_shape[1:]) if hasattr(model, "input_shape") else None
    expected = (info.image_size, info.image_size, 3)
    if in_shape is not None and None not in in_shape and in_shape != expected:
        raise ModelError(
            f"{role}{where} takes images of shape {in_shape} but {info.name} has {expected}; "
            f"use a {role} built for {info.name}"
        )
    out_classes = model.output_shape[-1] if hasattr(model, "output_shape") else None
    if out_classes is not None and out_classes != info.num_classes:
        raise ModelError(
            f"{role}{where} has {out_classes} classes but {info.name} has {info.num_classes}; "
            f"use a {role} trained on {info.name}"
        )
    if role == "teacher":
        check_outputs_are_logits(model, role, source)


def outputs_look_like_probabilities(outputs, atol=1e-3):
    """True when every row is >= 0 and sums to 1 (within ``atol``): softmax outputs."""
    outputs = np.asarray(outputs, np.float64)
    return bool(np.all(outputs >= -atol) and np.allclose(outputs.sum(-1), 1.0, atol=atol))


def check_outputs_are_logits(model, role="teacher", source=None):
    """Refuses a model whose outputs are probabilities (e.g. a final softmax), not logits.

    Every distillation loss and attack takes softmax of the outputs itself;
    given probabilities it would distil near-uniform targets without a word.
    Probes the model on four fixed random [0,1] images.
    """
    shape = tuple(model.input_shape[1:])
    if None in shape:
        return
    images = np.random.default_rng(0).uniform(0, 1, (4, *shape)).astype("float32")
    outputs = model(images, training=False)
    if isinstance(outputs, dict):
        outputs = outputs.get("logits")
    elif isinstance(outputs, (list, tuple)):
        outputs = outputs[-1]
    if outputs is not None and outputs_look_like_probabilities(outputs):
        where = f" ({source})" if source else f" {getattr(model, 'name', '')}".rstrip()
        raise ModelError(
            f"{role}{where} outputs probabilities (every row is >= 0 and sums to 1, e.g. a "
            f"final softmax), not logits; every method needs the {role}'s logits: remove the "
            f"final softmax and save the {role} again")


REDUCED_PRECISION = ("float16", "bfloat16")


def float32_copy(model):
    """``model`` itself, or, if any layer computes in float16/bfloat16, a float32 twin.

    Robustness is measured in float32 whatever the training precision: in
    float16 the input gradients of confident points underflow to zero, so
    attacks would stall and robust accuracy read too high. The twin is the
    same architecture (its config with every dtype policy set to float32)
    holding the same weights (variables are float32 under mixed precision).
    Objects that are not Keras models (e.g. a loaded SavedModel) are
    returned as they are.
    """
    if not isinstance(model, keras.Model) or not any(
            getattr(layer, "compute_dtype", "float32") in REDUCED_PRECISION
            for layer in [model, *model._flatten_layers()]):
        return model

    def to_float32(config):
        if isinstance(config, dict):
            if config.get("class_name") == "DTypePolicy" or (
                    config.get("class_name") == "FloatDTypePolicy"):
                return "float32"
            return {key: to_float32(value) for key, value in config.items()}
        if isinstance(config, list):
            return [to_float32(item) for item in config]
        if config in ("mixed_float16", "mixed_bfloat16"):
            return "float32"
        return config

    twin = model.__class__.from_config(to_float32(model.get_config()))
    twin.set_weights(model.get_weights())
    return twin


def weights_digest(model):
    """SHA-256 of all of a model's weights (trainable and not, e.g. batch-norm statistics).

    Equal before and after a run proves a frozen model (teacher, probed
    backbone) stayed frozen.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
