"""A TFLite (LiteRT) model file seen as a gacd_tf classifier ``model(x, training=False)``.

The interpreter is the maintained LiteRT runtime (``ai_edge_litert``, the
``tflite`` extra); without it, TensorFlow's own ``tf.lite.Interpreter``
(deprecated, but still in TF 2.21) runs the file. :data:`RUNTIME` says which.
"""

import json
import os
import threading
import time

import numpy as np
import tensorflow as tf

from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.serving.versions import existing_versions

TFLITE_FILE = "model.tflite"
SETTINGS_FILE = "settings.json"

try:  # the maintained runtime (pip install ai-edge-litert, the tflite extra)
    from ai_edge_litert.interpreter import Interpreter as _Interpreter

    RUNTIME = "ai_edge_litert"
except ImportError:  # pragma: no cover - depends on what is installed
    _Interpreter = tf.lite.Interpreter
    RUNTIME = "tf.lite"


def runtime_version():
    """``"ai_edge_litert 2.3.0"`` or ``"tf.lite 2.21.0"``: the interpreter that runs models."""
    if RUNTIME == "ai_edge_litert":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"{RUNTIME} {version('ai-edge-litert')}"
        except PackageNotFoundError:  # pragma: no cover - e.g. the nightly package
            return RUNTIME
    return f"{RUNTIME} {tf.__version__}"


def tflite_file(path):
    """The ``model.tflite`` that ``path`` names, or None when it names none.

    ``path`` may be a ``.tflite`` file (which need not exist yet: a caller
    then reports it missing), a version folder ``BASE/NAME/N`` holding
    ``model.tflite``, or a base path ``BASE/NAME`` whose highest version
    holding a model is taken (None when that is a SavedModel).
    """
    path = os.fspath(path)
    if path.endswith(".tflite") and not os.path.isdir(path):
        return path
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, TFLITE_FILE)):
        return os.path.join(path, TFLITE_FILE)
    for version in reversed(existing_versions(path)):
        folder = os.path.join(path, str(version))
        if os.path.isfile(os.path.join(folder, TFLITE_FILE)):
            return os.path.join(folder, TFLITE_FILE)
        if os.path.isfile(os.path.join(folder, "saved_model.pb")):
            return None  # the highest version is a SavedModel
    return None


def _check_threads(num_threads):
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)) \
            or num_threads < 1:
        raise ConfigError(f"num_threads={num_threads} must be an integer >= 1"
                          ).on("num_threads")
    return int(num_threads)


