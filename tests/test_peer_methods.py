"""The peer methods (PEERS: RSLAD, AdaAD; IGDM under distribution and resume): losses and inner objectives equal NumPy
re-derivations of the official code's formulas, their adversarial examples stay in
the threat model and raise the inner objective, a mirrored step equals a
single-device step, a killed run resumes to the uninterrupted result, and
gacd-distill runs each end to end and lists its flags. A training step of KD, ARD,
RSLAD and AdaAD reports the official formula on the official inputs."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from program_helpers import run_program, write_tiny_cifar10

from gacd_tf import data
from gacd_tf.attacks import PGD
from gacd_tf.training.distribute import make_strategy
from gacd_tf.methods import METHODS, ARDDistiller, KDDistiller, MethodContext
from gacd_tf.training import TrainingCheckpoint, fit_resumable
from gacd_tf.methods.adaad import (AdaADAttack, AdaADDistiller, AdaADObjective,
                                              adaad_loss)
from gacd_tf.methods.igdm import IGDMDistiller
from gacd_tf.methods.rslad import RSLADAttack, RSLADDistiller, rslad_loss
from numpy_refs import kl_rows, log_softmax
from tiny_models import tiny

EPS = 8 / 255
PEERS = [
    "rslad",
    "adaad",
]
OFFICIAL_ALPHA = {
    "rslad": 5 / 6,
    "adaad": 1.0,
}


def random_logits(rng, batch, classes, count):
    return [rng.normal(0, 3, (batch, classes)) for _ in range(count)]


def f32(*arrays):
    return [tf.constant(a, tf.float32) for a in arrays]


# --- RSLAD ------------------------------------------------------------------------------

def official_rslad(adv, nat, teacher, tiny=1e-5):
    """RSLAD's training scripts, literally: kl_loss(a, b) = -a b + log(b + 1e-5) b, torch.mean
    over batch and classes, x10 on CIFAR-100, 5/6 adversarial + 1/6 natural."""
    b = np.exp(log_softmax(teacher))
    scale = 10.0 if teacher.shape[1] == 100 else 1.0

    def kl(student):
        return scale * np.mean(-log_softmax(student) * b + np.log(b + tiny) * b)

    return 5 / 6 * kl(adv) + 1 / 6 * kl(nat)


@pytest.mark.parametrize("classes", [10, 100])
def test_rslad_official_loss_is_the_official_scripts_formula(classes):
    adv, nat, teacher = random_logits(np.random.default_rng(classes), 6, classes, 3)
    got = float(rslad_loss(*f32(adv, nat, teacher)))
    assert got == pytest.approx(official_rslad(adv, nat, teacher, tiny=0.0), rel=1e-5)
    # The script's log(b + 1e-5), a constant for the student, moves each element by at
    # most 1e-5 (b log(1 + 1e-5 / b) <= 1e-5), times its x10 on CIFAR-100.
    scale = 10.0 if classes == 100 else 1.0
    assert abs(got - official_rslad(adv, nat, teacher)) <= 1e-5 * scale


@pytest.mark.parametrize("alpha, reduction, weighted", [
    (5 / 6, "batchmean", False), (0.3, "official", True), (1.0, "batchmean", True)])
def test_rslad_loss_equals_numpy(alpha, reduction, weighted):
    rng = np.random.default_rng(1)
    adv, nat, teacher = random_logits(rng, 5, 7, 3)
    w = rng.uniform(0, 1, 5) if weighted else np.ones(5)
    want = alpha * np.mean(w * kl_rows(teacher, adv)) + (1 - alpha) * np.mean(
        w * kl_rows(teacher, nat))
    want *= 0.1 if reduction == "official" else 1.0
    got = rslad_loss(*f32(adv, nat, teacher), alpha=alpha, kl_reduction=reduction,
                     sample_weight=tf.constant(w, tf.float32) if weighted else None)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_rslad_inner_objective_is_the_kl_from_the_teacher_s_natural_prediction():
    student, teacher = random_logits(np.random.default_rng(2), 4, 10, 2)
    target = np.exp(log_softmax(teacher))
    got = RSLADAttack().objective(tf.constant(student, tf.float32), tf.constant(target,
                                                                                tf.float32))
    np.testing.assert_allclose(got.numpy(), kl_rows(teacher, student), rtol=1e-5, atol=1e-6)


# --- AdaAD ------------------------------------------------------------------------------

def official_adaad(adv, nat, t_adv, t_nat, alpha):
    """AdaAD's main.py, literally: nn.KLDivLoss() (mean over every element) on CIFAR-10,
    sum / batch on CIFAR-100."""
    def kl(student, teacher):
        b = np.exp(log_softmax(teacher))
        elements = b * (np.log(b) - log_softmax(student))
        return elements.mean() if teacher.shape[1] == 10 else elements.sum() / len(teacher)

    return alpha * kl(adv, t_adv) + (1 - alpha) * kl(nat, t_nat)


@pytest.mark.parametrize("classes, alpha", [(10, 1.0), (10, 0.4), (100, 0.7)])
def test_adaad_official_loss_is_the_official_scripts_formula(classes, alpha):
    logits = random_logits(np.random.default_rng(classes), 6, classes, 4)
    got = float(adaad_loss(*f32(*logits), alpha=alpha))
    assert got == pytest.approx(official_adaad(*logits, alpha), rel=1e-5)


@pytest.mark.parametrize("alpha, reduction, weighted", [
    (1.0, "batchmean", False), (0.3, "mean", True), (0.6, "official", True)])
def test_adaad_loss_equals_numpy(alpha, reduction, weighted):
    rng = np.random.default_rng(3)
    adv, nat, t_adv, t_nat = random_logits(rng, 5, 7, 4)
    w = rng.uniform(0, 1, 5) if weighted else np.ones(5)
    want = alpha * np.mean(w * kl_rows(t_adv, adv)) + (1 - alpha) * np.mean(
        w * kl_rows(t_nat, nat))
    want /= 7 if reduction == "mean" else 1  # "official" with 7 classes: the plain KL
    got = adaad_loss(*f32(adv, nat, t_adv, t_nat), alpha=alpha, kl_reduction=reduction,
                     sample_weight=tf.constant(w, tf.float32) if weighted else None)
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_adaad_inner_objective_and_its_gradient_through_the_teacher_equal_numpy():
    student, teacher = random_logits(np.random.default_rng(4), 4, 10, 2)
    s, t = f32(student, teacher)
    with tf.GradientTape() as tape:
        tape.watch([s, t])
        value = AdaADObjective()({"logits": s, "teacher_logits": t}, None)
        total = tf.reduce_sum(value)
    grad_s, grad_t = tape.gradient(total, [s, t])
    kl = kl_rows(teacher, student)
    np.testing.assert_allclose(value.numpy(), kl, rtol=1e-5, atol=1e-6)
    p, q = np.exp(log_softmax(teacher)), np.exp(log_softmax(student))
    # d KL / d z_S = q - p; d KL / d z_T = p (log p - log q - KL): the teacher is not detached.
    np.testing.assert_allclose(grad_s.numpy(), q - p, atol=1e-5)
    want_t = p * (log_softmax(teacher) - log_softmax(student) - kl[:, None])
    np.testing.assert_allclose(grad_t.numpy(), want_t, atol=1e-5)
    assert np.abs(want_t).max() > 1e-2


# --- Both: the inner attack ---------------------------------------------------------------

def images(rng, n=8):
    x = rng.uniform(0, 1, (n, 8, 8, 3)).astype("float32")
    x[:, 0] = 0.0  # saturated pixels: the [0, 1] clip must act
    x[:, 1] = 1.0
    return x


def rslad_inner_problem(attack_kwargs):
    student, teacher = tiny(1, "student"), tiny(2, "teacher", width=6)
    x = images(np.random.default_rng(0))
    return RSLADAttack(**attack_kwargs), student, tf.nn.softmax(teacher(x, training=False)), x


def adaad_inner_problem(attack_kwargs):
    pair = AdaADDistiller(tiny(1, "student"), tiny(2, "teacher", width=6)).student_and_teacher
    return AdaADAttack(**attack_kwargs), pair, None, images(np.random.default_rng(0))


INNER_PROBLEMS = {
    "rslad": rslad_inner_problem,
    "adaad": adaad_inner_problem,
}


# --- A step of each method: the official formula on the official inputs ----------------

def ce(logits, labels):
    return -log_softmax(logits)[np.arange(len(labels)), labels].mean()


def teacher_confidence(t, x, y):
    """GACD's sample weight, applied to ARD by its reweighting ablation: p_T(x)[y]."""
    return np.exp(log_softmax(t(x)))[np.arange(len(y)), y]


