"""The GACD trainer (:class:`GACDDistiller`, method ``"gacd"``)."""

import keras
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.errors import ConfigError
from gacd_tf.methods.common import per_example_ce, unpack_batch
from gacd_tf.methods.distiller import Distiller
from gacd_tf.methods.gacd.memory_bank import MemoryBank
from gacd_tf.methods.gacd.nce import (cross_class_cosine, initial_log_z, nce_logits,
                                      reweighted_nce_loss, within_class_cosine)
from gacd_tf.methods.gacd.negative_sampling import OtherClassSampler
from gacd_tf.methods.gacd.ot_objective import OptimalTransport
from gacd_tf.methods.registry import METHODS
from gacd_tf.methods.robust_trainer import accuracy
from gacd_tf.models import feature_dim, features_and_logits
from gacd_tf.settings import Setting
from gacd_tf.training.distribute import all_gather, local_rows

TEACHER_INPUTS = ("adversarial", "natural")
NCE_FORMS = ("two_sided", "one_sided")
# h's normaliser: CRD's Z fixed on the first batch (our default), or none (the paper's Eq. 9).
NCE_NORMALISERS = ("crd", "paper")


@METHODS.register("gacd")
class GACDDistiller(Distiller):
    """Distils a teacher's robust features into a student by reweighted NCE.

    Each step (SPEC "GACD"):

    1. positives ``x+``: PGD against the *student* ascending the OT distance
       between its representation of the clean and the adversarial batch
       (default one step of size eps from a random start, features);
    2. teacher on ``x+`` (``teacher_input="adversarial"``, Algorithm 1) or
       on ``x`` ("natural"); sample weight ``w = softmax(z_T)[y]`` (or 1);
    3. embeddings ``e_S = l2norm(W_S f_S(x+))`` (live, with gradient) and
       ``e_T = l2norm(W_T f_T)``; ``k`` negatives per sample from other
       classes, scored against the student memory bank (no gradient);
    4. ``L = w_nce * L_GACD + w_ce * CE(z_S(x+), y)``; the student and both
       embedding heads are trained, the teacher is not;
    5. ``bank[idx] <- l2norm(m bank[idx] + (1 - m) e_S)`` (two-sided: also
       the teacher bank with ``e_T``).

    ``nce_form`` (SPEC "Which form is the default"): ``"two_sided"`` (the
    default, CRD's form) is ``L_GACD = L(e_T anchor, student bank, live e_S
    positive) + L(e_S anchor, teacher bank, live e_T positive)``, both
    reweighted by ``w``, each bank with its own fixed ``Z``; the second term
    pushes the live student embedding away from other classes' teacher
    embeddings. ``"one_sided"`` keeps the first term only (the paper-literal
    ablation); measured, its student bank collapses (every class onto one
    direction) because nothing pushes the student away from other classes.

    Each epoch's logs get ``bank_cross_class_cosine``: the mean cosine
    between student-bank rows of different classes (:func:`gacd_tf.methods.gacd.
    cross_class_cosine`) as the epoch leaves the bank, with
    ``bank_centred_within_class_cosine`` beside it (the class structure left
    once the rows' common direction is removed: a high cross-class cosine
    with a positive centred within-class one is an offset, not a collapse),
    and, two-sided, the same two of the teacher bank
    (``teacher_bank_...``; :meth:`epoch_end_logs`, added by the
    :class:`gacd_tf.training.EpochEndLogs` callback, which ``fit_resumable``
    and the programs use; pass it to a plain ``fit``).
    Batches must carry the per-sample index ``(image, label, index)``.

    Args:
        student, teacher: networks exposing features (see
            :func:`gacd_tf.models.features_and_logits`); teacher frozen.
        train_labels: int labels [M] of the whole training set by sample
            index (negative sampling; M sizes the bank).
        embed_dim: d (128).
        nce_k: negatives per sample (16384).
        nce_t: temperature T (0.1, paper).
        nce_momentum: bank momentum m (0.5).
        w_nce, w_ce: loss weights (0.8, 1.0).
        attack: the positive-generating attack (default OT, 1 step of eps).
        teacher_input: "adversarial" or "natural".
        reweight: teacher-confidence weights (True; False = plain NCE ablation).
        nce_form: "two_sided" (default) or "one_sided" (teacher anchor only).
        nce_normaliser: "crd" (default: ``P = e^{s/T} / Z``, CRD's ``Z`` fixed
            on the first batch, each bank its own) or "paper" (``P = e^{s/T}``,
            no ``Z``: the paper's ``h = e^{s/T} / (e^{s/T} + k/M)``, Eq. 9/10).
        seed: seed of the bank initialisation, negatives and heads.
        **kwargs: passed to :class:`Distiller` (``weight_decay``, ``eval_attack``).

    Example:
    >>> gacd = GACDDistiller(build_model("resnet20"), teacher, train.labels)  # doctest: +SKIP
    >>> gacd.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    >>> gacd.fit(make_dataset(train, 64, training=True), epochs=1)

    Reference:
        Bai et al., "Feature Distillation With Guided Adversarial Contrastive
        Learning"; Tian et al., "Contrastive Representation Distillation",
        ICLR 2020; Zhang & Wang, "Feature Scattering", NeurIPS 2019.
    """

    SETTINGS = (
        Setting("nce_k", 16384, "GACD: negatives per sample.", kind="int",
                lower=1),
        Setting("nce_t", 0.1, "GACD: NCE temperature.", positive=True),
        Setting("nce_momentum", 0.5, "GACD: memory-bank momentum.",
                lower=0.0, upper=0.999),
        Setting("embed_dim", 128, "GACD: embedding dimension.", kind="int",
                lower=1),
        Setting("w_nce", 0.8, "GACD: weight of the NCE loss.", lower=0.0),
        Setting("w_ce", 1.0, "GACD: weight of the CE loss on x+.", lower=0.0),
        Setting("teacher_input", "adversarial", "GACD: the teacher sees x+ (Algorithm 1) or "
                "the natural x.", kind="enum", choices=TEACHER_INPUTS),
        Setting("nce_form", "two_sided", "GACD: NCE form. two_sided = teacher-anchored term "
                "+ CRD's student-anchored term against a teacher bank (default: the "
                "one-sided bank collapses); one_sided = teacher anchor only (paper-literal "
                "ablation).", kind="enum", choices=NCE_FORMS),
        Setting("nce_normaliser", "crd", "GACD: normaliser of h. crd = e^{s/T} / Z with "
                "CRD's Z fixed on the first batch (default); paper = e^{s/T}, no Z (the "
                "paper's h = e^{s/T} / (e^{s/T} + k/M)).", kind="enum",
                choices=NCE_NORMALISERS),
        Setting("ot_representation", "features", "GACD: representation of the OT attack "
                "(Feature Scattering: logits).", kind="enum", choices=("features", "logits"),
                constructor=False),
        Setting("ot_steps", 1, "GACD: steps of the OT attack.", kind="int", lower=1,
                constructor=False),
        Setting("ot_step_size", None, "GACD: OT attack step size (default --eps).", lower=0.0,
                step_of=("ot_steps", "eps"), constructor=False),
    )
    REWEIGHT = True
    NEEDS_TRAIN_LABELS = True

    @classmethod
    def build_attack(cls, settings, context):
        return context.attack(objective=OptimalTransport(settings["ot_representation"]),
                              step_size=settings["ot_step_size"] or context.eps,
                              steps=settings["ot_steps"])

    def __init__(self, student, teacher, train_labels, embed_dim=128, nce_k=16384, nce_t=0.1,
                 nce_momentum=0.5, w_nce=0.8, w_ce=1.0, attack=None,
                 teacher_input="adversarial", reweight=True, nce_form="two_sided",
                 nce_normaliser="crd", seed=None, **kwargs):
        names = ["loss", "nce_loss", "ce_loss", "adv_accuracy", "teacher_weight"]
        super().__init__(student, teacher, names, **kwargs)
        if teacher_input not in TEACHER_INPUTS:
            raise ConfigError(f"teacher_input must be one of {TEACHER_INPUTS}, got {teacher_input!r}")
        if nce_form not in NCE_FORMS:
            raise ConfigError(f"nce_form must be one of {NCE_FORMS}, got {nce_form!r}")
        if nce_normaliser not in NCE_NORMALISERS:
            raise ConfigError(f"nce_normaliser must be one of {NCE_NORMALISERS}, got "
                              f"{nce_normaliser!r}")
        self.nce_normaliser = nce_normaliser
        if int(nce_k) < 1:
            raise ConfigError(f"nce_k must be >= 1, got {nce_k}")
        if not nce_t > 0:
            raise ConfigError(f"nce_t (temperature) must be > 0, got {nce_t}")
        if not 0 <= nce_momentum < 1:
            raise ConfigError(f"nce_momentum must be in [0, 1), got {nce_momentum}")
        self.nce_k, self.nce_t = int(nce_k), float(nce_t)
        self.w_nce, self.w_ce = w_nce, w_ce
        self.teacher_input, self.reweight, self.nce_form = teacher_input, reweight, nce_form
        self.two_sided = nce_form == "two_sided"
        self.attack = attack if attack is not None else PGD(
            eps=8 / 255, step_size=8 / 255, steps=1, objective=OptimalTransport("features"),
            seed=seed)
        if not hasattr(self.attack.objective, "target_from"):
            raise ConfigError("GACD's attack needs an objective with target_from (e.g. 'ot')")

        self.student_fl = features_and_logits(student)
        self.teacher_fl = features_and_logits(teacher)
        # Distinct sub-seeds, so the two heads, the two banks and the sampler
        # never start from the same random numbers.
        def sub_seed(offset):
            return None if seed is None else seed + offset

        self.num_classes = student.output_shape[-1]
        self.sampler = OtherClassSampler(train_labels, self.num_classes, seed=sub_seed(1))
        self.num_data = self.sampler.num_data
        self.train_labels = tf.constant(train_labels, tf.int32)
        # The heads, embeddings, banks and NCE scores stay float32 under a
        # mixed-precision policy (exp(score / T) with T = 0.1 needs it), and
        # are float64 where Keras' floatx is (benchmarks/torch_parity.py).
        head_dtype = "float64" if keras.config.floatx() == "float64" else "float32"
        self.student_embed = keras.layers.Dense(
            embed_dim, kernel_initializer=keras.initializers.GlorotUniform(sub_seed(2)),
            dtype=head_dtype, name="student_embed")
        self.teacher_embed = keras.layers.Dense(
            embed_dim, kernel_initializer=keras.initializers.GlorotUniform(sub_seed(3)),
            dtype=head_dtype, name="teacher_embed")
        self.student_embed.build((None, feature_dim(student)))
        self.teacher_embed.build((None, feature_dim(teacher)))
        self.student_bank = MemoryBank(self.num_data, embed_dim, nce_momentum, seed=sub_seed(4),
                                       name="student_bank")
        self.teacher_bank = (MemoryBank(self.num_data, embed_dim, nce_momentum,
                                        seed=sub_seed(5), name="teacher_bank")
                             if self.two_sided else None)

    def seed_generators(self):
        return {**super().seed_generators(), "sampler": self.sampler}

    def _nce(self, anchors, positives, bank, negatives, weight):
        pos, neg = nce_logits(anchors, positives, bank.bank, negatives, self.nce_t)
        if self.nce_normaliser == "paper":
            log_z = tf.zeros([], pos.dtype)  # no Z: the paper's h
        else:
            # Z from the global batch's scores, identical on every replica.
            log_z = bank.log_z_once(initial_log_z(all_gather(pos), all_gather(neg),
                                                  self.num_data))
        return reweighted_nce_loss(pos, neg, log_z, self.num_data, weight)

    def nce_loss(self, e_t, e_s, negatives, weight):
        """``L_GACD`` of one batch (each bank's ``Z`` is set on its first call).

        Args:
            e_t, e_s: ``[B, d]`` l2-normalised teacher and (live) student embeddings.
            negatives: ``[B, k]`` bank row indices (other classes).
            weight: ``[B]`` sample weights.

        Returns:
            one-sided: ``L(e_T, e_S, student bank)``; two-sided: that plus
            ``L(e_S, e_T, teacher bank)`` (same negatives, same weights).
        """
        nce = self._nce(e_t, e_s, self.student_bank, negatives, weight)
        if self.two_sided:
            nce += self._nce(e_s, e_t, self.teacher_bank, negatives, weight)
        return nce

    def bank_cross_class_cosines(self):
        """The collapse detector of each bank: ``{"bank_cross_class_cosine": ...}``.

        Mean cosine between rows of different classes
        (:func:`gacd_tf.methods.gacd.cross_class_cosine`) of the student bank and,
        two-sided, ``teacher_bank_cross_class_cosine`` of the teacher bank;
        beside each, ``..._centred_within_class_cosine``
        (:func:`gacd_tf.methods.gacd.within_class_cosine`, centred): the class
        structure left once the direction all rows share is removed. A high
        cross-class cosine with a clearly positive centred within-class one
        is a common offset, not a collapse (docs/methods.md, "The NCE form").
        The banks are identical on every replica, hence so are these values.
        """
        banks = {"bank": self.student_bank}
        if self.two_sided:
            banks["teacher_bank"] = self.teacher_bank
        values = {}
        for prefix, bank in banks.items():
            values[f"{prefix}_cross_class_cosine"] = cross_class_cosine(
                bank.bank, self.train_labels, self.num_classes)
            values[f"{prefix}_centred_within_class_cosine"] = within_class_cosine(
                bank.bank, self.train_labels, self.num_classes, centred=True)
        return values

    def train_step(self, data):
        x, y, idx = unpack_batch(data)
        if idx is None:
            raise ConfigError("GACD needs batches of (image, label, index): use "
                              "gacd_tf.data.make_dataset, whose index feeds the memory bank")
        idx = tf.cast(idx, tf.int32)
        clean = self.attack.objective.target_from(self.student_fl(x, training=False))
        x_pos = self.attack(self.student_fl, x, clean)
        teacher_x = x_pos if self.teacher_input == "adversarial" else x
        teacher_features, teacher_logits = self.teacher_fl(teacher_x, training=False)
        weight = (self.teacher_confidence(teacher_logits, y) if self.reweight
                  else tf.ones_like(teacher_logits[:, 0]))
        # Drawn for the global batch and sliced: replicas agree with one device.
        negatives = local_rows(self.sampler(all_gather(y), self.nce_k), tf.shape(y)[0])

        weights = (self.student.trainable_weights + self.student_embed.trainable_weights
                   + self.teacher_embed.trainable_weights)
        with tf.GradientTape() as tape:
            features, logits = self.student_fl(x_pos, training=True)
            e_s = tf.math.l2_normalize(self.student_embed(features), axis=-1)
            e_t = tf.math.l2_normalize(self.teacher_embed(teacher_features), axis=-1)
            nce = self.nce_loss(e_t, e_s, negatives, weight)
            ce = tf.reduce_mean(per_example_ce(y, logits))
            loss = self.w_nce * nce + self.w_ce * ce
        self.apply_update(tape, loss, weights)
        self.student_bank.update(idx, e_s)
        if self.two_sided:
            self.teacher_bank.update(idx, e_t)
        return self.report(loss=loss, nce_loss=nce, ce_loss=ce,
                           adv_accuracy=accuracy(y, logits), teacher_weight=weight)

    def extra_results(self):
        """What ``gacd-distill`` records after distillation: :meth:`bank_cross_class_cosines`."""
        return {name: round(float(value), 6)
                for name, value in self.bank_cross_class_cosines().items()}

    def epoch_end_logs(self):
        """The collapse detector of the banks as the epoch leaves them (see
        :class:`gacd_tf.training.EpochEndLogs`): ``O(M d)`` per bank, too
        costly to take every step (tens of ms at M = 50,000 on a CPU)."""
        return self.bank_cross_class_cosines()