class TFLiteModel:
    """Callable float32 images ``[B, H, W, 3]`` in [0, 1] -> logits ``[B, C]`` of a TFLite file.

    Takes NumPy arrays (returns NumPy) or tf tensors (returns a tf tensor,
    through ``tf.numpy_function``, so it also runs inside ``tf.function`` and
    ``tf.while_loop``: score-based attacks such as
    :class:`gacd_tf.attacks.Square` and :func:`gacd_tf.evaluation.evaluate_robustness`
    take it as they take a Keras model). The interpreter is resized to each
    batch size it is given. No gradients flow through it: a quantised model's
    gradients are zero almost everywhere, so white-box attacks would overstate
    its robustness (SPEC "Deployment at the edge"); attack it with Square, or
    count adversarial examples made on the float model
    (:func:`gacd_tf.evaluation.transfer.evaluate_transfer`).

    Args:
        path: a ``.tflite`` file, or a folder ``BASE/NAME/N`` / ``BASE/NAME``
            that :func:`gacd_tf.serving.export_tflite` wrote (its highest
            version).
        num_threads: CPU threads of the interpreter (default 1, the
            figure the docs report).

    Attributes:
        input_shape: ``(None, H, W, 3)``; output_shape: ``(None, C)`` (for
            :func:`gacd_tf.models.io.check_model_fits`).
        path, name: the ``.tflite`` file. size_bytes: its size on disk.
        num_threads, runtime: the interpreter's settings (``"ai_edge_litert"``
            or ``"tf.lite"``).
        settings: the export's ``settings.json`` beside the file (a dict), or
            None.

    Raises:
        ModelError: the file is missing or not a TFLite model of images ->
            logits. ConfigError: a bad ``num_threads``.

    Example:
    >>> model = TFLiteModel("tflite/student/1/model.tflite", num_threads=1)  # doctest: +SKIP
    >>> logits = model(images)  # doctest: +SKIP
    >>> model.latency()["latency_ms_per_image"]  # doctest: +SKIP
    """

    def __init__(self, path, num_threads=1):
        self.num_threads = _check_threads(num_threads)
        given = os.fspath(path)
        found = tflite_file(given)
        if found is None:
            raise ModelError(f"{given} holds no {TFLITE_FILE} and no integer version folder "
                             "with one; pass a .tflite file or a folder gacd-export "
                             "--format=tflite wrote")
        if not os.path.isfile(found):
            raise ModelError(f"TFLite model file {found} does not exist; pass a .tflite file "
                             "gacd-export --format=tflite wrote")
        self.path = self.name = found
        self.runtime = RUNTIME
        self.size_bytes = os.path.getsize(found)
        try:
            self._interpreter = _Interpreter(model_path=found, num_threads=self.num_threads)
        except Exception as err:  # the runtimes raise ValueError/RuntimeError for bad files
            first = str(err).strip().splitlines()[0] if str(err).strip() else \
                type(err).__name__
            raise ModelError(f"could not load a TFLite model from {found} ({first}); the file "
                             "is corrupt or not a TFLite model: export it again with "
                             "gacd-export --format=tflite") from err
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"TFLite model {found} has {len(inputs)} inputs and "
                             f"{len(outputs)} outputs; gacd_tf needs images in, logits out "
                             "(export it with gacd-export --format=tflite)")
        self._input, self._output = inputs[0], outputs[0]
        in_shape = [int(d) for d in self._input["shape_signature"]]
        out_shape = [int(d) for d in self._output["shape_signature"]]
        if (self._input["dtype"] != np.float32 or len(in_shape) != 4 or in_shape[-1] != 3
                or self._output["dtype"] != np.float32 or len(out_shape) != 2):
            raise ModelError(
                f"TFLite model {found} maps {np.dtype(self._input['dtype']).name} "
                f"{in_shape} to {np.dtype(self._output['dtype']).name} {out_shape}; gacd_tf "
                "needs float32 images [batch, H, W, 3] in, float32 logits [batch, C] out "
                "(export it with gacd-export --format=tflite)")
        self.input_shape = (None, in_shape[1], in_shape[2], 3)
        self.output_shape = (None, out_shape[1])
        self._batch = None
        self._lock = threading.Lock()
        settings = os.path.join(os.path.dirname(found), SETTINGS_FILE)
        self.settings = None
        if os.path.isfile(settings):
            with open(settings) as f:
                self.settings = json.load(f)

    def _resize(self, batch):
        if batch != self._batch:
            self._interpreter.resize_tensor_input(
                self._input["index"], [batch, *self.input_shape[1:]], strict=False)
            self._interpreter.allocate_tensors()
            self._batch = batch

    def predict(self, images):
        """Logits (float32 NumPy ``[B, C]``) of float32 images ``[B, H, W, 3]`` in [0, 1]."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or images.shape[1:] != self.input_shape[1:]:
            raise ModelError(f"TFLite model {self.path} takes images float32 [batch, "
                             f"{self.input_shape[1]}, {self.input_shape[2]}, 3] in [0, 1]; "
                             f"got shape {images.shape}")
        if images.shape[0] == 0:
            return np.zeros([0, self.output_shape[1]], np.float32)
        with self._lock:
            self._resize(images.shape[0])
            self._interpreter.set_tensor(self._input["index"], np.ascontiguousarray(images))
            self._interpreter.invoke()
            return np.array(self._interpreter.get_tensor(self._output["index"]), np.float32)

    def __call__(self, x, training=False):
        """Logits of ``x``: NumPy in, NumPy out; a tf tensor in, a tf tensor out."""
        if training:
            raise ModelError(f"TFLite model {self.path} is an inference graph; it cannot run "
                             "with training=True (fine-tune the .keras model instead)")
        if not tf.is_tensor(x):
            return self.predict(x)
        x = tf.cast(x, tf.float32)
        logits = tf.numpy_function(self.predict, [x], tf.float32, stateful=True)
        logits.set_shape([x.shape[0], self.output_shape[1]])
        return logits

    def latency(self, runs=100, warmup=10, images=None):
        """Milliseconds per image at batch 1 on ``num_threads`` threads (the median of ``runs``).

        Times ``set_tensor`` + ``invoke`` + ``get_tensor`` with
        ``time.perf_counter`` after ``warmup`` untimed runs, on ``images``
        (default: one fixed random image).

        Returns:
            dict ``latency_ms_per_image`` (median), ``latency_ms_p90``,
            ``latency_runs``, ``latency_batch_size`` (1), ``num_threads``,
            ``runtime``.
        """
        if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
            raise ConfigError(f"runs={runs} must be an integer >= 1").on("runs")
        if images is None:
            images = np.random.default_rng(0).random((1, *self.input_shape[1:]),
                                                     dtype=np.float32)
        images = np.asarray(images, np.float32)
        times = []
        for i in range(int(warmup) + int(runs)):
            one = images[i % len(images)][None]
            start = time.perf_counter()
            self.predict(one)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
        return {"latency_ms_per_image": float(np.median(times)),
                "latency_ms_p90": float(np.percentile(times, 90)),
                "latency_runs": int(runs), "latency_batch_size": 1,
                "num_threads": self.num_threads, "runtime": runtime_version()}


def load_tflite(path, num_threads=1):
    """:class:`TFLiteModel` of a ``.tflite`` file or of a folder gacd-export wrote."""
    return TFLiteModel(path, num_threads=num_threads)
