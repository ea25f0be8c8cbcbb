"""TFLite / LiteRT export and evaluation after quantisation (docs/edge.md, issue 28).

A tiny model trained in seconds on separable synthetic 8x8 images stands in
for a student: the ``none`` export gives the Keras logits to float32
round-off, the int8 export keeps natural accuracy within 3 points, Square on
the ``none`` export equals Square on the Keras model example by example, and
a transfer evaluation counts only points correct on the clean image. The
programs' refusals are rows of tests/test_bad_inputs.py.
"""

import collections
import json
import os
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from program_helpers import run_program, write_tiny_cifar10
from tiny_models import tiny

from gacd_tf.attacks import Square
from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.evaluation import evaluate_robustness
from gacd_tf.evaluation.transfer import evaluate_transfer, transfer_counts
from gacd_tf.models.io import check_model_fits
from gacd_tf.serving import (
    TFLiteModel,
    existing_versions,
    export_tflite,
    load_tflite,
    tflite_model,
)


def _runtime_available():
    try:
        tflite_model._Interpreter  # noqa: B018 (ai_edge_litert, else tf.lite)
        return True
    except AttributeError:  # pragma: no cover
        return False


pytestmark = pytest.mark.skipif(
    not _runtime_available(),
    reason="no TFLite runtime: pip install ai-edge-litert (the tflite extra); "
           "tf.lite.Interpreter is missing too")


