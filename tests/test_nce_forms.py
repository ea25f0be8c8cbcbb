"""GACD's two NCE forms and the memory-bank collapse detector, against NumPy.

The references are written from SPEC.md ("Which form is the default", "Score
and estimator h") in float64 NumPy with plain exp / log, and the detector by
brute force over all pairs of rows, independently of the TensorFlow code.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.training.distribute import make_strategy
from gacd_tf.errors import ConfigError
from gacd_tf.methods.gacd import OptimalTransport, cross_class_cosine, within_class_cosine
from gacd_tf.methods import GACDDistiller, build
from gacd_tf.training import EpochEndLogs
from tiny_models import tiny

M, C = 24, 3


# ----------------------------------------------------------------------------- references
def np_cross_class_cosine(rows, labels, same=False, centred=False):
    """Mean over ordered pairs (i, j), labels differ (``same``: i != j and labels
    equal), of cos(rows_i, rows_j): O(M^2). ``centred``: cosines of the unit rows
    minus their mean."""
    if centred:
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        unit_rows = rows / np.where(norms > 0, norms, 1.0)  # a zero row stays zero
        rows = unit_rows - unit_rows.mean(axis=0)
    total, count = 0.0, 0
    for i in range(len(rows)):
        for j in range(len(rows)):
            if (labels[i] == labels[j] and i != j) if same else labels[i] != labels[j]:
                ni, nj = np.linalg.norm(rows[i]), np.linalg.norm(rows[j])
                cos = 0.0 if ni == 0 or nj == 0 else rows[i] @ rows[j] / (ni * nj)
                total, count = total + cos, count + 1
    return total / count


def np_nce(anchors, positives, bank, negatives, weights, temperature, z=None):
    """(loss, Z) of SPEC's reweighted NCE; Z = mean(exp(scores / T)) * M when not given."""
    num_data, k = len(bank), negatives.shape[1]
    pos = np.exp(np.sum(anchors * positives, axis=1) / temperature)
    neg = np.exp(np.einsum("bd,bkd->bk", anchors, bank[negatives]) / temperature)
    if z is None:
        z = np.mean(np.concatenate([pos[:, None], neg], axis=1)) * num_data
    noise = k / num_data
    h_pos = (pos / z) / (pos / z + noise)
    h_neg = (neg / z) / (neg / z + noise)
    per_example = np.log(h_pos) + np.sum(np.log(1 - h_neg), axis=1)
    return -np.mean(weights * per_example), z


def unit(rng, *shape):
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- detector
def test_cross_class_cosine_equals_the_pairwise_mean():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(30, 5)) * rng.uniform(0.1, 3.0, size=(30, 1))  # not unit rows
    rows[7] = 0.0  # a zero row: its cosines count as 0
    labels = rng.integers(0, 4, size=30)
    value = cross_class_cosine(rows.astype("float32"), labels, 4)
    assert value.dtype == tf.float32
    np.testing.assert_allclose(float(value), np_cross_class_cosine(rows, labels), atol=1e-6)


@pytest.mark.parametrize("centred", [False, True])
def test_within_class_and_centred_cosines_equal_the_pairwise_means(centred):
    rng = np.random.default_rng(2)
    rows = rng.normal(size=(30, 5)) * rng.uniform(0.1, 3.0, size=(30, 1))
    rows[3] = 0.0
    labels = rng.integers(0, 4, size=30)
    within = within_class_cosine(rows.astype("float32"), labels, 4, centred=centred)
    assert within.dtype == tf.float32
    np.testing.assert_allclose(float(within), np_cross_class_cosine(
        rows, labels, same=True, centred=centred), atol=1e-6)
    np.testing.assert_allclose(
        float(cross_class_cosine(rows.astype("float32"), labels, 4, centred=centred)),
        np_cross_class_cosine(rows, labels, centred=centred), atol=1e-6)


def test_centred_within_class_cosine_tells_an_offset_from_a_collapse():
    # Rows = a large shared direction + a small class direction + noise: the
    # raw cross-class cosine is high (~.9) for both banks, but only the
    # offset bank keeps its classes apart once the shared direction is gone.
    rng = np.random.default_rng(3)
    labels = np.arange(300) % 3
    shared = np.eye(8)[0] * 3.0
    offset = shared + np.eye(8)[1 + labels] + 0.3 * rng.normal(size=(300, 8))
    collapsed = shared + 0.3 * rng.normal(size=(300, 8))  # nothing of the class left
    for bank in (offset, collapsed):
        assert float(cross_class_cosine(bank, labels, 3)) > 0.8
    assert float(within_class_cosine(offset, labels, 3, centred=True)) > 0.4  # .51
    assert abs(float(within_class_cosine(collapsed, labels, 3, centred=True))) < 0.05
    # No class with two rows: nothing to average.
    assert np.isnan(float(within_class_cosine(offset[:3], labels[:3], 3)))


