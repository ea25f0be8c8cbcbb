"""Evaluation spread over several replicas (``strategy``): each batch split
between them (:func:`run_on_replicas`), the per-example results gathered,
equal example by example to a one-device run, for PGD and AutoAttack, in the
library and from the command line (``--strategy=mirrored --cpu_devices=2``; a
two-worker ``--strategy=multi_worker`` run on 127.0.0.1, slow). The
test session splits the CPU into 2 logical devices (conftest)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from program_helpers import run_program, write_tiny_cifar10
from worker_helpers import finish, free_ports, start_worker

from gacd_tf.attacks import PGD, AutoAttack
from gacd_tf.errors import ConfigError
from gacd_tf.evaluation import evaluate_robustness
from gacd_tf.training import make_strategy, run_on_replicas

EPS = 4 / 255
SMALL_STANDARD = {"apgd-ce": {"n_iter": 4}, "apgd-t": {"n_iter": 4, "n_target_classes": 3},
                  "fab-t": {"n_iter": 4, "n_target_classes": 3}, "square": {"n_queries": 30}}


@pytest.fixture(scope="module")
def mirrored():
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2, "conftest splits the CPU into 2 devices"
    return strategy


def tiny_cnn(seed=5):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(6, 3, activation="tanh"),
                             keras.layers.Flatten(), keras.layers.Dense(4)])


def data(model, n=30, seed=6):
    x = np.random.default_rng(seed).uniform(0, 1, size=(n, 8, 8, 3)).astype("float32")
    y = np.argmax(model(x, training=False).numpy(), -1).astype("int64")
    y[0] = (y[0] + 1) % 4  # one clean-wrong point
    return x, y


def test_run_on_replicas_gives_each_replica_a_contiguous_padded_share(mirrored):
    x = np.arange(7 * 2, dtype=np.float32).reshape(7, 2)

    @tf.function
    def fn(rows):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return rows * 2, tf.fill(tf.shape(rows)[:1], replica)

    doubled, replica = run_on_replicas(mirrored, fn, x)
    np.testing.assert_array_equal(doubled, x * 2)  # in batch order, padding dropped
    np.testing.assert_array_equal(replica, [0, 0, 0, 0, 1, 1, 1])  # shares of ceil(7 / 2)
    one, = run_on_replicas(mirrored, lambda rows: rows + 1, x[:1])  # one row: replica 1 pads
    np.testing.assert_array_equal(one, x[:1] + 1)
    np.testing.assert_array_equal(run_on_replicas(None, fn.python_function, x)[1], [0] * 7)


def test_autoattack_on_two_replicas_equals_one_device_example_by_example(mirrored):
    with mirrored.scope():
        model = tiny_cnn()
    x, y = data(model)

    def run(strategy):
        aa = AutoAttack(version="standard", attack_settings=SMALL_STANDARD, eps=EPS, verbose=0,
                        seed=3, checks=False)
        return aa.run(model, x, y, batch_size=7, strategy=strategy)  # 7: odd shares, padded

    one, two = run(None), run(mirrored)
    by_attack = list(one["robust_accuracy_by_attack"].values())
    assert one["natural_accuracy"] > by_attack[0] and 0 < by_attack[-1], \
        "the test needs points broken and points left"
    for key in ("robust", "clean_correct", "predictions"):
        np.testing.assert_array_equal(two[key], one[key])
    np.testing.assert_allclose(two["x_adv"], one["x_adv"], atol=1e-6)
    assert two["robust_accuracy_by_attack"] == one["robust_accuracy_by_attack"]


def test_pgd_on_two_replicas_equals_one_device_example_by_example(mirrored):
    with mirrored.scope():
        model = tiny_cnn(seed=7)
    x, y = data(model, n=21)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(5)
    attack = PGD(eps=EPS, step_size=1 / 255, steps=3, seed=2)  # random start: keyed draws
    one = evaluate_robustness(model, dataset, attack, verbose=0, return_examples=True)
    two = evaluate_robustness(model, dataset, attack, verbose=0, return_examples=True,
                              strategy=mirrored)
    assert 0 < one["robust_accuracy"] < one["natural_accuracy"], "the test needs both kinds"
    for key in ("robust", "clean_correct", "labels"):
        np.testing.assert_array_equal(two[key], one[key])
    np.testing.assert_allclose(two["x_adv"], one["x_adv"], atol=1e-6)


def test_an_attack_without_keyed_draws_is_refused_on_two_replicas(mirrored):
    model = tiny_cnn()
    x, y = data(model, n=4)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)

    def plain(model, x, y):  # no perturb(..., indices): its draws are not keyed
        return tf.clip_by_value(x + tf.random.uniform(tf.shape(x), -EPS, EPS), 0, 1)

    with pytest.raises(ConfigError, match="keyed per example"):
        evaluate_robustness(model, dataset, plain, verbose=0, strategy=mirrored)
    assert evaluate_robustness(model, dataset, plain, verbose=0)["num_examples"] == 4


# -- gacd-evaluate --strategy ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval_distributed")
    data_dir = write_tiny_cifar10(folder / "cifar10", train=10, test=15)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((32, 32, 3)),
                              keras.layers.Conv2D(4, 3, strides=4, activation="tanh"),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    path = folder / "tiny.keras"
    model.save(path)
    return data_dir, path


def evaluate_args(data_dir, model, out, *extra):
    return [f"--data_dir={data_dir}", f"--model={model}", "--attack=autoattack",
            "--aa_attacks=apgd-ce,square", "--batch_size=4", "--eps=0.004",
            f"--output={out}.json", f"--save_adversarial={out}.npz", "--verbose=0", *extra]


def saved(out):
    with np.load(f"{out}.npz") as arrays:
        flags = {key: arrays[key] for key in ("robust", "clean_correct", "x_adv")}
    with open(f"{out}.json") as f:
        return flags, json.load(f)


def assert_same_answer(got, want):
    (got_flags, got_json), (want_flags, want_json) = got, want
    assert want_json["natural_accuracy"] > want_json["robust_accuracy"] > 0, \
        "the test needs points broken and points left"
    np.testing.assert_array_equal(got_flags["robust"], want_flags["robust"])
    np.testing.assert_array_equal(got_flags["clean_correct"], want_flags["clean_correct"])
    np.testing.assert_allclose(got_flags["x_adv"], want_flags["x_adv"], atol=1e-6)
    for key in ("natural_accuracy", "robust_accuracy", "robust_accuracy_by_attack"):
        assert got_json[key] == want_json[key]


def test_gacd_evaluate_mirrored_equals_one_device(tiny_setup, tmp_path):
    data_dir, model = tiny_setup
    one = run_program("evaluate", *evaluate_args(data_dir, model, tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_program("evaluate", *evaluate_args(data_dir, model, tmp_path / "two",
                                                  "--strategy=mirrored", "--cpu_devices=2"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_answer(saved(tmp_path / "two"), saved(tmp_path / "one"))


@pytest.mark.slow
def test_gacd_evaluate_on_two_workers_equals_one_process(tiny_setup, tmp_path):
    data_dir, model = tiny_setup
    one = run_program("evaluate", *evaluate_args(data_dir, model, tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    ports = free_ports()
    out = tmp_path / "workers"
    procs = [start_worker("evaluate", evaluate_args(data_dir, model, out), ports, i,
                          tmp_path / f"tmp{i}") for i in range(2)]
    outputs = finish(procs)
    for i, proc in enumerate(procs):
        assert proc.returncode == 0, f"worker {i}:\n{outputs[i][1][-3000:]}"
    assert "robust_accuracy" in outputs[0][0] and "robust_accuracy" not in outputs[1][0]
    assert_same_answer(saved(out), saved(tmp_path / "one"))