OFFICIAL_STEP = {
    # RepDistiller's KD: a T^2 KL(T(x)/T || S(x)/T), batch mean, + (1 - a) CE(S(x)).
    "kd": (KDDistiller, dict(), lambda s, t, x, x_adv, y: 0.9 * 16 * kl_rows(
        t(x) / 4, s(x) / 4).mean() + 0.1 * ce(s(x), y)),
    # ARD's main.py: a T^2 KLDivLoss() (mean over every element) of S(x_adv)/T against
    # T(x)/T, + (1 - a) CE(S(x)); a = 0.5 here, so the natural pass counts too.
    "ard": (ARDDistiller, dict(ard_alpha=0.5), lambda s, t, x, x_adv, y: 0.5 * 900 * kl_rows(
        t(x) / 30, s(x_adv) / 30).mean() / 10 + 0.5 * ce(s(x), y)),
    # The same with each example's KL weighted by the teacher's confidence.
    "ard reweighted": (ARDDistiller, dict(ard_alpha=0.5, reweight=True),
                       lambda s, t, x, x_adv, y: 0.5 * 900 * (teacher_confidence(t, x, y) * kl_rows(
                           t(x) / 30, s(x_adv) / 30)).mean() / 10 + 0.5 * ce(s(x), y)),
    "rslad": (RSLADDistiller, dict(), lambda s, t, x, x_adv, y: official_rslad(
        s(x_adv), s(x), t(x), tiny=0.0)),
    "adaad": (AdaADDistiller, dict(adaad_alpha=0.4), lambda s, t, x, x_adv, y: official_adaad(
        s(x_adv), s(x), t(x_adv), t(x), 0.4)),
}


