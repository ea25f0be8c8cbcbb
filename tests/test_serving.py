"""Serving: SavedModel/ONNX export, signatures, atomic versions, loading back, programs."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from program_helpers import program_env, run_program

from gacd_tf.attacks import PGD
from gacd_tf.data import load_split, write_cifar10
from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.evaluation import evaluate_robustness
from gacd_tf.models import build_model, features_and_logits
from gacd_tf.models.io import check_model_fits, load_model
from gacd_tf.serving import (
    existing_versions,
    export_onnx,
    export_saved_model,
    load_classifier,
    load_saved_model,
    write_version,
)

TOLERANCE = 1e-5
SIGNATURES = ("serving_default", "features", "encoded_images")
BIN = os.path.dirname(sys.executable)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A seeded resnet8, its .keras file and its SavedModel export (version 1)."""
    keras.utils.set_random_seed(0)
    model = build_model("resnet8", num_classes=10)
    root = tmp_path_factory.mktemp("serving")
    model.save(root / "model.keras")
    path = export_saved_model(model, root / "exports" / "resnet8")
    return dict(model=model, keras_path=root / "model.keras", base=root / "exports" / "resnet8",
                path=path, loaded=tf.saved_model.load(path))


def compare_with_keras(exported, images):
    model, loaded = exported["model"], exported["loaded"]
    out = {k: v.numpy() for k, v in
           loaded.signatures["serving_default"](images=tf.constant(images)).items()}
    features, logits = (t.numpy() for t in features_and_logits(model)(images, training=False))
    diff = np.abs(out["logits"] - logits).max()
    assert diff <= TOLERANCE, f"max |logits SavedModel - Keras| = {diff:.3g}"
    fdiff = np.abs(loaded.signatures["features"](images=tf.constant(images))["features"].numpy()
                   - features).max()
    assert fdiff <= TOLERANCE, f"max |features SavedModel - Keras| = {fdiff:.3g}"
    np.testing.assert_array_equal(out["class_ids"], out["logits"].argmax(-1))
    assert out["class_ids"].dtype == np.int64
    pdiff = np.abs(out["probabilities"] - softmax(out["logits"].astype(np.float64))).max()
    assert pdiff <= 1e-6, f"max |probabilities - softmax(logits)| = {pdiff:.3g}"
    return diff


def test_outputs_equal_the_keras_model_on_random_images(exported):
    images = np.random.default_rng(0).random((16, 32, 32, 3), dtype=np.float32)
    diff = compare_with_keras(exported, images)
    print(f"random images: max |logits diff| = {diff:.3g}")


def test_outputs_equal_the_keras_model_on_real_cifar10(exported, cifar10_dir):
    test = load_split("cifar10", "test", cifar10_dir, examples=64)
    diff = compare_with_keras(exported, test.images.astype(np.float32) / 255.0)
    print(f"CIFAR-10 test images: max |logits diff| = {diff:.3g}")


def test_layout_is_what_tf_serving_loads(exported):
    base, path = exported["base"], exported["path"]
    assert os.path.basename(path) == "1" and existing_versions(base) == [1]
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert os.path.isfile(os.path.join(path, "variables", "variables.index"))
    assert sorted(os.listdir(base)) == ["1"]  # no temporary folder left
    assert set(SIGNATURES) <= set(exported["loaded"].signatures)


