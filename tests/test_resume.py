"""fit_resumable and TrainingCheckpoint in process: an interrupted run resumes to
the uninterrupted result, restores optimizer / bank / random state, survives a
crash during a checkpoint write, and a NaN stops it without touching the last
good checkpoint."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf import data
from gacd_tf.attacks import PGD
from gacd_tf.training.distribute import make_strategy
from gacd_tf.errors import TrainingError
from gacd_tf.methods import AdversarialTrainer, GACDDistiller
from gacd_tf.training import TrainingCheckpoint, fit_resumable
from tiny_models import tiny

N, BATCH, EPOCHS = 24, 8, 2
STEPS = N // BATCH  # 3 steps per epoch


class Interrupt(Exception):
    """Stands in for a kill: raised from a callback, nothing after it runs."""


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise Interrupt()


def split():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8)
    return data.ArraySplit(images=images, labels=(np.arange(N) % 3).astype(np.int32),
                           info=data.get_dataset_info("cifar10"), split="train")


def build(method, strategy=None):
    with (strategy or tf.distribute.get_strategy()).scope():
        return _build(method)


def _build(method):
    student = tiny(1, "student", batch_norm=False)
    if method == "adversarial":
        trainer = AdversarialTrainer(student, attack=PGD(steps=1, seed=3))
    else:
        teacher = tiny(2, "teacher", width=6, batch_norm=False)
        trainer = GACDDistiller(student, teacher, split().labels, embed_dim=4, nce_k=5,
                                attack=None, seed=3, eval_attack=PGD(steps=1, seed=4))
    trainer.compile(optimizer=keras.optimizers.SGD(
        keras.optimizers.schedules.CosineDecay(0.05, EPOCHS * STEPS), momentum=0.9))
    return trainer


def run(method, directory, kill_at=None, every=2, strategy=None, callbacks=()):
    trainer = build(method, strategy)
    train = split()
    ckpt = TrainingCheckpoint(str(directory), STEPS, every_steps=every)

    def dataset_fn(epoch, step):
        return data.make_dataset(train, BATCH, training=True, seed=7, epochs=EPOCHS,
                                 start_epoch=epoch, start_step=step)

    callbacks = list(callbacks) + ([KillAtStep(kill_at)] if kill_at else [])
    info = fit_resumable(trainer, dataset_fn, EPOCHS, STEPS, ckpt, callbacks=callbacks,
                         verbose=0)
    return trainer, info


def state_of(trainer):
    return [v.numpy().copy() for v in trainer.weights + trainer.optimizer.variables]


@pytest.mark.parametrize("method", ["adversarial", "gacd"])
def test_a_run_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path, method):
    reference, info = run(method, tmp_path / "reference")
    assert (info["resumed_from"], info["completed_before"]) == (None, False)
    want = state_of(reference)
    keras.backend.clear_session()

    with pytest.raises(Interrupt):  # killed after step 5 = epoch 2, step 2 ...
        run(method, tmp_path / "resumed", kill_at=5)
    state = json.loads((tmp_path / "resumed" / "state.json").read_text())
    # ... whose last checkpoint is step 4 (every 2 steps) = epoch 2, step 1.
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 1, 4)
    assert not state["completed"] and len(state["seed_generators"]) >= 1
    keras.backend.clear_session()

    resumed, info = run(method, tmp_path / "resumed")
    assert info["resumed_from"] == {"epoch": 1, "step_in_epoch": 1, "global_step": 4}
    assert int(resumed.optimizer.iterations.numpy()) == EPOCHS * STEPS
    got = state_of(resumed)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    if method == "gacd":
        np.testing.assert_array_equal(resumed.student_bank.log_z.numpy(),
                                      reference.student_bank.log_z.numpy())
    final = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert final["completed"] and final["epoch"] == EPOCHS
    assert [p.name for p in (tmp_path / "resumed").glob("ckpt-*")] == [
        f"ckpt-{EPOCHS * STEPS:09d}.weights.h5"]

    # Started again once complete: nothing is trained.
    keras.backend.clear_session()
    again, info = run(method, tmp_path / "resumed")
    assert info["completed_before"]
    for a, b in zip(state_of(again), want):
        np.testing.assert_array_equal(a, b)


def test_resume_restores_optimizer_slots_bank_and_random_generators(tmp_path):
    with pytest.raises(Interrupt):
        run("gacd", tmp_path, kill_at=2, every=2)
    initial = build("gacd")
    state = json.loads((tmp_path / "state.json").read_text())
    keras.backend.clear_session()
    trainer = build("gacd")
    fresh_bank = trainer.student_bank.bank.numpy().copy()
    ckpt = TrainingCheckpoint(str(tmp_path), STEPS)
    from gacd_tf.training.fit_resumable import _restore

    trainer.optimizer.build(trainer.trainable_variables)
    _restore(trainer, ckpt, state)
    assert int(trainer.optimizer.iterations.numpy()) == 2
    momenta = [v.numpy() for v in trainer.optimizer.variables[1:]]
    assert any(np.abs(m).max() > 0 for m in momenta)  # momentum slots came back
    assert not np.array_equal(trainer.student_bank.bank.numpy(), fresh_bank)
    assert float(trainer.student_bank.z_is_set.numpy()) == 1.0
    for path, value in state["seed_generators"].items():
        generator = {"attack.seed_generator": trainer.attack.seed_generator,
                     "eval_attack.seed_generator": trainer.eval_attack.seed_generator,
                     "sampler.seed_generator": trainer.sampler.seed_generator}[path]
        np.testing.assert_array_equal(generator.state.numpy(), value)
    # The sampler and the training attack have advanced past their initial state.
    assert state["seed_generators"]["sampler.seed_generator"] != \
        np.asarray(initial.sampler.seed_generator.state.numpy()).tolist()


class FakeClock(keras.callbacks.Callback):
    """``time.monotonic`` for the checkpoint: 10 s pass during every training step."""

    def __init__(self):
        super().__init__()
        self.now = 1000.0

    def monotonic(self):
        return self.now

    def on_train_batch_begin(self, batch, logs=None):
        self.now += 10.0


def test_training_seconds_add_up_over_a_kill_up_to_its_last_checkpoint(tmp_path, monkeypatch):
    from gacd_tf.training import training_checkpoint

    clock = FakeClock()
    monkeypatch.setattr(training_checkpoint, "time", clock)
    _, info = run("adversarial", tmp_path / "reference", callbacks=[clock])
    assert info["train_seconds"] == 10.0 * EPOCHS * STEPS  # 60 s, 6 steps
    # Killed after step 3; the last checkpoint is step 2, so the resumed run
    # fits twice (the rest of epoch 1, then epoch 2) on one clock.
    with pytest.raises(Interrupt):
        run("adversarial", tmp_path / "resumed", kill_at=3, callbacks=[clock])
    state = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert (state["global_step"], state["train_seconds"]) == (2, 20.0)
    clock.now += 1e6  # time between the kill and the restart is not training
    _, info = run("adversarial", tmp_path / "resumed", callbacks=[clock])
    assert info["train_seconds"] == 60.0  # step 3 lost to the kill is counted once, redone
    _, info = run("adversarial", tmp_path / "resumed", callbacks=[clock])
    assert info["completed_before"] and info["train_seconds"] == 60.0


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    trainer, _ = run("adversarial", tmp_path)
    before = json.loads((tmp_path / "state.json").read_text())
    ckpt = TrainingCheckpoint(str(tmp_path), STEPS)
    ckpt.set_model(trainer)
    ckpt.restore_from(before)
    trainer.optimizer.iterations.assign(99)

    def crash(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise Interrupt()

    monkeypatch.setattr(trainer, "save_weights", crash)
    with pytest.raises(Interrupt):
        ckpt.save(5, 1)
    assert json.loads((tmp_path / "state.json").read_text()) == before
    assert (tmp_path / before["weights"]).is_file()
    keras.backend.clear_session()
    resumed, info = run("adversarial", tmp_path)  # loads the previous checkpoint
    assert info["completed_before"]


def test_a_nan_loss_stops_naming_the_step_and_the_untouched_last_checkpoint(tmp_path):
    trainer = build("adversarial")
    train = split()
    ckpt = TrainingCheckpoint(str(tmp_path), STEPS, every_steps=2,
                              last_path=str(tmp_path / "model.keras"))

    def dataset_fn(epoch, step):
        ds = data.make_dataset(train, BATCH, training=True, seed=7, epochs=EPOCHS,
                               start_epoch=epoch, start_step=step)
        # The 5th batch of the run (epoch 2, step 2) carries a NaN pixel.
        return ds.enumerate().map(
            lambda i, b: (b[0] + tf_nan_if(i + epoch * STEPS + step == 4), b[1], b[2]))

    with pytest.raises(TrainingError) as err:
        fit_resumable(trainer, dataset_fn, EPOCHS, STEPS, ckpt, verbose=0)
    message = str(err.value)
    assert "loss nan at epoch 2, step 2 (global step 5)" in message
    assert f"last good checkpoint is {tmp_path}/ckpt-000000004.weights.h5" in message
    assert "after 1 epochs and 1 steps, global step 4" in message
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["global_step"] == 4 and not state["completed"]
    model = keras.saving.load_model(tmp_path / "model.keras")  # epoch 1's network, finite
    assert all(np.isfinite(w).all() for w in model.get_weights())


def tf_nan_if(condition):
    return tf.where(condition, tf.constant(np.nan, tf.float32), 0.0)


def test_a_mirrored_run_resumes_to_the_uninterrupted_mirrored_result(tmp_path):
    """Two replicas: killed, then resumed under the strategy (bank and generators too)."""
    strategy = make_strategy("mirrored", cpu_devices=2)
    reference, _ = run("gacd", tmp_path / "reference", strategy=strategy)
    want = state_of(reference)
    keras.backend.clear_session()
    with pytest.raises(Interrupt):
        run("gacd", tmp_path / "mirrored", kill_at=5, strategy=strategy)
    keras.backend.clear_session()
    resumed, info = run("gacd", tmp_path / "mirrored", strategy=strategy)
    assert info["resumed_from"]["global_step"] == 4
    got = state_of(resumed)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_every_random_generator_of_every_trainer_is_found():
    from gacd_tf.methods import ARDDistiller, KDDistiller
    from gacd_tf.training.training_checkpoint import find_seed_generators

    student, teacher = tiny(1, "student", batch_norm=False), tiny(2, "teacher", batch_norm=False)
    trades = AdversarialTrainer(student, attack=PGD(steps=1, seed=0), trades_beta=6.0)
    found = find_seed_generators(trades)
    assert list(found) == ["attack.seed_generator", "eval_attack.seed_generator"]
    assert found["attack.seed_generator"] is trades.attack.seed_generator
    ard = ARDDistiller(student, teacher, attack=PGD(steps=1, seed=0), eval_attack=PGD(seed=1))
    assert list(find_seed_generators(ard)) == ["attack.seed_generator",
                                               "eval_attack.seed_generator"]
    kd = KDDistiller(student, teacher)
    assert list(find_seed_generators(kd)) == ["eval_attack.seed_generator"]
    gacd = build("gacd")
    assert list(find_seed_generators(gacd)) == [
        "attack.seed_generator", "eval_attack.seed_generator", "sampler.seed_generator"]