@pytest.mark.parametrize("method", list(OFFICIAL_STEP))
def test_a_step_s_loss_is_the_official_formula_on_the_official_inputs(method):
    """Which network sees which images (x or x_adv) in the step: the losses are tested
    above; here the step's reported loss, with a fixed x_adv in place of the attack."""
    networks = {}
    for name, seed, width in (("student", 1, 4), ("teacher", 2, 6)):
        network = tiny(seed, name, classes=10, width=width, batch_norm=False)
        logits = network.get_layer("logits")
        logits.kernel.assign(30.0 * logits.kernel)  # logits of several units
        networks[name] = network
    trainer_class, options, official = OFFICIAL_STEP[method]
    trainer = trainer_class(networks["student"], networks["teacher"], weight_decay=0.0,
                            **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    x_adv = np.clip(x + rng.choice([-0.5, 0.5], x.shape), 0, 1).astype("float32")
    trainer.attack = lambda *args: tf.constant(x_adv)
    loss = trainer.train_on_batch(x, y, return_dict=True)["loss"]

    def network_of(name):
        return lambda images: networks[name](images).numpy().astype("float64")

    s, t = network_of("student"), network_of("teacher")
    assert loss == pytest.approx(official(s, t, x, x_adv, y), rel=1e-5)
    # The inputs matter: the formula with x and x_adv swapped is another number.
    assert abs(official(s, t, x_adv, x, y) - loss) > 1e-3 * abs(loss)


def inner_problem(method, steps, seed=5):
    """(attack, model attacked, target, images) of a method's inner maximisation."""
    return INNER_PROBLEMS[method](dict(steps=steps, seed=seed))


@pytest.mark.parametrize("method", PEERS)
def test_adversarial_examples_stay_in_the_ball_and_raise_the_inner_objective(method):
    attack, model, target, x = inner_problem(method, steps=5)
    x_adv = attack(model, x, target).numpy()
    assert np.abs(x_adv - x).max() <= EPS + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.abs(x_adv - x).max() > EPS / 2  # it moved

    def objective(points):
        return attack.objective(model(points, training=False), target).numpy()

    start = objective(x)
    end = objective(x_adv)
    assert (end > start).all(), (start, end)
    # More than a random corner of the same ball gains.
    corner = np.clip(x + EPS * np.sign(np.random.default_rng(1).normal(size=x.shape)), 0, 1)
    assert end.sum() - start.sum() > 2 * abs(objective(corner.astype("float32")).sum()
                                             - start.sum())

    # Same seed, same examples; a fresh generator state gives the same points.
    again, model, target, x = inner_problem(method, steps=5)
    np.testing.assert_array_equal(again(model, x, target).numpy(), x_adv)


@pytest.mark.parametrize("method", PEERS)
def test_the_start_is_x_plus_small_gaussian_noise_and_is_returned_projected(method):
    attack, model, target, x = inner_problem(method, steps=0)
    start = attack.start(tf.constant(x)).numpy()
    noise = start - x
    assert 0.0005 < noise.std() < 0.0015 and abs(noise.mean()) < 2e-4
    assert start.min() < 0.0 and start.max() > 1.0  # not clipped, as the official start
    x0 = attack(model, x, target).numpy()  # no steps: a start, returned projected
    assert x0.min() >= 0.0 and x0.max() <= 1.0
    assert 0.0 < np.abs(x0 - x).max() < 0.01


@pytest.mark.parametrize("attack_class", [
    RSLADAttack,
    AdaADAttack,
])
def test_a_replica_starts_from_its_rows_of_the_single_device_draw(attack_class):
    x = images(np.random.default_rng(0))
    single = attack_class(seed=3).start(tf.constant(x)).numpy()
    strategy = make_strategy("mirrored")
    with strategy.scope():
        attack = attack_class(seed=3)
    rows = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x[4 * ctx.replica_id_in_sync_group:][:4]))
    starts = strategy.run(tf.function(attack.start), args=(rows,))
    got = np.concatenate([s.numpy() for s in strategy.experimental_local_results(starts)])
    np.testing.assert_array_equal(got, single)


