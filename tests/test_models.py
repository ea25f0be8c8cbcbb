"""Tests of the model zoo (gacd_tf.models): architectures, interface, saving.

Parameter counts are checked twice: against an independent closed-form count
of each architecture as defined in the PyTorch reference code (exact), and
against the published values (within 2%).
"""

import numpy as np
import pytest

import keras
import tensorflow as tf

from gacd_tf.errors import ConfigError, ModelError
from gacd_tf.models import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IDENTITY_MEAN,
    IDENTITY_STD,
    MODELS,
    build_model,
    feature_dim,
    features_and_logits,
    model_names,
    num_classes,
)

BATCH = 2

# Feature dimension of each architecture.
FEATURE_DIMS = {
    "resnet8": 64,
    "resnet20": 64,
    "resnet32": 64,
    "resnet56": 64,
    "resnet110": 64,
    "resnet18": 512,
    "resnet34": 512,
    "wrn_16_2": 128,
    "wrn_34_2": 128,
    "wrn_34_10": 640,
    "wrn_40_2": 128,
    "mobilenetv2": 1280,
}

# The RobustBench architectures (gacd-import; exact against PyTorch in
# test_torch_import.py, with torch): feature dimension at full size, and the small
# builder options that keep a build here cheap (the full ones have up to 267M weights).
ROBUSTBENCH_FEATURE_DIMS = {
    "wrn_28_10": 640, "wrn_34_15": 960, "wrn_34_20": 1280, "wrn_70_16": 1024,
    "dm_wrn_28_10": 640, "dm_wrn_34_20": 1280, "dm_wrn_70_16": 1024,
    "dm_preact_resnet18": 512, "preact_resnet18": 512,
}
SMALL = {"wrn": dict(depth=10, widen_factor=1), "dm_wrn": dict(depth=10, widen_factor=1),
         "dm_preact_resnet18": {}, "preact_resnet18": {}}

# Published trainable-parameter counts for 10 classes (He et al. 2016 Table 6,
# Zagoruyko & Komodakis 2016, RepDistiller/CRD tables, kuangliu/pytorch-cifar).
PUBLISHED_PARAMS = {
    "resnet8": 0.078e6,
    "resnet20": 0.27e6,
    "resnet32": 0.46e6,
    "resnet56": 0.85e6,
    "resnet110": 1.73e6,
    "resnet18": 11.17e6,
    "resnet34": 21.28e6,
    "wrn_16_2": 0.69e6,
    "wrn_34_2": 1.85e6,
    "wrn_34_10": 46.2e6,
    "wrn_40_2": 2.24e6,
    "mobilenetv2": 2.30e6,
}

# Full .keras round trip in the default run only for these (cheap) models.
FAST_ROUND_TRIP = ("resnet20", "wrn_16_2")


# ---------------------------------------------------------------- closed forms
def _bn(c):
    return 2 * c  # trainable gamma and beta


def _basic_block(cin, cout, stride):
    n = 9 * cin * cout + _bn(cout) + 9 * cout * cout + _bn(cout)
    if stride != 1 or cin != cout:
        n += cin * cout + _bn(cout)
    return n


def _resnet_params(stem, widths, blocks, strides, classes):
    n = 9 * 3 * stem + _bn(stem)
    cin = stem
    for width, count, stride in zip(widths, blocks, strides):
        for i in range(count):
            n += _basic_block(cin, width, stride if i == 0 else 1)
            cin = width
    return n + cin * classes + classes


def _wrn_params(depth, k, classes):
    per = (depth - 4) // 6
    n = 9 * 3 * 16
    cin = 16
    for width in (16 * k, 32 * k, 64 * k):
        for _ in range(per):
            n += _bn(cin) + 9 * cin * width + _bn(width) + 9 * width * width
            if cin != width:
                n += cin * width
            cin = width
    return n + _bn(cin) + cin * classes + classes


def _mobilenetv2_params(classes):
    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    n = 9 * 3 * 32 + _bn(32)
    cin = 32
    for expansion, cout, count, first_stride in cfg:
        for i in range(count):
            stride = first_stride if i == 0 else 1
            hidden = expansion * cin
            n += cin * hidden + _bn(hidden) + 9 * hidden + _bn(hidden)
            n += hidden * cout + _bn(cout)
            if stride == 1 and cin != cout:
                n += cin * cout + _bn(cout)
            cin = cout
    n += cin * 1280 + _bn(1280)
    return n + 1280 * classes + classes