def test_cross_class_cosine_of_collapsed_and_opposite_banks():
    rows = np.tile([[0.6, 0.8]], (6, 1))
    labels = np.array([0, 1, 2, 0, 1, 2])
    assert float(cross_class_cosine(rows, labels, 3)) == pytest.approx(1.0, abs=1e-6)
    # Two classes pointing in opposite directions: -1.
    rows[labels == 1] *= -1.0
    assert float(cross_class_cosine(rows[labels < 2], labels[labels < 2], 2)) == pytest.approx(
        -1.0, abs=1e-6)
    # An absent class changes nothing (num_classes larger than the labels used).
    assert float(cross_class_cosine(rows[labels < 2], labels[labels < 2], 5)) == pytest.approx(
        -1.0, abs=1e-6)
    # One class only: no pair to average.
    assert np.isnan(float(cross_class_cosine(rows[:2], [1, 1], 3)))


# ----------------------------------------------------------------------------- NCE forms
def trainer(nce_form, embed_dim=4, nce_k=5, nce_normaliser="crd"):
    student, teacher = tiny(1, "student", width=4), tiny(2, "teacher", width=6)
    labels = (np.arange(M) % C).astype("int32")
    attack = PGD(eps=8 / 255, step_size=8 / 255, steps=1, seed=3,
                 objective=OptimalTransport("features"))
    return GACDDistiller(student, teacher, labels, embed_dim=embed_dim, nce_k=nce_k,
                         nce_t=0.2, attack=attack, seed=0, nce_form=nce_form,
                         nce_normaliser=nce_normaliser)


@pytest.mark.parametrize("nce_form", ["two_sided", "one_sided"])
def test_nce_loss_of_each_form_equals_numpy(nce_form):
    gacd = trainer(nce_form)
    assert (gacd.teacher_bank is not None) == (nce_form == "two_sided")
    rng = np.random.default_rng(1)
    student_bank, teacher_bank = unit(rng, M, 4), unit(rng, M, 4)
    gacd.student_bank.bank.assign(student_bank.astype("float32"))
    if gacd.teacher_bank is not None:
        gacd.teacher_bank.bank.assign(teacher_bank.astype("float32"))
    z_student = z_teacher = None
    for step in range(2):  # the second batch reuses each bank's first Z
        e_t, e_s = unit(rng, 6, 4), unit(rng, 6, 4)
        negatives = rng.integers(0, M, size=(6, 5))
        weights = rng.uniform(0.1, 1.0, size=6)
        loss = gacd.nce_loss(tf.constant(e_t, tf.float32), tf.constant(e_s, tf.float32),
                             tf.constant(negatives, tf.int32), tf.constant(weights, tf.float32))
        expected, z_student = np_nce(e_t, e_s, student_bank, negatives, weights, 0.2, z_student)
        if nce_form == "two_sided":
            # CRD's student-anchored term: e_S anchors, the live e_T is the
            # positive, the negatives are teacher-bank rows.
            student_anchored, z_teacher = np_nce(e_s, e_t, teacher_bank, negatives, weights,
                                                 0.2, z_teacher)
            expected += student_anchored
        np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    np.testing.assert_allclose(float(gacd.student_bank.log_z), np.log(z_student), rtol=1e-5)