# --- Both: the registry, mirrored parity and resume ---------------------------------------

@pytest.mark.parametrize("method", PEERS)
def test_defaults_are_the_official_ones_and_the_attack_follows_the_context(method):
    student, teacher = tiny(1, "student", batch_norm=False), tiny(2, "teacher", batch_norm=False)
    trainer, record = METHODS.get(method).from_settings(
        student, teacher, {}, MethodContext(seed=9, train_attack_steps=4, eps=4 / 255))
    assert record["reweight"] is False and trainer.reweight is False
    assert record[f"{method}_kl_reduction"] == "official"
    assert getattr(trainer, f"{method}_alpha") == pytest.approx(OFFICIAL_ALPHA[method])
    assert record["attack"]["steps"] == 4 and record["attack"]["eps"] == 4 / 255
    assert record["attack"]["step_size"] == 2 / 255 and record["attack"]["start_std"] == 0.001
    trainer, record = METHODS.get(method).from_settings(student, teacher, {},
                                                        MethodContext(reweight=True))
    assert trainer.reweight is True and record["reweight"] is True


def build(method, reweight=True, batch_norm=True):
    """A trainer with every option on (alpha 0.5: both terms; reweighting), tiny networks.
    IGDM (gacd_tf/methods/igdm.py; its own tests are in test_igdm.py) has no reweighting;
    its ramp runs over EPOCHS epochs of STEPS steps."""
    student = tiny(1, "student", batch_norm=batch_norm)
    teacher = tiny(2, "teacher", width=6, batch_norm=batch_norm)
    if method == "igdm":
        return IGDMDistiller(student, teacher, epochs=EPOCHS, steps_per_epoch=STEPS,
                             attack=AdaADAttack(steps=2, seed=3), igdm_alpha=0.5,
                             eval_attack=PGD(steps=1, seed=4))
    trainer, attack = {
        "rslad": (RSLADDistiller, RSLADAttack),
        "adaad": (AdaADDistiller, AdaADAttack),
    }[method]
    return trainer(student, teacher, attack=attack(steps=2, seed=3), **{f"{method}_alpha": 0.5},
                   reweight=reweight, eval_attack=PGD(steps=1, seed=4))


def replica_values(variable):
    value = variable.value
    return [v.numpy() for v in getattr(value, "values", [value])]


# The trainers under distribution and resume: the peers and IGDM.
TRAINERS = PEERS + ["igdm"]


@pytest.mark.parametrize("method", TRAINERS)
def test_mirrored_step_equals_single_device_step(method):
    rng = np.random.default_rng(0)
    batch = (images(rng), (np.arange(8) % 3).astype("int32"))

    def two_steps(strategy):
        with strategy.scope():
            trainer = build(method)
            trainer.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
        trainer.fit(tf.data.Dataset.from_tensors(batch), epochs=2, verbose=0)
        return trainer

    single = two_steps(tf.distribute.get_strategy())
    mirrored = two_steps(make_strategy("mirrored"))
    assert mirrored.distribute_strategy.num_replicas_in_sync == 2
    pairs = list(zip(single.weights, mirrored.weights))
    assert pairs and len(single.weights) == len(mirrored.weights)
    moved = False
    for a, b in pairs:
        copies = replica_values(b)
        for copy in copies[1:]:
            np.testing.assert_array_equal(copy, copies[0], err_msg=b.path)
        np.testing.assert_allclose(copies[0], a.numpy(), rtol=1e-4, atol=1e-5, err_msg=b.path)
    for w, w0 in zip(single.student.trainable_weights, build(method).student.trainable_weights):
        moved |= not np.allclose(w.numpy(), w0.numpy())
    assert moved


