"""The teacher-free control (method "natural"), ARD's official-code batch-norm
detail, and validation held out of the training split (never the test split)."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from program_helpers import run_program, write_tiny_cifar10

from gacd_tf.attacks import PGD
from gacd_tf.errors import DataError
from gacd_tf.data import holdout_indices
from gacd_tf.methods import METHODS, ARDDistiller, MethodContext, build
from tiny_models import tiny


def batches(n=24, batch=8, classes=3):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    y = (np.arange(n) % classes).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y, np.arange(n, dtype="int32"))).batch(batch)


# ----------------------------------------------------------------------------- natural
def test_natural_method_trains_by_cross_entropy_without_a_teacher():
    assert METHODS.get("natural").NEEDS_TEACHER is False
    student = tiny(1, "student", batch_norm=False)
    trainer = build("natural", student)  # no teacher
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))  # lr 0: the logged loss is plain CE
    x, y, _ = next(iter(batches()))
    expected = float(tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
        y, student(x), from_logits=True)))
    history = trainer.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)
    before = [w.numpy().copy() for w in student.weights]
    trainer.compile(optimizer=keras.optimizers.SGD(0.1))
    history = trainer.fit(batches(), validation_data=batches(), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and "val_adv_accuracy" in history
    assert any(not np.array_equal(w.numpy(), b) for w, b in zip(student.weights, before))


# ----------------------------------------------------------------------------- ARD's code
def bn_statistics(model):
    return np.concatenate([w.numpy().ravel() for w in model.non_trainable_weights])


def test_ard_attack_in_training_mode_moves_the_batch_norm_statistics():
    """Training-mode attack: every PGD iterate (and the natural pass) updates BN stats."""
    moved = {}
    for mode in (False, True):
        student, teacher = tiny(1, "student"), tiny(2, "teacher", width=6)
        trainer = ARDDistiller(student, teacher, attack=PGD(steps=3, seed=0), ard_alpha=1.0,
                               ard_attack_training_mode=mode)
        trainer.compile(optimizer=keras.optimizers.SGD(0.0))
        start = bn_statistics(student)
        trainer.fit(batches().take(1), epochs=1, verbose=0)
        moved[mode] = bn_statistics(student) - start
    # Inference-mode attack, a = 1: one training-mode pass (on x_adv) moves the
    # statistics once; the official code's mode moves them 3 + 1 + 1 times.
    assert np.abs(moved[False]).max() > 0
    assert np.abs(moved[True]).max() > 2 * np.abs(moved[False]).max()
    assert build("ard", tiny(1, "s"), tiny(2, "t")).ard_attack_training_mode is False


def test_ard_code_mode_takes_the_first_gradient_at_the_unclipped_start():
    """main.py:69-70: x + U(-eps, eps), not clipped; our PGD (the default) clips it."""
    x = tf.concat([tf.zeros([4, 8, 8, 1]), tf.ones([4, 8, 8, 2])], axis=-1)
    starts = {}
    for mode in (False, True):
        trainer = build("ard", tiny(1, "s"), tiny(2, "t"), ard_attack_training_mode=mode)
        starts[mode] = trainer.attack.start(x).numpy()
        assert trainer.attack.eps == pytest.approx(8 / 255)
    delta = starts[True] - x.numpy()
    assert np.abs(delta).max() <= 8 / 255 + 1e-7
    assert starts[True].min() < 0 and starts[True].max() > 1  # outside [0, 1] at 0 and 1
    assert starts[False].min() >= 0 and starts[False].max() <= 1
    # Every iterate is still projected onto the ball and [0, 1].
    x_adv = trainer.attack(trainer.student, x, tf.zeros([4], tf.int32)).numpy()
    assert x_adv.min() >= 0 and x_adv.max() <= 1


# ----------------------------------------------------------------------------- validation
def test_validation_attacks_with_the_evaluation_pgd_not_the_training_attack():
    # The budget curve's val_adv_accuracy must be one attack for every row: the
    # evaluation PGD (--attack_steps at --step_size), whatever each method trains with.
    student, teacher = tiny(0), tiny(1)
    context = MethodContext(seed=3, eps=8 / 255, step_size=2 / 255, train_attack_steps=5,
                            train_step_size=4 / 255, val_attack_steps=20)
    for name in ("kd", "ard", "gacd"):
        trainer, record = METHODS.get(name).from_settings(
            student, teacher, {}, context, train_labels=np.arange(20) % 3)
        config = trainer.eval_attack.get_config()
        assert (config["steps"], config["step_size"], config["eps"], config["seed"]) == \
            (20, 2 / 255, 8 / 255, 3), name
        assert record["validation_attack"] == config, name
    if_unset = MethodContext(train_attack_steps=5, train_step_size=4 / 255).validation_attack()
    assert (if_unset.steps, if_unset.step_size) == (5, 4 / 255)  # the training attack


def test_aft_validates_with_the_evaluation_pgd_and_resumes_its_older_checkpoints():
    from gacd_tf.programs.distill import aft_trainer
    from gacd_tf.training.training_checkpoint import find_seed_generators

    context = MethodContext(seed=3, step_size=2 / 255, train_attack_steps=5,
                            train_step_size=4 / 255, val_attack_steps=20)
    aft = aft_trainer(tiny(0), context, 5e-4)
    assert (aft.attack.steps, aft.attack.step_size) == (5, 4 / 255)
    assert (aft.eval_attack.steps, aft.eval_attack.step_size) == (20, 2 / 255)
    # The one generator an AFT checkpoint held when AFT validated with its training
    # attack (a second one would refuse to resume those runs).
    assert list(find_seed_generators(aft)) == ["attack.seed_generator"]


def test_holdout_is_class_balanced_disjoint_and_deterministic():
    labels = np.random.default_rng(0).permutation(np.arange(200) % 10)
    train, val = holdout_indices(labels, 10, 30, None)
    assert len(val) == 30 and np.bincount(labels[val], minlength=10).tolist() == [3] * 10
    assert not set(train) & set(val) and len(train) + len(val) == 200
    # Each class's last examples in file order are held out.
    for c in range(10):
        members = np.flatnonzero(labels == c)
        assert set(members[-3:]) == set(val[labels[val] == c])
    again = holdout_indices(labels, 10, 30, None)
    np.testing.assert_array_equal(again[0], train)
    np.testing.assert_array_equal(again[1], val)
    # A --train_examples subset (each class's first examples) is unchanged by the holdout.
    sub, val = holdout_indices(labels, 10, 30, 50)
    np.testing.assert_array_equal(sub, holdout_indices(labels, 10, 0, 50)[0])
    assert not set(sub) & set(val)
    # The library names its arguments (a program names the flags: test_bad_inputs).
    with pytest.raises(DataError, match=r"^train_examples=180 is out of range: .* 30 of them "
                                        r"held out by val_examples=30; ask for 1 to 170") as err:
        holdout_indices(labels, 10, 30, 180)
    assert err.value.argument == "train_examples"
    with pytest.raises(DataError, match="^val_examples=200 leaves no training examples") as err:
        holdout_indices(labels, 10, 200, None)
    assert err.value.argument == "val_examples"


LOAD = """
import json, sys
import numpy as np
from gacd_tf.programs import distill
from gacd_tf.programs.flag_core import FLAGS
from gacd_tf.programs.data_flags import load_data_from_flags
distill.define_flags()
FLAGS(["prog"] + sys.argv[1:])
data = load_data_from_flags()
print(json.dumps({"train": data.train.images.reshape(len(data.train.labels), -1).tolist(),
                  "val": data.val.images.reshape(len(data.val.labels), -1).tolist(),
                  "val_labels": data.val.labels.tolist(), "steps": data.steps_per_epoch,
                  "val_batches": sum(1 for _ in data.val_ds)}))