@pytest.mark.parametrize("nce_form", ["two_sided", "one_sided"])
def test_the_paper_normaliser_has_no_z(nce_form):
    """--nce_normaliser=paper: h = e^{s/T} / (e^{s/T} + k/M), the paper's Eq. 9, i.e. the
    NumPy reference with Z = 1; no bank's Z is set."""
    gacd = trainer(nce_form, nce_normaliser="paper")
    rng = np.random.default_rng(2)
    student_bank, teacher_bank = unit(rng, M, 4), unit(rng, M, 4)
    gacd.student_bank.bank.assign(student_bank.astype("float32"))
    if gacd.teacher_bank is not None:
        gacd.teacher_bank.bank.assign(teacher_bank.astype("float32"))
    before = float(gacd.student_bank.log_z)
    e_t, e_s = unit(rng, 6, 4), unit(rng, 6, 4)
    negatives = rng.integers(0, M, size=(6, 5))
    weights = rng.uniform(0.1, 1.0, size=6)
    loss = gacd.nce_loss(tf.constant(e_t, tf.float32), tf.constant(e_s, tf.float32),
                         tf.constant(negatives, tf.int32), tf.constant(weights, tf.float32))
    expected = np_nce(e_t, e_s, student_bank, negatives, weights, 0.2, z=1.0)[0]
    if nce_form == "two_sided":
        expected += np_nce(e_s, e_t, teacher_bank, negatives, weights, 0.2, z=1.0)[0]
    np.testing.assert_allclose(float(loss), expected, rtol=2e-5)
    # The CRD default differs on the same inputs (its Z is not 1), and paper sets no Z.
    crd = np_nce(e_t, e_s, student_bank, negatives, weights, 0.2)[0]
    assert abs(crd - np_nce(e_t, e_s, student_bank, negatives, weights, 0.2, z=1.0)[0]) > 1e-3
    assert float(gacd.student_bank.log_z) == before
    with pytest.raises(ConfigError, match="nce_normaliser"):
        trainer(nce_form, nce_normaliser="z")


def test_two_sided_is_the_default_and_bad_forms_are_refused():
    assert trainer("two_sided").nce_form == GACDDistiller(
        tiny(1, "s"), tiny(2, "t"), np.arange(M) % C, embed_dim=4, nce_k=2).nce_form
    with pytest.raises(ConfigError, match="nce_form"):
        trainer("symmetric")
    with pytest.raises(ConfigError, match="nce_form"):
        build("gacd", tiny(1, "s"), tiny(2, "t"), train_labels=np.arange(M) % C, nce_form="both")


def data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (M, 8, 8, 3)).astype("float32")
    return x, (np.arange(M) % C).astype("int32"), np.arange(M, dtype="int32")


def fit(strategy, nce_form):
    with strategy.scope():
        gacd = trainer(nce_form, embed_dim=8)
        gacd.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    history = gacd.fit(tf.data.Dataset.from_tensor_slices(data()).batch(8), epochs=2,
                       verbose=0, callbacks=[EpochEndLogs()]).history
    return gacd, history


def replica_values(variable):
    value = variable.value
    return [v.numpy() for v in getattr(value, "values", [value])]


@pytest.mark.parametrize("nce_form", ["two_sided", "one_sided"])
def test_epoch_log_holds_the_detector_of_the_bank_at_the_epoch_end(nce_form):
    gacd, history = fit(tf.distribute.get_strategy(), nce_form)
    labels = np.arange(M) % C
    logged = history["bank_cross_class_cosine"]
    assert len(logged) == 2
    np.testing.assert_allclose(logged[-1], np_cross_class_cosine(
        gacd.student_bank.bank.numpy(), labels), atol=1e-5)
    assert float(gacd.bank_cross_class_cosines()["bank_cross_class_cosine"]) == pytest.approx(
        logged[-1], abs=1e-6)
    np.testing.assert_allclose(history["bank_centred_within_class_cosine"][-1],
                               np_cross_class_cosine(gacd.student_bank.bank.numpy(), labels,
                                                     same=True, centred=True), atol=1e-5)
    if nce_form == "two_sided":
        teacher_bank = gacd.teacher_bank.bank.numpy()
        np.testing.assert_allclose(history["teacher_bank_cross_class_cosine"][-1],
                                   np_cross_class_cosine(teacher_bank, labels), atol=1e-5)
        np.testing.assert_allclose(history["teacher_bank_centred_within_class_cosine"][-1],
                                   np_cross_class_cosine(teacher_bank, labels, same=True,
                                                         centred=True), atol=1e-5)
    else:
        assert "teacher_bank_cross_class_cosine" not in history
        assert "teacher_bank_centred_within_class_cosine" not in history


def test_detector_under_two_replicas_is_that_of_the_shared_bank():
    gacd, history = fit(make_strategy("mirrored"), "two_sided")
    assert gacd.distribute_strategy.num_replicas_in_sync == 2
    banks = replica_values(gacd.student_bank.bank)
    np.testing.assert_array_equal(banks[0], banks[1])
    np.testing.assert_allclose(history["bank_cross_class_cosine"][-1],
                               np_cross_class_cosine(banks[0], np.arange(M) % C), atol=1e-5)