def synthetic(n, seed):
    """3 classes of 8x8 images, class c brighter in channel c: separable, with noise."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 3).astype(np.int32)
    images = rng.uniform(0.2, 0.6, (n, 8, 8, 3)).astype(np.float32)
    images[np.arange(n), :, :, labels] += 0.2
    return np.clip(images, 0.0, 1.0), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained a few steps, its data, and its none/float16/dynamic/int8 exports."""
    x_train, y_train = synthetic(300, 0)
    x_test, y_test = synthetic(300, 1)
    model = tiny(0, classes=3, width=8)
    model.compile(keras.optimizers.Adam(0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, batch_size=50, epochs=15, verbose=0)
    root = tmp_path_factory.mktemp("tflite")
    paths = {}
    for quantize in ("none", "float16", "dynamic", "int8"):
        calibration = x_train[:60] if quantize == "int8" else None
        paths[quantize] = export_tflite(model, root / quantize, quantize=quantize,
                                        calibration_images=calibration,
                                        calibration_source={"synthetic": 60})
    return dict(model=model, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                paths=paths, root=root)


def accuracy(model, images, labels):
    return float((np.asarray(model(images, training=False)).argmax(-1) == labels).mean())


def test_none_export_gives_the_keras_logits_to_float32_round_off(trained):
    model, tflite = trained["model"], load_tflite(trained["paths"]["none"])
    random = np.random.default_rng(2).random((16, 8, 8, 3), dtype=np.float32)
    for images in (random, trained["x_test"][:64]):
        expected = model(images, training=False).numpy()
        got = tflite(images)
        assert isinstance(got, np.ndarray) and got.shape == expected.shape
        diff = np.abs(got - expected).max()
        scale = max(1.0, float(np.abs(expected).max()))
        print(f"max |logits TFLite - Keras| = {diff:.3g} (logits up to {scale:.3g})")
        assert diff <= 1e-5 * scale
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    # tf tensors in, a tf tensor out (also inside tf.function); batch sizes change freely.
    as_tensor = tflite(tf.constant(random[:5]))
    assert tf.is_tensor(as_tensor) and as_tensor.shape == (5, 3)
    in_graph = tf.function(lambda x: tflite(x, training=False))(tf.constant(random[:7]))
    np.testing.assert_allclose(in_graph.numpy(), tflite(random[:7]), rtol=0, atol=0)


def test_layout_settings_and_model_interface(trained):
    path = trained["paths"]["int8"]
    folder = os.path.dirname(path)
    assert os.path.basename(path) == "model.tflite" and os.path.basename(folder) == "1"
    assert sorted(os.listdir(trained["root"] / "int8")) == ["1"]  # no temporary folder left
    settings = json.loads(pathlib.Path(os.path.join(folder, "settings.json")).read_text())
    assert settings["quantize"] == "int8" and settings["weights"] == "int8"
    assert settings["activations"] == "int8"
    assert settings["input"] == {"name": "images", "dtype": "float32",
                                 "shape": [None, 8, 8, 3], "range": [0.0, 1.0]}
    assert settings["output"] == {"name": "logits", "dtype": "float32", "shape": [None, 3]}
    assert settings["calibration"] == {"examples": 60, "source": {"synthetic": 60}}
    assert settings["size_bytes"] == os.path.getsize(path)
    model = load_tflite(trained["root"] / "int8", num_threads=2)  # the base path works too
    assert model.path == path and model.settings == settings and model.num_threads == 2
    assert model.input_shape == (None, 8, 8, 3) and model.output_shape == (None, 3)
    info = type("Info", (), dict(name="synthetic", num_classes=3, image_size=8))
    check_model_fits(model, info)
    latency = model.latency(runs=5, warmup=1)
    assert latency["num_threads"] == 2 and latency["latency_ms_per_image"] > 0
    assert latency["runtime"].split()[0] == tflite_model.RUNTIME
    # A second export takes the next version.
    again = export_tflite(trained["model"], trained["root"] / "int8", quantize="int8",
                          calibration_images=(trained["x_train"][:10] * 255).astype(np.uint8))
    assert existing_versions(trained["root"] / "int8") == [1, 2] and again.endswith("2/model.tflite")
    # uint8 calibration images are read as pixels / 255: the same ranges, the same accuracy.
    x, y = trained["x_test"], trained["y_test"]
    assert accuracy(load_tflite(again), x, y) >= accuracy(trained["model"], x, y) - 0.03


def tensor_dtypes(path):
    """How many tensors of each dtype the TFLite file holds."""
    details = tflite_model._Interpreter(model_path=str(path)).get_tensor_details()
    return collections.Counter(np.dtype(t["dtype"]).name for t in details)


def test_each_quantisation_is_in_the_file_not_only_in_its_settings(trained, tmp_path):
    dtypes = {q: tensor_dtypes(p) for q, p in trained["paths"].items()}
    print(dtypes)
    assert not dtypes["none"]["int8"] and not dtypes["none"]["float16"]
    assert dtypes["float16"]["float16"] and not dtypes["float16"]["int8"]
    # int8: the activations too, between a float32 input and output.
    assert dtypes["int8"]["int8"] >= 4 and dtypes["int8"]["float32"] == 2
    assert not np.array_equal(load_tflite(trained["paths"]["int8"])(trained["x_test"][:16]),
                              load_tflite(trained["paths"]["none"])(trained["x_test"][:16]))
    # Dynamic range: int8 weights, float32 activations. The converter leaves a weight of
    # under 1,024 values in float (all of the fixture's), so a wider convolution here.
    wide = export_tflite(tiny(0, classes=3, width=64), tmp_path / "dynamic", quantize="dynamic")
    assert tensor_dtypes(wide)["int8"] >= 1 and tensor_dtypes(wide)["float32"] >= 4


def test_int8_natural_accuracy_within_3_points_of_float(trained):
    x, y = trained["x_test"], trained["y_test"]
    reference = accuracy(trained["model"], x, y)
    figures = {q: accuracy(load_tflite(p), x, y) for q, p in trained["paths"].items()}
    sizes = {q: os.path.getsize(p) for q, p in trained["paths"].items()}
    print(f"Keras {reference:.4f}; TFLite {figures}; bytes {sizes}")
    assert reference >= 0.9  # the model learned the task, so the comparison means something
    assert abs(figures["int8"] - reference) <= 0.03
    assert figures["none"] == reference
    for quantize in ("float16", "dynamic"):
        assert abs(figures[quantize] - reference) <= 0.03


def test_square_on_a_none_export_equals_square_on_the_keras_model(trained):
    x, y = trained["x_test"][:24], trained["y_test"][:24]
    tflite = load_tflite(trained["paths"]["none"])
    runs = []
    for model in (trained["model"], tflite):
        x_adv, robust = Square(eps=0.12, n_queries=50, seed=0).perturb(model, x, y)
        runs.append((x_adv.numpy(), robust.numpy()))
    (keras_adv, keras_robust), (lite_adv, lite_robust) = runs
    print(f"robust: Keras {keras_robust.sum()}/24, TFLite {lite_robust.sum()}/24")
    assert 0 < keras_robust.sum() < 24  # some points broken, some not
    np.testing.assert_array_equal(lite_robust, keras_robust)
    np.testing.assert_allclose(lite_adv, keras_adv, rtol=0, atol=1e-6)  # a square moves 0.24
    # The same through evaluate_robustness (inside tf.function, batch by batch).
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    results = [evaluate_robustness(model, dataset, Square(eps=0.12, n_queries=50, seed=0),
                                   verbose=0, return_examples=True)
               for model in (trained["model"], tflite)]
    np.testing.assert_array_equal(results[1]["robust"], results[0]["robust"])
    assert results[1]["robust_accuracy"] == results[0]["robust_accuracy"]


class Brightness:
    """Class 1 if an image's mean pixel is above ``threshold``, else class 0 (tf ops, no
    weights)."""

    input_shape, output_shape = (None, 2, 2, 3), (None, 2)

    def __init__(self, threshold=0.5):
        self.threshold = threshold

    def __call__(self, x, training=False):
        mean = tf.reduce_mean(tf.cast(x, tf.float32), axis=[1, 2, 3])
        return tf.stack([self.threshold - mean, mean - self.threshold], axis=1)


class AcrossTheBoundary:
    """An 'attack' that moves every pixel 0.2 towards the other class of the model it is
    given (plain callable: no perturb), so its examples tell which model it attacked."""

    def __call__(self, model, x, y):
        predicted = tf.cast(tf.argmax(model(x), axis=1), tf.float32)
        return tf.clip_by_value(x + 0.2 * (1.0 - 2.0 * predicted)[:, None, None, None], 0, 1)

    def get_config(self):
        return {"attack": "across_the_boundary"}


def test_transfer_counts_only_points_correct_on_the_clean_image():
    # clean mean, label -> target right on clean?, on x + 0.2?, robust?
    # 0.40, 1 -> no,  yes, NO (the adversarial example is right, the clean image is not)
    # 0.60, 1 -> yes, yes, yes
    # 0.45, 0 -> yes, no,  no
    # 0.10, 0 -> yes, yes, yes
    means = np.array([0.40, 0.60, 0.45, 0.10], np.float32)
    x = np.broadcast_to(means[:, None, None, None], (4, 2, 2, 3)).copy()
    y = np.array([1, 1, 0, 0])
    counts = transfer_counts(Brightness(), x, y, np.clip(x + 0.2, 0, 1), batch_size=3)
    np.testing.assert_array_equal(counts["clean_correct"], [False, True, True, True])
    np.testing.assert_array_equal(counts["adversarial_correct"], [True, True, False, True])
    np.testing.assert_array_equal(counts["robust"], [False, True, False, True])
    assert counts["robust_accuracy"] == 0.5 and counts["natural_accuracy"] == 0.75


def test_transfer_attacks_the_source_and_counts_on_the_target():
    # mean, label -> source (0.42) predicts, x_adv (made on the source), source right on
    # clean / on x_adv; target (0.5) right on clean / on x_adv, robust on the target
    # 0.40, 1 -> 0, 0.60: no / yes; no / yes, no
    # 0.60, 1 -> 1, 0.40: yes / no; yes / no, no
    # 0.45, 0 -> 1, 0.25: no / yes; yes / yes, yes
    # 0.05, 0 -> 0, 0.25: yes / yes; yes / yes, yes
    means = np.array([0.40, 0.60, 0.45, 0.05], np.float32)
    x = np.broadcast_to(means[:, None, None, None], (4, 2, 2, 3)).copy()
    y = np.array([1, 1, 0, 0])
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(2)
    result = evaluate_transfer(Brightness(0.5), Brightness(0.42), dataset, AcrossTheBoundary(),
                               verbose=0, return_examples=True)
    want = np.array([0.60, 0.40, 0.25, 0.25], np.float32)  # on the target: 0.65 third
    np.testing.assert_allclose(result["x_adv"], np.broadcast_to(want[:, None, None, None],
                                                                x.shape), atol=1e-6)
    np.testing.assert_array_equal(result["clean_correct"], [False, True, True, True])
    np.testing.assert_array_equal(result["robust"], [False, False, True, True])
    assert result["robust_accuracy"] == 0.5 and result["natural_accuracy"] == 0.75
    # The source's own white-box figures come with it.
    assert result["source"]["natural_accuracy"] == 0.5
    assert result["source"]["robust_accuracy"] == 0.25


def test_transfer_from_the_keras_model_to_its_int8_export(trained):
    from gacd_tf.attacks import PGD

    x, y = trained["x_test"][:30], trained["y_test"][:30]
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(10)
    attack = PGD(eps=0.12, step_size=0.03, steps=5, seed=0)
    result = evaluate_transfer(load_tflite(trained["paths"]["int8"]), trained["model"],
                               dataset, attack, verbose=0, return_examples=True)
    assert result["robust_accuracy"] <= result["natural_accuracy"]
    assert not np.any(result["robust"] & ~result["clean_correct"])
    assert np.abs(result["x_adv"] - x).max() <= 0.12 + 1e-6
    # The examples are the white-box ones of the Keras model (the source), not the int8's.
    white_box = evaluate_robustness(trained["model"], dataset, attack, verbose=0,
                                    return_examples=True)
    np.testing.assert_array_equal(result["x_adv"], white_box["x_adv"])
    assert result["source"]["robust_accuracy"] == white_box["robust_accuracy"]
    assert result["source"]["natural_accuracy"] == white_box["natural_accuracy"]
    print(f"int8: natural {result['natural_accuracy']:.3f}, transfer PGD "
          f"{result['robust_accuracy']:.3f}; Keras white-box {result['source']}")


def test_library_errors_name_their_arguments(trained, tmp_path):
    model = trained["model"]
    with pytest.raises(ConfigError, match=r"quantize=int4: unknown quantisation; choose one of "
                                          r"none, float16, dynamic, int8") as err:
        export_tflite(model, tmp_path / "a", quantize="int4")
    assert err.value.argument == "quantize"
    with pytest.raises(ConfigError, match="quantize=int8 needs calibration_images") as err:
        export_tflite(model, tmp_path / "a", quantize="int8")
    assert set(err.value.arguments) == {"quantize", "calibration_images"}
    with pytest.raises(ConfigError, match="calibration_images are used only with "
                                          "quantize=int8, not quantize=dynamic"):
        export_tflite(model, tmp_path / "a", quantize="dynamic",
                      calibration_images=trained["x_train"][:4])
    with pytest.raises(ConfigError, match=r"calibration_images=<array \(4, 16, 16, 3\) "
                                          r"float32>: need images \[N, 8, 8, 3\]"):
        export_tflite(model, tmp_path / "a", quantize="int8",
                      calibration_images=np.zeros((4, 16, 16, 3), np.float32))
    with pytest.raises(ConfigError, match="pixels must be finite and in"):
        export_tflite(model, tmp_path / "a", quantize="int8",
                      calibration_images=np.full((4, 8, 8, 3), 255.0, np.float32))
    assert not (tmp_path / "a").exists() or existing_versions(tmp_path / "a") == []
    with pytest.raises(ConfigError, match="num_threads=0 must be an integer >= 1"):
        TFLiteModel(trained["paths"]["none"], num_threads=0)
    with pytest.raises(ModelError, match="does not exist"):
        TFLiteModel(tmp_path / "missing.tflite")
    (tmp_path / "bad.tflite").write_bytes(b"\x00garbage\xff" * 10)
    with pytest.raises(ModelError, match="could not load a TFLite model from .*bad.tflite"):
        TFLiteModel(tmp_path / "bad.tflite")
    with pytest.raises(ModelError, match=r"takes images float32 \[batch, 8, 8, 3\]"):
        load_tflite(trained["paths"]["none"])(np.zeros((2, 4, 4, 3), np.float32))


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """A CIFAR-10-sized Keras model file and tiny CIFAR-10 files, for the programs."""
    root = tmp_path_factory.mktemp("programs")
    data = write_tiny_cifar10(root / "data", train=40, test=10)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="images")
    h = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    h = keras.layers.GlobalAveragePooling2D(name="features")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="logits")(h))
    model.save(root / "model.keras")
    return dict(root=root, data=data, keras=root / "model.keras")