def expected_params(name, classes):
    if name.startswith("wrn_"):
        _, depth, k = name.split("_")
        return _wrn_params(int(depth), int(k), classes)
    if name == "mobilenetv2":
        return _mobilenetv2_params(classes)
    if name in ("resnet18", "resnet34"):
        blocks = (2, 2, 2, 2) if name == "resnet18" else (3, 4, 6, 3)
        return _resnet_params(64, (64, 128, 256, 512), blocks, (1, 2, 2, 2), classes)
    n = (int(name[len("resnet"):]) - 2) // 6
    return _resnet_params(16, (16, 32, 64), (n, n, n), (1, 2, 2), classes)


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def images(size=32, seed=0):
    return np.random.default_rng(seed).random((BATCH, size, size, 3), dtype=np.float32)


# ----------------------------------------------------------------- the zoo
def test_registered_names():
    assert model_names() == sorted({**FEATURE_DIMS, **ROBUSTBENCH_FEATURE_DIMS})
    assert set(MODELS.names()) == set(FEATURE_DIMS) | set(ROBUSTBENCH_FEATURE_DIMS)


@pytest.mark.parametrize("name", sorted(ROBUSTBENCH_FEATURE_DIMS))
def test_robustbench_architectures_build_with_features_and_any_class_count(name):
    options = SMALL.get(name) if name in SMALL else SMALL[name.rsplit("_", 2)[0]]
    model = build_model(name, num_classes=7, **options)
    assert model.output_shape == (None, 7) and num_classes(model) == 7
    width = options.get("widen_factor")
    # Small options divide a wide ResNet's last width (64 x widen_factor) by its factor.
    expected = ROBUSTBENCH_FEATURE_DIMS[name] if width is None else 64 * width
    assert feature_dim(model) == expected
    features, logits = features_and_logits(model)(np.zeros((2, 32, 32, 3), "float32"))
    assert tuple(features.shape) == (2, expected) and tuple(logits.shape) == (2, 7)