def test_saved_model_cli_shows_the_signatures_and_runs_an_npy(exported, tmp_path):
    cli = os.path.join(BIN, "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip(f"saved_model_cli not found next to {sys.executable}")
    show = subprocess.run([cli, "show", "--dir", str(exported["path"]), "--all"],
                          capture_output=True, text=True, timeout=120, env=program_env())
    assert show.returncode == 0, show.stderr[-2000:]
    for name in SIGNATURES:
        assert f"signature_def['{name}']" in show.stdout
    for name in ("inputs['images']", "outputs['probabilities']", "outputs['logits']",
                 "outputs['class_ids']", "outputs['features']", "dtype: DT_STRING",
                 "shape: (-1, 32, 32, 3)"):
        assert name in show.stdout, name

    images = np.random.default_rng(1).random((3, 32, 32, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", images)
    run = subprocess.run([cli, "run", "--dir", str(exported["path"]), "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"images={tmp_path / 'x.npy'}",
                          "--outdir", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, env=program_env())
    assert run.returncode == 0, run.stderr[-2000:]
    logits = np.load(tmp_path / "out" / "logits.npy")
    diff = np.abs(logits - exported["model"](images, training=False).numpy()).max()
    assert diff <= TOLERANCE, f"saved_model_cli run: max |logits diff| = {diff:.3g}"


def test_reloads_in_a_fresh_process_without_gacd_tf(exported, tmp_path):
    images = np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32)
    np.save(tmp_path / "x.npy", images)
    expected = exported["loaded"].signatures["serving_default"](images=tf.constant(images))
    np.savez(tmp_path / "expected.npz", **{k: v.numpy() for k, v in expected.items()})
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import tensorflow as tf
        loaded = tf.saved_model.load({str(exported['path'])!r})
        out = loaded.signatures["serving_default"](images=tf.constant(np.load({str(tmp_path / 'x.npy')!r})))
        expected = np.load({str(tmp_path / 'expected.npz')!r})
        for key in ("probabilities", "logits", "class_ids"):
            np.testing.assert_allclose(out[key].numpy(), expected[key], rtol=0, atol=1e-6)
        assert not [m for m in sys.modules if m.startswith("gacd_tf")], "gacd_tf was imported"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, env=program_env(), cwd=tmp_path)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_encoded_png_images_equal_serving_default_on_the_decoded_images(exported):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    pngs = tf.stack([tf.io.encode_png(image) for image in pixels])
    decoded = tf.stack([tf.io.decode_png(png, channels=3) for png in pngs]).numpy()
    np.testing.assert_array_equal(decoded, pixels)  # PNG is lossless
    signatures = exported["loaded"].signatures
    from_bytes = signatures["encoded_images"](images=pngs)
    from_floats = signatures["serving_default"](images=tf.constant(pixels.astype(np.float32)
                                                                    / 255.0))
    for key in ("probabilities", "logits", "class_ids"):
        np.testing.assert_array_equal(from_bytes[key].numpy(), from_floats[key].numpy(), key)


def test_encoded_images_decode_jpeg_grey_and_other_sizes(exported):
    rng = np.random.default_rng(4)
    colour = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (64, 48, 1), dtype=np.uint8)
    rgba = rng.integers(0, 256, (20, 20, 4), dtype=np.uint8)
    jpeg = tf.io.encode_jpeg(colour)
    batch = tf.stack([jpeg, tf.io.encode_png(grey), tf.io.encode_png(rgba)])
    out = exported["loaded"].signatures["encoded_images"](images=batch)
    assert out["logits"].shape == (3, 10) and out["class_ids"].shape == (3,)
    # The same as the float signature on the images decoded and resized by hand: RGB
    # (grey repeated, alpha dropped), k / 255, bilinear with antialiasing to 32 x 32.

    def resized(pixels):
        return tf.image.resize(pixels.astype(np.float32) / 255.0, [32, 32], "bilinear",
                               antialias=True).numpy()

    by_hand = np.stack([tf.io.decode_jpeg(jpeg).numpy().astype(np.float32) / 255.0,
                        resized(np.repeat(grey, 3, axis=-1)), resized(rgba[..., :3])])
    want = exported["loaded"].signatures["serving_default"](images=tf.constant(by_hand))
    np.testing.assert_allclose(out["logits"].numpy(), want["logits"].numpy(), atol=1e-4)


def test_wrong_dtype_or_shape_fails_clearly_at_the_signature(exported):
    serve = exported["loaded"].signatures["serving_default"]
    features = exported["loaded"].signatures["features"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
        serve(images=tf.zeros([1, 32, 32, 3], tf.float64))
    for shape in ([1, 16, 16, 3], [1, 32, 32, 1], [2, 32, 48, 3]):
        for signature in (serve, features):
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"images must be float32 \[batch, 32, 32, 3\]"):
                signature(images=tf.zeros(shape))
    with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a string"):
        exported["loaded"].signatures["encoded_images"](images=tf.zeros([1]))
    # The check is in the graph, so TF Serving's C++ runtime reports it too.
    pb = open(os.path.join(exported["path"], "saved_model.pb"), "rb").read()
    assert b"images must be float32 [batch, 32, 32, 3]" in pb


def test_interrupted_export_leaves_no_version_folder(exported, tmp_path, monkeypatch):
    base = tmp_path / "net"
    real_save = tf.saved_model.save

    def save_then_die(obj, folder, **kwargs):
        real_save(obj, folder, **kwargs)  # a complete-looking SavedModel ...
        raise KeyboardInterrupt  # ... interrupted before publication

    monkeypatch.setattr(tf.saved_model, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        export_saved_model(exported["model"], base)
    assert existing_versions(base) == [] and os.listdir(base) == []

    def write_half(folder):
        open(os.path.join(folder, "saved_model.pb"), "wb").write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_version(base, write_half, version=3)
    assert os.listdir(base) == []


def test_versions_number_up_and_are_never_overwritten_silently(exported, tmp_path):
    base = tmp_path / "net"

    def writer(text):
        return lambda folder: open(os.path.join(folder, "payload"), "w").write(text)

    assert write_version(base, writer("a")) == str(base / "1")
    assert write_version(base, writer("b")) == str(base / "2")
    os.makedirs(base / ".tmp-export-stale")  # leftovers of a killed export are not versions
    assert write_version(base, writer("c"), version=7) == str(base / "7")
    assert write_version(base, writer("d")) == str(base / "8")
    with pytest.raises(ConfigError, match="already exists.*overwrite=True"):
        write_version(base, writer("x"), version=2)
    assert (base / "2" / "payload").read_text() == "b"
    assert write_version(base, writer("y"), version=2, overwrite=True) == str(base / "2")
    assert (base / "2" / "payload").read_text() == "y"
    assert existing_versions(base) == [1, 2, 7, 8]
    assert sorted(os.listdir(base)) == [".tmp-export-stale", "1", "2", "7", "8"]
    with pytest.raises(ConfigError, match="integer >= 0"):
        write_version(base, writer("z"), version=-1)

    # A real overwrite replaces the served model.
    other = build_model("resnet8", num_classes=10, model_name="other")
    export_saved_model(other, base, version=2, overwrite=True)
    images = np.random.default_rng(5).random((2, 32, 32, 3), dtype=np.float32)
    served = load_saved_model(base / "2")
    np.testing.assert_allclose(served(images).numpy(), other(images).numpy(), atol=TOLERANCE)
    # BASE/NAME resolves to the highest version holding a SavedModel (7 and 8 hold none).
    assert load_saved_model(base).path == str(base / "2")


def test_loader_takes_the_highest_version_and_fits_the_dataset(exported):
    from gacd_tf.data.datasets import DATASETS

    served = load_classifier(exported["base"])
    assert served.path == str(exported["path"])
    assert served.input_shape == (None, 32, 32, 3) and served.output_shape == (None, 10)
    check_model_fits(served, DATASETS.get("cifar10")[0])
    with pytest.raises(ModelError, match="has 10 classes but cifar100 has 100"):
        check_model_fits(served, DATASETS.get("cifar100")[0])
    with pytest.raises(ModelError, match="is a folder"):
        load_model(exported["base"])  # .keras callers keep refusing folders
    with pytest.raises(ModelError, match="holds no saved_model.pb"):
        load_saved_model(exported["path"] + "/variables")


def test_onnx_outputs_match(exported, tmp_path):
    pytest.importorskip("tf2onnx", reason="the onnx extra (tf2onnx) is not installed")
    ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
    path = export_onnx(exported["model"], tmp_path / "net")
    assert path == str(tmp_path / "net" / "1" / "model.onnx")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == ["class_ids", "logits", "probabilities"]
    images = np.random.default_rng(6).random((8, 32, 32, 3), dtype=np.float32)
    out = dict(zip(names, session.run(None, {"images": images})))
    logits = exported["model"](images, training=False).numpy()
    diff = np.abs(out["logits"] - logits).max()
    assert diff <= TOLERANCE, f"ONNX: max |logits diff| = {diff:.3g}"
    pdiff = np.abs(out["probabilities"] - softmax(logits)).max()
    assert pdiff <= TOLERANCE, f"ONNX: max |probabilities diff| = {pdiff:.3g}"
    np.testing.assert_array_equal(out["class_ids"], logits.argmax(-1))
    print(f"ONNX: max |logits diff| = {diff:.3g}")


def test_robust_accuracy_through_the_saved_model_equals_the_keras_figure(exported):
    model = exported["model"]
    images = np.random.default_rng(7).random((32, 32, 32, 3), dtype=np.float32)
    labels = model(images, training=False).numpy().argmax(-1).astype(np.int32)
    labels[::4] = (labels[::4] + 1) % 10  # some natural errors too
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    attack = PGD(eps=8 / 255, step_size=2 / 255, steps=3, random_start=False, seed=0)
    from_keras = evaluate_robustness(model, dataset, attack, verbose=0)
    served = load_saved_model(exported["path"])
    from_saved = evaluate_robustness(served, dataset, attack, verbose=0)
    for key in ("natural_accuracy", "robust_accuracy", "num_examples"):
        assert from_saved[key] == from_keras[key], (key, from_saved, from_keras)
    assert from_keras["robust_accuracy"] < from_keras["natural_accuracy"]  # the attack bites


def test_export_and_evaluate_programs(exported, tmp_path):
    rng = np.random.default_rng(8)
    write_cifar10(tmp_path / "data", "test", rng.integers(0, 256, (10, 32, 32, 3), np.uint8),
                  np.arange(10))
    base = tmp_path / "exports" / "student"
    result = run_program("export", f"--model={exported['keras_path']}", f"--export_dir={base}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == str(base / "1")
    assert existing_versions(base) == [1]

    out = tmp_path / "eval.json"
    result = run_program("evaluate", f"--model={base}", f"--data_dir={tmp_path / 'data'}",
                         "--attack_steps=1", "--batch_size=5", f"--output={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["num_examples"] == 10 and metrics["model"] == str(base)
    # The export measures as the .keras file it came from, same flags.
    from_keras = tmp_path / "eval_keras.json"
    result = run_program("evaluate", f"--model={exported['keras_path']}",
                         f"--data_dir={tmp_path / 'data'}", "--attack_steps=1", "--batch_size=5",
                         f"--output={from_keras}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    want = json.loads(from_keras.read_text())
    for key in ("natural_accuracy", "robust_accuracy"):
        assert metrics[key] == want[key], (key, metrics, want)

    result = run_program("export", f"--model={tmp_path / 'missing.keras'}",
                         f"--export_dir={base}")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not exist" in errors[0], result.stderr[-2000:]
    assert existing_versions(base) == [1]