def test_programs_export_int8_then_evaluate_square_and_transfer(programs, tmp_path):
    root = programs["root"]
    exported = run_program("export", f"--model={programs['keras']}",
                           f"--export_dir={tmp_path}/tflite", "--format=tflite",
                           "--quantize=int8", f"--data_dir={programs['data']}",
                           "--calibration_examples=20")
    assert exported.returncode == 0, exported.stderr[-3000:]
    path = exported.stdout.strip().splitlines()[-1]
    assert path == f"{tmp_path}/tflite/1/model.tflite" and os.path.isfile(path)
    settings = json.loads(pathlib.Path(f"{tmp_path}/tflite/1/settings.json").read_text())
    assert settings["quantize"] == "int8"
    source = settings["calibration"]["source"]
    assert settings["calibration"]["examples"] == 20
    assert (source["dataset"], source["split"], source["class_balanced"]) == \
        ("cifar10", "train", True)

    common = [f"--data_dir={programs['data']}", "--batch_size=5", "--verbose=0",
              "--latency_runs=3"]
    square = run_program("evaluate", f"--model={tmp_path}/tflite", "--attack=square",
                         "--square_queries=5", f"--output={tmp_path}/square.json", *common)
    assert square.returncode == 0, square.stderr[-3000:]
    result = json.loads(pathlib.Path(f"{tmp_path}/square.json").read_text())
    assert result["num_examples"] == 10 and result["attack"]["n_queries"] == 5
    assert result["robust_accuracy"] <= result["natural_accuracy"]
    assert result["size_bytes"] == os.path.getsize(path) and result["quantize"] == "int8"
    assert result["num_threads"] == 1 and result["latency_ms_per_image"] > 0
    assert "bytes, latency=" in square.stdout

    transfer = run_program("evaluate", f"--model={path}", f"--transfer_from={root}/model.keras",
                           "--attack=pgd", "--attack_steps=2", "--num_threads=2",
                           f"--output={tmp_path}/transfer.json", *common)
    assert transfer.returncode == 0, transfer.stderr[-3000:]
    result = json.loads(pathlib.Path(f"{tmp_path}/transfer.json").read_text())
    assert result["transfer_from"] == f"{root}/model.keras"
    assert result["robust_accuracy_by_attack"] == {"transfer:pgd": result["robust_accuracy"]}
    assert result["robust_accuracy"] <= result["natural_accuracy"]
    assert set(result["source"]) >= {"natural_accuracy", "robust_accuracy"}
    assert result["num_threads"] == 2

    natural = run_program("evaluate", f"--model={path}", f"--output={tmp_path}/natural.json",
                          *common)
    assert natural.returncode == 0, natural.stderr[-3000:]
    result = json.loads(pathlib.Path(f"{tmp_path}/natural.json").read_text())
    assert result["robust_accuracy"] is None and result["attack"] is None
    assert "natural_accuracy=" in natural.stdout