def _check_model(name, classes):
    model = build_model(name, num_classes=classes)
    assert isinstance(model, keras.Model) and model.name == name
    assert model.output_shape == (None, classes)
    assert feature_dim(model) == FEATURE_DIMS[name]
    assert num_classes(model) == classes

    # Interface layers.
    assert model.layers[0].name == "images"
    assert isinstance(model.layers[1], keras.layers.Normalization)
    assert isinstance(model.get_layer("features"), keras.layers.GlobalAveragePooling2D)
    logits_layer = model.get_layer("logits")
    assert isinstance(logits_layer, keras.layers.Dense) and model.layers[-1] is logits_layer
    assert logits_layer.activation is keras.activations.linear

    # Forward: features [B, D], logits [B, C]; model(x) is the logits.
    x = images()
    features, logits = features_and_logits(model)(x, training=False)
    assert tuple(features.shape) == (BATCH, FEATURE_DIMS[name])
    assert tuple(logits.shape) == (BATCH, classes)
    assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))
    np.testing.assert_allclose(model(x, training=False), logits, rtol=1e-6, atol=1e-6)

    # Parameter counts: exact closed form, and published value within 2%.
    assert trainable_params(model) == expected_params(name, classes)
    if classes == 10:
        assert trainable_params(model) == pytest.approx(PUBLISHED_PARAMS[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_build_forward_and_param_count(name):
    """Builds for 10 and 100 classes (one test: teardown is not free)."""
    for classes in (10, 100):
        _check_model(name, classes)
        keras.backend.clear_session()


@pytest.mark.parametrize("name", ["resnet18", "wrn_16_2", "resnet20", "mobilenetv2"])
def test_96x96_inputs(name):
    model = build_model(name, num_classes=10, input_shape=(96, 96, 3))
    features, logits = features_and_logits(model)(images(96), training=False)
    assert tuple(features.shape) == (BATCH, FEATURE_DIMS[name])
    assert tuple(logits.shape) == (BATCH, 10)
    # Same architecture, same parameters as at 32x32.
    assert trainable_params(model) == expected_params(name, 10)


def test_any_size_input_and_odd_sizes():
    model = build_model("resnet20", input_shape=(None, None, 3))
    both = features_and_logits(model)
    for size in (8, 32, 33, 96):
        features, logits = both(images(size), training=False)
        assert tuple(features.shape) == (BATCH, 64) and tuple(logits.shape) == (BATCH, 10)


def test_features_and_logits_shares_weights_and_trains():
    model = build_model("resnet8", num_classes=10)
    both = features_and_logits(model)
    assert [id(v) for v in both.weights] == [id(v) for v in model.weights]
    model.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x, y = images(), np.array([0, 1])
    before = model.get_layer("logits").kernel.numpy().copy()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert not np.array_equal(before, model.get_layer("logits").kernel.numpy())
    np.testing.assert_allclose(both(x, training=False)[1], model(x, training=False), atol=1e-6)
    loss, _ = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss)


def test_input_gradient_flows_through_normalisation():
    model = build_model("resnet8")
    x = tf.constant(images())
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = keras.losses.sparse_categorical_crossentropy(
            tf.constant([0, 1]), model(x, training=False), from_logits=True
        )
    grad = tape.gradient(loss, x).numpy()
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_normalisation_happens_inside():
    mean = np.array(CIFAR10_MEAN, np.float32)
    std = np.array(CIFAR10_STD, np.float32)
    model = build_model("resnet8")
    normalize = model.get_layer("normalize")
    mean_image = np.broadcast_to(mean, (BATCH, 8, 8, 3))
    np.testing.assert_array_equal(normalize(mean_image), np.zeros((BATCH, 8, 8, 3)))
    np.testing.assert_allclose(normalize(mean_image + std), np.ones((BATCH, 8, 8, 3)), atol=1e-6)

    # Same weights without normalisation, fed pre-normalised images: same logits.
    plain = build_model("resnet8", mean=IDENTITY_MEAN, std=IDENTITY_STD)
    plain.set_weights(model.get_weights())
    x = images()
    np.testing.assert_allclose(
        model(x, training=False), plain((x - mean) / std, training=False), atol=1e-4
    )


def test_initialisation_matches_pytorch_kaiming_fan_out():
    model = build_model("mobilenetv2")
    conv = model.get_layer("stage7_block1_project_conv").kernel.numpy()  # 1x1, 960 -> 320
    assert conv.std() == pytest.approx(np.sqrt(2.0 / 320), rel=0.05)
    depthwise = model.get_layer("stage7_block1_depthwise_conv").kernel.numpy()  # 3x3, 960
    assert depthwise.std() == pytest.approx(np.sqrt(2.0 / (9 * 960)), rel=0.05)
    bn = model.get_layer("stem_bn")
    assert bn.momentum == pytest.approx(0.9) and bn.epsilon == pytest.approx(1e-5)
    assert all(
        not layer.use_bias
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
    )


def test_two_models_nest_with_distinct_names():
    teacher = build_model("resnet20", model_name="teacher")
    student = build_model("resnet20", model_name="student")
    inp = keras.Input((32, 32, 3))
    both = keras.Model(inp, [teacher(inp), student(inp)])
    out_t, out_s = both(images(), training=False)
    assert tuple(out_t.shape) == tuple(out_s.shape) == (BATCH, 10)


def test_wrn_dropout_option():
    model = build_model("wrn_16_2", dropout_rate=0.3)
    assert any(isinstance(layer, keras.layers.Dropout) for layer in model.layers)
    assert not any(
        isinstance(layer, keras.layers.Dropout) for layer in build_model("wrn_16_2").layers
    )


# ------------------------------------------------------------ .keras round trip
def _round_trip(name, tmp_path):
    model = build_model(name, num_classes=10)
    x = images(seed=1)
    # One training-mode step so the BN statistics are not the defaults.
    model(x, training=True)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(2).normal(size=layer.moving_mean.shape) * 0.1)
    expected = model(x, training=False).numpy()
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)
    features, logits = features_and_logits(loaded)(x, training=False)
    ref_features, _ = features_and_logits(model)(x, training=False)
    np.testing.assert_array_equal(logits.numpy(), expected)
    np.testing.assert_array_equal(features.numpy(), ref_features.numpy())
    assert feature_dim(loaded) == FEATURE_DIMS[name] and num_classes(loaded) == 10
    normalize = loaded.get_layer("normalize")
    assert isinstance(normalize, keras.layers.Normalization)
    mean_image = np.broadcast_to(np.array(CIFAR10_MEAN, np.float32), (1, 4, 4, 3))
    np.testing.assert_array_equal(normalize(mean_image), np.zeros((1, 4, 4, 3)))


