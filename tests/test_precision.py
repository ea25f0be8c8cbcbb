"""Mixed precision and XLA: one training step's loss equals the float32 step's
to a stated tolerance, and the float32 parts stay float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.methods import ARDDistiller, GACDDistiller, KDDistiller


def tiny(seed, name, batch_norm=False):
    """8x8x3 -> conv -> ReLU -> "features" -> float32 logits (as the zoo builds them)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3)(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization()(h)
    h = keras.layers.GlobalAveragePooling2D(name="features")(keras.layers.ReLU()(h))
    return keras.Model(inputs, keras.layers.Dense(3, dtype="float32", name="logits")(h),
                       name=name)

# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4 %); a few
# layers of it move a loss by well under 5 %. XLA only reorders float32 sums.
TOLERANCE = {"mixed_bfloat16": 5e-2, "xla": 1e-4}


def batch(n=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    y = (np.arange(n) % 3).astype("int32")
    return x, y, np.arange(n, dtype="int32")


def first_step_loss(method, policy="float32", jit_compile=False):
    """The loss of one step of ``method`` from fixed weights, under ``policy``."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        teacher = tiny(2, "teacher", batch_norm=False)  # a float32 teacher, as loaded
        teacher_weights = teacher.get_weights()
        keras.mixed_precision.set_global_policy(policy)
        student = tiny(1, "student", batch_norm=False)
        # Same starting weights whatever the policy (variables are float32).
        student.set_weights(tiny(1, "ref", batch_norm=False).get_weights())
        teacher.set_weights(teacher_weights)
        # No random draws in the step (XLA may pick another random-number
        # algorithm than the CPU kernels): no random start, and k = the whole
        # other-class pool, so GACD's negatives are a set whose order the
        # loss does not see.
        attack = PGD(steps=2, seed=0, random_start=False)
        x, y, idx = batch()
        if method == "kd":
            trainer = KDDistiller(student, teacher, eval_attack=attack)
        elif method == "ard":
            trainer = ARDDistiller(student, teacher, attack=attack, eval_attack=attack)
        else:
            ot = PGD(steps=1, step_size=8 / 255, objective="ot", random_start=False)
            trainer = GACDDistiller(student, teacher, y, nce_k=8, embed_dim=8, seed=0,
                                    attack=ot, eval_attack=attack)
        trainer.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=jit_compile)
        history = trainer.fit(tf.data.Dataset.from_tensors((x, y, idx)), epochs=1, verbose=0)
        dtypes = {"logits": student(x[:1]).dtype}
        if method == "gacd":
            dtypes["bank"] = trainer.student_bank.bank.dtype
            dtypes["embedding"] = trainer.student_embed.compute_dtype
        return history.history["loss"][0], dtypes, student.layers[1].compute_dtype
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize("method", ["kd", "ard", "gacd"])
def test_bfloat16_and_xla_give_the_float32_loss(method):
    reference, dtypes, compute = first_step_loss(method)
    assert compute == "float32"
    bf16, bf16_dtypes, bf16_compute = first_step_loss(method, "mixed_bfloat16")
    assert bf16_compute == "bfloat16"  # it really ran in bfloat16 ...
    assert all(d == "float32" for d in bf16_dtypes.values()), bf16_dtypes  # ... not these
    assert bf16 == pytest.approx(reference, rel=TOLERANCE["mixed_bfloat16"])
    assert bf16 != reference
    xla, _, _ = first_step_loss(method, jit_compile=True)
    assert xla == pytest.approx(reference, rel=TOLERANCE["xla"])


def test_float16_steps_through_a_loss_scale_optimizer():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        student, teacher = tiny(1, "student", batch_norm=False), tiny(2, "teacher")
        trainer = KDDistiller(student, teacher, eval_attack=PGD(steps=1))
        optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
        trainer.compile(optimizer=optimizer)
        before = [w.numpy().copy() for w in student.trainable_weights]
        x, y, idx = batch()
        loss = trainer.fit(tf.data.Dataset.from_tensors((x, y, idx)), epochs=2,
                           verbose=0).history["loss"]
        assert np.all(np.isfinite(loss))
        after = [w.numpy() for w in student.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(after, before))
        assert all(w.dtype == "float32" for w in student.trainable_weights)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_bfloat16_xla_teacher_from_the_command_line_exports_float32_serving(tmp_path):
    from program_helpers import run_program, write_tiny_cifar10

    data = write_tiny_cifar10(tmp_path / "data", train=32, test=16)
    result = run_program(
        "train_teacher", f"--data_dir={data}", "--arch=resnet8", "--epochs=1",
        "--batch_size=16", "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0",
        "--verbose=0", f"--model_dir={tmp_path / 'run'}", "--mixed_precision=bfloat16",
        "--jit_compile")
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    assert model.get_layer("logits").compute_dtype == "float32"
    assert any(layer.compute_dtype == "bfloat16" for layer in model.layers)
    result = run_program("export", f"--model={tmp_path / 'run' / 'model.keras'}",
                         f"--export_dir={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr[-3000:]
    serving = tf.saved_model.load(str(tmp_path / "export" / "1")).signatures["serving_default"]
    (spec,) = serving.structured_input_signature[1].values()
    assert spec.dtype == tf.float32
    outputs = serving(images=tf.random.uniform([2, 32, 32, 3]))
    assert outputs["logits"].dtype == tf.float32


def confident_float16_model():
    """A float16 network (float32 logits) whose margins are large (~50)."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = tiny(3, "confident")
    kernel, bias = model.get_layer("logits").get_weights()
    model.get_layer("logits").set_weights([kernel * 200.0, bias])
    return model


def test_float16_attack_gradients_do_not_underflow():
    previous = keras.mixed_precision.global_policy()
    try:
        model = confident_float16_model()
        x, _, _ = batch(32)
        y = tf.argmax(model(x), -1, output_type=tf.int32)  # correct and confident
        # The plain cross-entropy gradient of a confident float16 network
        # flushes to zero for some rows (this is what the scale is for) ...
        with tf.GradientTape() as tape:
            tape.watch(x := tf.constant(x))
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x)))
        plain = tape.gradient(loss, x).numpy().reshape(32, -1)
        assert (np.abs(plain).max(1) == 0).any()
        # ... while the attack's gradient reaches every row.
        grad = PGD(steps=1).gradient(model, x, y).numpy().reshape(32, -1)
        assert (np.abs(grad).max(1) > 0).all()
        # Its direction is the float32 network's (up to float16 rounding).
        from gacd_tf.models.io import float32_copy

        keras.mixed_precision.set_global_policy("float32")
        want = PGD(steps=1).gradient(float32_copy(model), x, y).numpy().reshape(32, -1)
        assert np.mean(np.sign(grad) == np.sign(want)) > 0.95
    finally:
        keras.mixed_precision.set_global_policy(previous)