N, BATCH, EPOCHS = 24, 8, 2
STEPS = N // BATCH


class Interrupt(Exception):
    """Stands in for a kill."""


class KillAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise Interrupt()


def resumable_run(method, directory, kill_at=None):
    trainer = build(method, batch_norm=False)
    trainer.compile(optimizer=keras.optimizers.SGD(
        keras.optimizers.schedules.CosineDecay(0.05, EPOCHS * STEPS), momentum=0.9))
    rng = np.random.default_rng(0)
    train = data.ArraySplit(images=rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8),
                            labels=(np.arange(N) % 3).astype(np.int32),
                            info=data.get_dataset_info("cifar10"), split="train")

    def dataset_fn(epoch, step):
        return data.make_dataset(train, BATCH, training=True, seed=7, epochs=EPOCHS,
                                 start_epoch=epoch, start_step=step)

    ckpt = TrainingCheckpoint(str(directory), STEPS, every_steps=2)
    callbacks = [KillAtStep(kill_at)] if kill_at else []
    info = fit_resumable(trainer, dataset_fn, EPOCHS, STEPS, ckpt, callbacks=callbacks,
                         verbose=0)
    return trainer, info


@pytest.mark.parametrize("method", TRAINERS)
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path, method):
    reference, _ = resumable_run(method, tmp_path / "reference")
    want = [v.numpy().copy() for v in reference.weights + reference.optimizer.variables]
    keras.backend.clear_session()
    with pytest.raises(Interrupt):
        resumable_run(method, tmp_path / "resumed", kill_at=5)
    state = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert state["global_step"] == 4
    # The inner attack's generator is checkpointed, and it has advanced.
    assert set(state["seed_generators"]) == {"attack.seed_generator",
                                             "eval_attack.seed_generator"}
    keras.backend.clear_session()
    resumed, info = resumable_run(method, tmp_path / "resumed")
    assert info["resumed_from"]["global_step"] == 4
    got = [v.numpy() for v in resumed.weights + resumed.optimizer.variables]
    assert len(got) == len(want)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# --- gacd-distill -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    from gacd_tf.models import build_model

    root = tmp_path_factory.mktemp("peer_inputs")
    write_tiny_cifar10(root / "data", train=16, test=8)
    build_model("resnet8", num_classes=10).save(root / "teacher.keras")
    return root


# Per method: extra flags and what metrics.json must then record.
END_TO_END = {
    "rslad": (["--reweight", "--rslad_kl_reduction=batchmean"],
              {"reweight": True, "rslad_kl_reduction": "batchmean", "rslad_alpha": 5 / 6}),
    "adaad": (["--adaad_alpha=0.5"],
              {"reweight": False, "adaad_alpha": 0.5, "adaad_kl_reduction": "official"}),
}


@pytest.mark.slow  # ~40 s each on a shared 2-core CPU (TensorFlow start-up, tracing)
@pytest.mark.parametrize("method", PEERS)
def test_gacd_distill_runs_the_method_end_to_end(tiny_run_inputs, tmp_path, method):
    root = tiny_run_inputs
    out = tmp_path / method
    extra, recorded = END_TO_END[method]
    result = run_program(
        "distill", f"--method={method}", f"--teacher={root / 'teacher.keras'}",
        "--arch=resnet8", f"--data_dir={root / 'data'}", "--epochs=1", "--batch_size=8",
        "--train_attack_steps=1", "--attack_steps=1", "--val_examples=0",
        f"--model_dir={out}", "--verbose=0", *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["teacher_unchanged"] is True
    assert metrics["num_examples"] == 8 and 0 <= metrics["robust_accuracy"] <= 1
    assert (out / "model.keras").is_file()
    settings = metrics["settings"]
    assert settings["attack"]["attack"] == f"{method}_pgd" and settings["attack"]["steps"] == 1
    assert {key: settings[key] for key in recorded} == recorded


def test_gacd_distill_helpfull_lists_each_method_s_flags_with_their_help():
    result = run_program("distill", "--helpfull")
    assert result.returncode in (0, 1), result.stderr[-2000:]  # absl exits 1 after help
    text = " ".join((result.stdout + result.stderr).split())
    for method in PEERS:
        for setting in METHODS.get(method).SETTINGS:
            assert f"--{setting.name}:" in text, setting.name
            assert " ".join(setting.help.split()) in text, setting.name
    reweight = re.search(r"--\[no\]reweight: (.*?)\)", text).group(1)
    off = reweight.split("off for ")[1]
    assert all(method in off for method in PEERS), reweight