@pytest.mark.parametrize("name", FAST_ROUND_TRIP)
def test_keras_round_trip_safe_mode(name, tmp_path):
    _round_trip(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(FEATURE_DIMS) - set(FAST_ROUND_TRIP)))
def test_keras_round_trip_safe_mode_large(name, tmp_path):
    _round_trip(name, tmp_path)


# ---------------------------------------------------------------------- errors
def test_unknown_name_lists_known_names():
    with pytest.raises(ConfigError) as info:
        build_model("resnet1000")
    message = str(info.value)
    assert "resnet1000" in message
    for name in FEATURE_DIMS:
        assert name in message


BAD_ARGUMENTS = [
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 2.5}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"input_shape": (32, 32, 1)}, r"3 \(RGB\) channels"),
    ({"input_shape": (3, 32, 32)}, "channels"),
    ({"input_shape": (32, 32)}, "input_shape"),
    ({"input_shape": (4, 32, 3)}, ">= 8"),
    ({"input_shape": "32x32"}, "input_shape"),
    ({"mean": (0.5, 0.5)}, "mean"),
    ({"std": (0.2, 0.0, 0.2)}, "std"),
    ({"std": (0.2, float("nan"), 0.2)}, "std"),
    ({"dropout": 0.1}, "dropout"),
    ({"model_name": ""}, "model_name"),
]


def test_bad_arguments_raise_config_error():
    for kwargs, words in BAD_ARGUMENTS:
        with pytest.raises(ConfigError, match=words):
            build_model("resnet8", **kwargs)
    with pytest.raises(ConfigError, match="model name"):
        build_model(20)


def test_bad_wrn_option_value():
    with pytest.raises(ConfigError, match="dropout_rate"):
        build_model("wrn_16_2", dropout_rate=1.5)


def test_model_without_features_or_final_dense_raises():
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(10)(x)
    out = keras.layers.Activation("linear", name="scale")(x)
    model = keras.Model(inp, out, name="odd_net")
    for fn in (features_and_logits, feature_dim):
        with pytest.raises(ModelError, match="odd_net") as info:
            fn(model)
        assert "'features'" in str(info.value) and "Dense" in str(info.value)


def test_fallback_to_input_of_final_dense():
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inp)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = keras.layers.Dense(7, name="head")(pooled)
    model = keras.Model(inp, out, name="plain_net")
    both = features_and_logits(model)
    features, logits = both(images(), training=False)
    assert tuple(features.shape) == (BATCH, 4) and tuple(logits.shape) == (BATCH, 7)
    assert feature_dim(model) == 4 and num_classes(model) == 7
    # Sequential works the same way.
    seq = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3),
         keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)]
    )
    assert feature_dim(seq) == 4 and num_classes(seq) == 5


def test_probability_outputs_and_non_graph_models_rejected():
    inp = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D(name="features")(inp)
    probs = keras.layers.Dense(10, activation="softmax")(x)
    with pytest.raises(ModelError, match="probabilities"):
        features_and_logits(keras.Model(inp, probs, name="softmax_net"))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed_net")
            self.dense = keras.layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    with pytest.raises(ModelError, match="subclassed_net"):
        features_and_logits(Subclassed())
    with pytest.raises(ModelError, match="keras.Model"):
        features_and_logits(lambda x: x)

    unpooled = keras.Model(inp, keras.layers.Dense(3)(inp), name="unpooled_net")
    with pytest.raises(ModelError, match="unpooled_net"):
        features_and_logits(unpooled)