def test_robustness_is_measured_on_a_float32_twin():
    from gacd_tf.evaluation import evaluate_robustness
    from gacd_tf.models.io import float32_copy

    previous = keras.mixed_precision.global_policy()
    try:
        model = confident_float16_model()
    finally:
        keras.mixed_precision.set_global_policy(previous)
    twin = float32_copy(model)
    assert twin is not model and all(layer.compute_dtype == "float32"
                                     for layer in twin._flatten_layers())
    for a, b in zip(twin.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    x, y, _ = batch(16)
    np.testing.assert_allclose(twin(x).numpy(), model(x).numpy(), rtol=0.05, atol=0.5)
    assert float32_copy(twin) is twin  # float32 models are used as they are
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    attack = PGD(steps=3, random_start=False)
    got, want = (evaluate_robustness(m, ds, attack, verbose=0) for m in (model, twin))
    assert (got["natural_accuracy"], got["robust_accuracy"]) == (
        want["natural_accuracy"], want["robust_accuracy"])
    # The attack is handed a float32 network (PGD's own float16 path would give the
    # same accuracies above, so ask the attack what it was given).
    seen = []

    def recording(network, images, labels):
        seen.append({layer.compute_dtype for layer in network._flatten_layers()})
        return images

    evaluate_robustness(model, ds, recording, verbose=0)
    assert seen and all(dtypes == {"float32"} for dtypes in seen), seen