"""


def test_validation_examples_come_from_the_training_split_and_are_not_trained_on(tmp_path):
    from gacd_tf.data import load_split

    data_dir = write_tiny_cifar10(tmp_path / "data", train=60, test=20)
    result = subprocess.run(
        [sys.executable, "-c", LOAD, f"--data_dir={data_dir}", "--model_dir=unused",
         "--teacher=unused", "--val_examples=20", "--batch_size=8"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    rows = {name: {bytes(np.asarray(r, np.uint8)) for r in got[name]} for name in ("train", "val")}
    split = {}
    for name in ("train", "test"):
        images = load_split("cifar10", name, data_dir).images
        split[name] = {bytes(r) for r in images.reshape(len(images), -1)}
    assert len(rows["val"]) == 20 and len(rows["train"]) == 40
    assert rows["val"] <= split["train"] and not rows["val"] & split["test"]
    assert not rows["val"] & rows["train"] and rows["train"] <= split["train"]
    assert sorted(got["val_labels"]) == sorted(list(range(10)) * 2)
    assert got["steps"] == 40 // 8 and got["val_batches"] == 3


@pytest.mark.slow
def test_distill_natural_needs_no_teacher_validates_on_training_data_and_autoattacks(tmp_path):
    data_dir = write_tiny_cifar10(tmp_path / "data", train=40, test=20)
    out = tmp_path / "natural"
    result = run_program(
        "distill", "--method=natural", "--arch=resnet8", f"--data_dir={data_dir}",
        "--epochs=1", "--aft_epochs=1", "--batch_size=8", "--train_attack_steps=1",
        "--attack_steps=1", "--val_examples=10", "--final_autoattack_examples=10",
        f"--model_dir={out}", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "natural" and metrics["teacher"] is None
    assert metrics["num_examples"] == 20 and "before_aft" in metrics
    # AutoAttack of the final student, and of the student before AFT.
    for result in (metrics, metrics["before_aft"]):
        autoattack = result["autoattack"]
        assert autoattack["num_examples"] == 10
        assert 0 <= autoattack["robust_accuracy"] <= autoattack["natural_accuracy"] <= 1
    assert "bank_cross_class_cosine" not in metrics
    log = (out / "distill_log.csv").read_text().splitlines()
    assert "val_adv_accuracy" in log[0] and len(log) == 2
