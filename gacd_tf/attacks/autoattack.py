"""AutoAttack (Croce & Hein, ICML 2020), natively in TensorFlow: the field's standard ensemble.

Each attack of the ensemble runs, in order, only on the points every earlier
attack left robust, always starting from the clean image; a point's first
successful adversarial example is kept. The robust accuracy after the last
attack is the per-example worst case over the ensemble.
"""

import inspect
import math
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from gacd_tf.attacks import autoattack_progress as progress
from gacd_tf.attacks import keyed_random
from gacd_tf.attacks.objectives import as_outputs
from gacd_tf.attacks.pass_counter import PassCounter
from gacd_tf.attacks.registry import AA_VERSIONS as VERSIONS
from gacd_tf.attacks.registry import ATTACKS, AUTOATTACK, NORMS, ensemble_attack_names
from gacd_tf.errors import ConfigError
from gacd_tf.models.folding import fold_batch_norm
from gacd_tf.models.io import float32_copy
from gacd_tf.training.distribute import run_on_replicas

# Thresholds of the reference's checks (checks.py).
_RANDOMIZED_PASSES = 5
_RANDOMIZED_TOL = 1e-4
_PROBABILITY_TOL = 1e-5
_SQUARE_TOL = 0.002
# Images whose logits fingerprint the model in a progress file's key.
_PROBE_EXAMPLES = 16


@ATTACKS.register(AUTOATTACK)
class AutoAttack:
    """The AutoAttack ensemble: APGD-CE, APGD-T, FAB-T and Square (version "standard").

    :meth:`run` evaluates a whole set of examples: it classifies the clean
    images, runs the reference's sanity checks, then each attack on the
    points still robust (batches of ``batch_size`` of them), and returns
    per-example robust flags, the adversarial examples and the robust
    accuracy after each attack. :meth:`perturb` is the batch interface every
    attack shares (``(x_adv, robust)`` for one batch, inside ``tf.function``
    too), so ``--attack=autoattack`` works wherever an attack is named.

    Counting follows SPEC "Counting": a point is robust only if its clean
    image is classified correctly and no attack found a misclassified
    point within the ball; its adversarial example is the first one found.
    Robust points keep their clean image as ``x_adv`` (as in the reference).
    With ``reclassify`` (the default, as the reference) the point an attack
    returns is classified once more and the break counts only if that pass
    misclassifies it too: for a deterministic model this changes nothing,
    for a randomised one (version "rand") a single unlucky EOT pass no longer
    breaks a point.

    Every random draw is keyed per example (seed, the example's index in the
    evaluated set, attack, restart or target, and query for Square; see
    :mod:`~gacd_tf.attacks.keyed_random`), so the per-example flags are the
    same for any batch size, any order of the batches and after a resume.

    Args:
        version: "standard" (APGD-CE, APGD-T, FAB-T, Square), "plus"
            (APGD-CE and APGD-DLR with 5 restarts, FAB with 5 restarts,
            Square, APGD-T, FAB-T) or "rand" (APGD-CE and APGD-DLR with EOT
            over 20 draws, for randomised models); the reference's settings
            per version (:data:`VERSIONS`).
        attacks: a custom list replacing the version's attacks: registry
            names (``"apgd-ce"``, ``"apgd-t"``, ``"fab-t"``, ``"square"``,
            ``"pgd"``...; a name of the version gets the version's settings)
            or attack objects with ``perturb(model, x, y)`` (used as given).
        eps: radius of the ball in [0, 1] pixel units.
        norm: "linf" or "l2".
        seed: int seed of every attack's random draws (recorded in the
            result); the same model, examples and seed give the same numbers
            whatever the batch size.
        verbose: 0 silent (the per-attack lines and warnings go to the absl
            log), 1 a progress bar and one printed line per attack, 2 the
            lines only (warnings are printed as "warning: ..." lines).
        attack_settings: dict attack name -> constructor arguments that
            override the version's (e.g. ``{"apgd-ce": {"n_iter": 10}}``).
        checks: run the reference's sanity checks (warnings in the result).
        reclassify: count a break only if the returned point, classified
            once more, is misclassified (True, the reference's rule); False
            counts it as soon as an attack saw a misclassified iterate (for
            a randomised model, any one EOT pass: a stricter count).

    Example:
    >>> aa = AutoAttack(version="standard", eps=8 / 255, seed=0)
    >>> result = aa.run(model, x_test, y_test, batch_size=250)  # doctest: +SKIP
    >>> result["robust_accuracy_by_attack"]  # doctest: +SKIP
    {'apgd-ce': 0.27, 'apgd-t': 0.225, 'fab-t': 0.225, 'square': 0.215}

    Reference:
        Croce and Hein, "Reliable evaluation of adversarial robustness with
        an ensemble of diverse parameter-free attacks", ICML 2020; code
        github.com/fra31/auto-attack (autoattack.py, checks.py).
    """

    def __init__(self, version="standard", attacks=None, eps=8 / 255, norm="linf", seed=0,
                 verbose=1, attack_settings=None, checks=True, reclassify=True):
        if version not in VERSIONS:
            raise ConfigError(f"AutoAttack version={version!r} is unknown; choose one of: "
                              f"{', '.join(VERSIONS)}")
        if norm not in NORMS:
            raise ConfigError(f"AutoAttack norm={norm!r} is unknown; choose "
                              f"{' or '.join(NORMS.names())}")
        if not (isinstance(eps, (int, float)) and 0 <= eps < math.inf):
            raise ConfigError(f"AutoAttack eps must be a number >= 0, got {eps!r}")
        if seed is None or isinstance(seed, bool) or int(seed) != seed:
            raise ConfigError(f"AutoAttack seed must be a whole number, got {seed!r}")
        if verbose not in (0, 1, 2):
            raise ConfigError(f"AutoAttack verbose must be 0, 1 or 2, got {verbose!r}")
        self.version = version
        self.eps = float(eps)
        self.norm = norm
        self.seed = int(seed)
        self.verbose = verbose
        self.checks = bool(checks)
        self.reclassify = bool(reclassify)
        self.custom = attacks is not None
        names = list(VERSIONS[version]["attacks"]) if attacks is None else list(attacks)
        if not names:
            raise ConfigError("AutoAttack attacks is empty; name at least one attack or leave "
                              "it unset for the version's list")
        overrides = dict(attack_settings or {})
        self.attacks = {}
        for item in names:
            name, attack = self._build(item, overrides)
            base, i = name, 1
            while name in self.attacks:
                i += 1
                name = f"{base}_{i}"
            if isinstance(item, str) and name != base and hasattr(attack, "stream"):
                attack.stream = name  # a second copy draws other numbers
            self.attacks[name] = attack
        unused = sorted(set(overrides) - set(self.attacks))
        if unused:
            raise ConfigError(f"AutoAttack attack_settings names {', '.join(unused)}, not in "
                              f"the attacks run ({', '.join(self.attacks)})")
        self._initial_states = {key: gen.state.numpy().copy()
                                for key, gen in self.seed_generators().items()}
        self._takes_indices = {name: keyed_random.takes_indices(attack)
                               for name, attack in self.attacks.items()}
        self._compiled = {}
        self._counter = None  # (model, strategy, PassCounter) of the last run
        self._view = None  # (model, its folded inference view) of the last run

    def _build(self, item, overrides):
        if not isinstance(item, str):
            if not callable(getattr(item, "perturb", None)):
                raise ConfigError(f"AutoAttack attacks entry {item!r} is neither an attack name "
                                  "nor an object with perturb(model, x, y)")
            config = item.get_config() if hasattr(item, "get_config") else {}
            return str(config.get("attack") or type(item).__name__.lower()), item
        valid = ensemble_attack_names()
        if item not in valid:
            raise ConfigError(f"AutoAttack attacks entry {item!r} is unknown; choose from: "
                              f"{', '.join(valid)}")
        cls = ATTACKS.get(item)
        accepted = inspect.signature(cls).parameters
        settings = dict(VERSIONS[self.version]["settings"].get(item, {}))
        missing = sorted(set(settings) - set(accepted))
        if missing:
            raise ConfigError(f"attack {item} takes no {', '.join(missing)}, which AutoAttack "
                              f"version {self.version!r} sets; it cannot run this version")
        extra = dict(overrides.get(item, {}))
        unknown = sorted(set(extra) - set(accepted))
        if unknown:
            takes = ", ".join(p for p in accepted if p not in ("eps", "norm", "seed"))
            raise ConfigError(f"AutoAttack attack_settings[{item!r}] has {', '.join(unknown)}, "
                              f"which {item} does not take; it takes {takes}")
        settings.update(extra)
        common = {"eps": self.eps, "norm": self.norm, "seed": self.seed}
        settings.update({k: v for k, v in common.items() if k in accepted})
        return item, cls(**settings)

    # ------------------------------------------------------------------
    # The interface every attack shares.

    def seed_generators(self):
        """Every attack's generators, keyed ``"ATTACK.ATTRIBUTE"`` (``"square.seed_generator"``)."""
        generators = {}
        for name, attack in self.attacks.items():
            own = attack.seed_generators() if hasattr(attack, "seed_generators") else {}
            for attr, gen in own.items():
                generators[f"{name}.{attr}"] = gen
        return generators

    def get_config(self):
        return {
            "attack": AUTOATTACK,
            "version": self.version,
            "custom_attacks": self.custom,  # True: the attacks are a custom list
            "attacks": list(self.attacks),
            "eps": self.eps,
            "norm": self.norm,
            "seed": self.seed,
            "reclassify": self.reclassify,
            "settings": {name: (a.get_config() if hasattr(a, "get_config") else {})
                         for name, a in self.attacks.items()},
        }

    def perturb(self, model, x, y, indices=None):
        """The ensemble on one batch: ``(x_adv, robust)``.

        Each attack runs on the rows still robust (gathered, so a broken row
        is never attacked again); runs eagerly and inside ``tf.function``.
        No sanity checks here: :meth:`run` makes them.

        Args:
            model, x, y: as for the attacks' ``perturb``.
            indices: int ``[B]``, each example's index in the evaluated set
                (the key of its random draws); default: the positions
                ``0..B-1`` of this call.
        """
        x = tf.convert_to_tensor(x, tf.float32)
        labels = tf.cast(y, tf.int64)
        indices = keyed_random.example_indices(x, indices)
        logits = as_outputs(model(x, training=False))["logits"]
        robust = tf.equal(tf.argmax(logits, -1), labels)
        x_adv = x
        for name, attack in self.attacks.items():
            rows = tf.where(robust)[:, 0]

            def attack_rows(name=name, attack=attack, rows=rows):
                adv, still, _ = self._perturb_rows(name, attack, model, tf.gather(x, rows),
                                                   tf.gather(labels, rows),
                                                   tf.gather(indices, rows))
                return adv, still

            def nothing(rows=rows):
                return tf.gather(x, rows), tf.ones(tf.shape(rows), tf.bool)

            adv, still = tf.cond(tf.size(rows) > 0, attack_rows, nothing)
            broken = tf.boolean_mask(rows, tf.logical_not(still))[:, None]
            x_adv = tf.tensor_scatter_nd_update(
                x_adv, broken, tf.boolean_mask(adv, tf.logical_not(still)))
            robust = tf.tensor_scatter_nd_update(
                robust, broken, tf.zeros(tf.shape(broken)[:1], tf.bool))
        return tf.stop_gradient(x_adv), robust

    def __call__(self, model, x, y):
        return self.perturb(model, x, y)[0]

    def _perturb_rows(self, name, attack, model, x, y, indices):
        """``attack`` on a batch: ``(x_adv, still robust, the model's classes of x_adv)``,
        a break counted as :class:`AutoAttack` says (``reclassify``)."""
        if self._takes_indices[name]:
            adv, still = attack.perturb(model, x, y, indices=indices)
        else:
            adv, still = attack.perturb(model, x, y)
        adv = tf.ensure_shape(tf.cast(adv, tf.float32), [None, *x.shape[1:]])
        still = tf.ensure_shape(tf.cast(still, tf.bool), [None])
        predictions = tf.argmax(as_outputs(model(adv, training=False))["logits"], -1)
        if self.reclassify:
            still = tf.logical_or(still, tf.equal(predictions, tf.cast(y, tf.int64)))
        return adv, still, predictions

    # ------------------------------------------------------------------
    # The evaluation.

    def run(self, model, x, y=None, batch_size=None, verbose=None, progress_file=None,
            progress_every=60.0, indices=None, strategy=None):
        """Evaluates ``model`` under the ensemble on every example given.

        Args:
            model: callable ``model(x, training=False)`` returning logits (or
                ``(features, logits)`` / a dict, see ``as_outputs``).
            x: float images in [0, 1] (or uint8 0..255), NHWC; or a
                ``tf.data.Dataset`` of ``(image, label[, index])`` batches
                (then ``y`` is None); or a ``gacd_tf.data.ArraySplit``.
            y: integer labels ``[N]`` for array ``x``.
            batch_size: points per attack call (default: the dataset's batch
                size, else 250 as in the reference).
            verbose: overrides the constructor's ``verbose``.
            progress_file: a ``.npz`` path: save the run's state there (at
                most every ``progress_every`` seconds, and after each
                attack) and, when it exists, resume from it; removed when
                the run ends (see :mod:`gacd_tf.attacks.autoattack_progress`).
                A resumed run ends exactly as an uninterrupted one.
            progress_every: seconds between saves (0: after every batch).
            indices: int ``[N]``, each example's index (the key of its random
                draws, see :mod:`~gacd_tf.attacks.keyed_random`); default:
                its position ``0..N-1`` in ``x`` (a dataset's own index
                element is not used). Pass the global indices when a shard
                of a larger set is evaluated, so each example draws what it
                would draw in the whole set.
            strategy: a ``tf.distribute.Strategy``: each batch of points is
                split between its replicas (devices, and workers of a
                multi-worker strategy) and the results gathered
                (:func:`gacd_tf.training.run_on_replicas`), which gives the
                same per-example answer as one device. Every worker runs
                ``run`` with the same arguments; only the one whose
                ``strategy.extended.should_checkpoint`` is true (the chief)
                writes and removes ``progress_file``, every worker resumes
                from it. None: one device.

        Returns:
            dict with ``natural_accuracy``, ``robust_accuracy`` (final),
            ``robust_accuracy_by_attack`` (attack name -> robust accuracy
            after it, in run order), ``seconds_by_attack``,
            ``passes_by_attack`` (attack name -> ``{"forward": F,
            "backward": B}``: the images the attack sent through the model
            forward, and back-propagated through for an input gradient,
            counted by :class:`~gacd_tf.attacks.pass_counter.PassCounter`
            over all its batches (each point for the runs and iterations it
            was still robust in; rows that pad a replica's share included;
            docs/evaluation.md "Cost"); a forward pass with an input
            gradient counts one of each, so Square's backward is 0; the
            clean pass and the sanity checks are no attack's; None for an
            attack resumed from a progress file saved before the counts
            existed), ``seconds``,
            ``num_examples``, ``warnings`` (list of sentences), ``attack``
            (the settings, seed included), and NumPy arrays ``robust``
            (bool [N]), ``clean_correct`` (bool [N]), ``x_adv`` (float32,
            the first adversarial example found; the clean image for robust
            points), ``labels`` and ``predictions`` (the model's classes of
            ``x_adv``). :func:`json_result` drops the arrays.
        """
        verbose = self.verbose if verbose is None else verbose
        model = float32_copy(model)  # robustness is measured in float32
        model = self._inference_view(model)  # batch norms folded (models/folding.py)
        x, y, batch_size = _as_arrays(x, y, batch_size)
        n = len(y)
        if indices is None:
            indices = np.arange(n, dtype=np.int64)
        indices = np.asarray(indices).reshape(-1).astype(np.int64)
        if len(indices) != n:
            raise ConfigError(f"AutoAttack.run got {len(indices)} indices for {n} examples")
        start = time.time()
        for key, gen in self.seed_generators().items():
            gen.state.assign(self._initial_states[key])

        logits_fn = self._logits_fn(model, x.shape[1:])
        counter = self._pass_counter(model, strategy)  # the attacks call the model through it
        generators = self.seed_generators()
        # The probe batch does not depend on batch_size: a run may resume with another.
        key = progress.run_key(self.get_config(), model, x, y,
                               logits_fn(x[:_PROBE_EXAMPLES]).numpy(),
                               indices) if progress_file else None
        saved = progress.load(progress_file, key) if progress_file else None
        # One worker (the chief) writes the progress file; all resume from it.
        writes = bool(progress_file) and (strategy is None or strategy.extended.should_checkpoint)
        workers = _Workers(strategy)
        if saved is None:
            predictions = np.concatenate([
                np.argmax(logits_fn(x[i:i + batch_size]).numpy(), -1)
                for i in range(0, n, batch_size)]).astype(np.int64)
            clean_correct = predictions == y
            robust = clean_correct.copy()
            x_adv = x.copy()
            natural = float(clean_correct.mean())
            _say(f"natural accuracy: {100 * natural:.2f} % ({n} examples)", verbose)
            warnings = self._sanity_checks(model, x[:batch_size], y[:batch_size], logits_fn) \
                if self.checks else []
            for warning in warnings:
                _warn(warning, verbose)
            by_attack, seconds_by_attack, earlier = {}, {}, 0.0
            passes_by_attack = {}
        else:
            robust, clean_correct = saved["robust"].astype(bool), saved["clean_correct"]
            x_adv, predictions = saved["x_adv"], saved["predictions"].astype(np.int64)
            natural, warnings = saved["natural"], list(saved["warnings"])
            by_attack, seconds_by_attack = saved["by_attack"], saved["seconds_by_attack"]
            # A file saved before the counts existed: those attacks' passes are unknown.
            passes_by_attack = saved["passes_by_attack"] if "passes_by_attack" in saved else {
                name: None for name in [*by_attack, saved["attack_name"]]}
            earlier = saved["seconds"]
            for name, state in saved["generators"].items():
                current = generators[name].state
                current.assign(np.asarray(state, dtype=current.numpy().dtype))
            at, done = saved["attack_name"], int(saved["next_row"])
            if at in by_attack:
                where = f"after {at}, which had finished"
            elif done % batch_size == 0:
                where = (f"in {at} at batch {done // batch_size + 1} of "
                         f"{-(-len(saved['rows']) // batch_size)}")
            else:  # saved with another batch size: the draws are keyed, so it goes on as well
                where = f"in {at} after {done} of its {len(saved['rows'])} points"
            _say(f"resumed from {progress_file} {where} (natural accuracy: "
                 f"{100 * natural:.2f} %, {n} examples)", verbose)
        last_save = time.time()

        def attack_passes():
            """The running attack's passes so far, earlier runs' included (None: unknown)."""
            if passes_earlier is None:
                return None
            now = counter.counts()
            return {k: passes_earlier[k] + now[k] - passes_start[k] for k in now}

        def save_progress(name, rows, next_row, outside, seconds_so_far):
            # Every worker reads the counters (a collective under several
            # workers); the chief writes.
            passes = {**passes_by_attack, name: attack_passes()}
            if not writes:
                return
            progress.save(progress_file, key, {
                "robust": robust, "clean_correct": clean_correct, "x_adv": x_adv,
                "predictions": predictions, "rows": rows, "natural": natural,
                "warnings": warnings, "by_attack": by_attack,
                "seconds_by_attack": {**seconds_by_attack, name: seconds_so_far},
                "passes_by_attack": passes,
                "seconds": earlier + time.time() - start, "attack_name": name,
                "next_row": next_row, "outside": outside,
                "generators": {k: g.state.numpy().tolist() for k, g in generators.items()}})

        for name, attack in self.attacks.items():
            if name in by_attack:  # finished before the interruption
                continue
            attack_start = time.time()
            resuming = saved is not None and saved["attack_name"] == name
            rows = saved["rows"].astype(np.int64) if resuming else np.flatnonzero(robust)
            first = int(saved["next_row"]) if resuming else 0  # rows done before
            outside = saved["outside"] if resuming else 0
            attack_earlier = saved["seconds_by_attack"].get(name, 0.0) if resuming else 0.0
            passes_earlier = passes_by_attack.pop(name, None) if resuming else \
                {"forward": 0, "backward": 0}
            passes_start = counter.counts()
            # Batches of the rows left (any batch size: the draws are keyed per example).
            batches = range(first, len(rows), batch_size)
            # The bar counts this run's batches, so a resumed run's time per step and
            # ETA are its own (Progbar times from its creation).
            progbar = keras.utils.Progbar(len(batches), verbose=1 if verbose == 1 else 0,
                                          stateful_metrics=["robust_acc"])
            fn = self._attack_fn(name, attack, counter, x.shape[1:]) if len(rows) else None
            for step, b in enumerate(batches):
                sub = rows[b:b + batch_size]
                adv, still, pred = run_on_replicas(strategy, fn, x[sub], y[sub], indices[sub])
                still = still.astype(bool)
                inside = _within(adv, x[sub], self.eps, self.norm)
                outside += int(np.sum(~still & ~inside))
                broken = ~still & inside
                robust[sub[broken]] = False
                x_adv[sub[broken]] = adv[broken]
                predictions[sub[broken]] = pred[broken]
                progbar.update(step + 1, [("robust_acc", float(robust.mean()))])
                due = step + 1 < len(batches) and time.time() - last_save >= progress_every
                if progress_file and workers.agree(due):
                    save_progress(name, rows, b + len(sub), outside,
                                  attack_earlier + time.time() - attack_start)
                    last_save = time.time()
            if outside:
                warnings.append(_warn(
                    f"{name} returned {outside} adversarial examples outside the {self.norm} "
                    f"ball of radius {self.eps:g} or [0, 1]; they were not counted (a bug of "
                    "that attack)", verbose))
            by_attack[name] = float(robust.mean())
            seconds_by_attack[name] = round(attack_earlier + time.time() - attack_start, 2)
            passes_by_attack[name] = attack_passes()
            _say(f"robust accuracy after {name}: {100 * by_attack[name]:.2f} % "
                 f"({len(rows)} points attacked, {seconds_by_attack[name]:.1f} s)", verbose)
            saved = None
            if progress_file and len(by_attack) < len(self.attacks):
                save_progress(name, np.zeros([0], np.int64), 0, 0, seconds_by_attack[name])
                last_save = time.time()

        if self.checks:
            square = _square_check(by_attack)
            if square:
                warnings.append(_warn(square, verbose))
        final = float(robust.mean())
        _say(f"robust accuracy: {100 * final:.2f} %", verbose)
        if writes:
            progress.remove(progress_file)
        return {
            "natural_accuracy": natural,
            "robust_accuracy": final,
            "robust_accuracy_by_attack": by_attack,
            "num_examples": n,
            "attack": self.get_config(),
            "seconds": round(earlier + time.time() - start, 2),
            "seconds_by_attack": seconds_by_attack,
            "passes_by_attack": passes_by_attack,
            "warnings": warnings,
            "robust": robust,
            "clean_correct": clean_correct,
            "x_adv": x_adv,
            "labels": y,
            "predictions": predictions,
        }

    def run_ensemble(self, model, dataset, verbose=0, return_examples=False,
                     progress_file=None, strategy=None):
        """:meth:`run` on a dataset, as ``evaluate_robustness`` reports it (JSON-able
        unless ``return_examples``)."""
        result = self.run(model, dataset, verbose=verbose, progress_file=progress_file,
                          strategy=strategy)
        return result if return_examples else json_result(result)

    # ------------------------------------------------------------------

    def _inference_view(self, model):
        """``model`` with its batch norms folded into its convolutions
        (:func:`~gacd_tf.models.folding.fold_batch_norm`), made once per model
        so the attacks' traces of it are kept."""
        if self._view is None or self._view[0] is not model:
            self._view = (model, fold_batch_norm(model))
        return self._view[1]

    def _pass_counter(self, model, strategy=None):
        """A :class:`PassCounter` of ``model`` (its variables in ``strategy``'s scope),
        kept while the runs use the same model and strategy, so the attacks'
        ``tf.function`` traces of it are kept too (its counts only grow: a run
        takes differences)."""
        strategy = strategy or tf.distribute.get_strategy()
        if self._counter is None or self._counter[0] is not model or \
                self._counter[1] is not strategy:
            self._counter = (model, strategy, PassCounter(model, strategy))
        return self._counter[2]

    def _logits_fn(self, model, shape):
        key = ("logits", id(model), tuple(shape))
        if key not in self._compiled:
            @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32)],
                         reduce_retracing=True)
            def logits(x):
                return tf.cast(as_outputs(model(x, training=False))["logits"], tf.float32)

            self._compiled = {k: v for k, v in self._compiled.items() if k[1] == id(model)}
            self._compiled[key] = logits
        return self._compiled[key]

    def _attack_fn(self, name, attack, model, shape):
        """``attack.perturb`` (on images, labels and example indices) in a
        ``tf.function`` with a None batch dimension (no retracing for each
        subset size), plus the model's classes of ``x_adv``."""
        key = (name, id(model), tuple(shape))
        if key not in self._compiled:
            @tf.function(input_signature=[tf.TensorSpec([None, *shape], tf.float32),
                                          tf.TensorSpec([None], tf.int64),
                                          tf.TensorSpec([None], tf.int64)],
                         reduce_retracing=True)
            def attack_batch(x, y, indices):
                return self._perturb_rows(name, attack, model, x, y, indices)

            self._compiled[key] = attack_batch
        return self._compiled[key]

    def _sanity_checks(self, model, x, y, logits_fn):
        """The reference's checks (checks.py) on one batch: sentences for the warnings."""
        found = []
        outputs = [logits_fn(x).numpy().astype(np.float64)]
        if self.version != "rand":
            for _ in range(_RANDOMIZED_PASSES - 1):
                outputs.append(logits_fn(x).numpy().astype(np.float64))
            unit = [o / (np.linalg.norm(o, axis=-1, keepdims=True) + 1e-10) for o in outputs]
            spread = max(np.linalg.norm(u - unit[0], axis=-1).max() for u in unit)
            counts = {int(np.sum(np.argmax(o, -1) == y)) for o in outputs}
            if spread > _RANDOMIZED_TOL or len(counts) > 1:
                found.append(
                    "the forward pass is not deterministic (the same images gave different "
                    f"outputs over {_RANDOMIZED_PASSES} passes): a randomised model needs "
                    "version='rand' (EOT), or its evaluation overstates robustness")
        out = outputs[0]
        if (out.max() < 1 + _PROBABILITY_TOL and out.min() > -_PROBABILITY_TOL
                and np.all(np.abs(out.sum(-1) - 1) < _PROBABILITY_TOL)):
            found.append(
                "the model's outputs look like probabilities (every row in [0, 1] and summing "
                "to 1): the attacks need logits; remove the final softmax, or the losses "
                "saturate and robustness is overstated")
        num_classes = out.shape[-1]
        for name, attack in self.attacks.items():
            targets = getattr(attack, "n_target_classes", None)
            if targets is not None and targets + 1 > num_classes:
                found.append(f"{name} asks for {targets} target classes but the model has "
                             f"{num_classes} classes ({num_classes - 1} possible targets)")
        zero = _zero_gradient_rows(model, x, y)
        if zero:
            found.append(
                f"{zero} of {len(y)} points have a zero input gradient: gradient-based attacks "
                "cannot move them, so their robustness may be an artefact (gradient masking, "
                "e.g. a non-differentiable input transform or saturated outputs)")
        return found


class _Workers:
    """The workers of a multi-worker strategy agreeing on a decision (the
    collectives, e.g. reading the pass counters, must run on all of them)."""

    def __init__(self, strategy):
        self.strategy = strategy if isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy) else None

    def agree(self, flag):
        """True on every worker when ``flag`` is true on any (one small all-reduce)."""
        if self.strategy is None:
            return bool(flag)
        value = self.strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant(float(flag)))
        return float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)) > 0


def json_result(result):
    """:meth:`AutoAttack.run`'s result without its NumPy arrays (JSON-able)."""
    return {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}


def _as_arrays(x, y, batch_size):
    """(float32 images in [0, 1], int64 labels, batch size) from arrays, a split or a dataset."""
    if isinstance(x, tf.data.Dataset):
        if y is not None:
            raise ConfigError("AutoAttack.run takes labels in the dataset's batches, not as y")
        images, labels = [], []
        for batch in x:
            batch = tuple(batch.values()) if isinstance(batch, dict) else batch
            images.append(np.asarray(batch[0]))
            labels.append(np.asarray(batch[1]))
            if batch_size is None:
                batch_size = len(labels[-1])
        if not images:
            raise ConfigError("AutoAttack.run got an empty dataset")
        x, y = np.concatenate(images), np.concatenate(labels)
    elif hasattr(x, "images") and hasattr(x, "labels") and y is None:
        x, y = x.images, x.labels
    if y is None:
        raise ConfigError("AutoAttack.run needs labels y for array images")
    x = np.asarray(x)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if x.ndim != 4 or len(x) != len(y):
        raise ConfigError(f"AutoAttack.run needs images [N, H, W, C] and N labels, got images "
                          f"{x.shape} and {len(y)} labels")
    if len(y) == 0:
        raise ConfigError("AutoAttack.run got no examples")
    if x.min() < 0 or x.max() > 1:
        raise ConfigError(f"AutoAttack.run needs images in [0, 1] (or uint8), got values in "
                          f"[{x.min():g}, {x.max():g}]")
    batch_size = 250 if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"AutoAttack.run batch_size must be >= 1, got {batch_size}")
    return x, y, batch_size


def _within(x_adv, x, eps, norm, rtol=1e-5, atol=1e-6):
    """bool [B]: each row of ``x_adv`` in [0, 1] and within ``eps`` of ``x``."""
    d = (x_adv.astype(np.float64) - x).reshape(len(x), -1)
    size = np.abs(d).max(1) if norm == "linf" else np.sqrt((d ** 2).sum(1))
    box = (x_adv.reshape(len(x), -1).min(1) >= 0) & (x_adv.reshape(len(x), -1).max(1) <= 1)
    return box & (size <= eps * (1 + rtol) + atol)


def _zero_gradient_rows(model, x, y):
    """How many rows have an all-zero cross-entropy input gradient (the reference checks
    the first gradient of APGD)."""
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.cast(as_outputs(model(x, training=False))["logits"], tf.float32)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y, tf.int32), logits=logits))
    grad = tape.gradient(loss, x)
    if grad is None:
        return len(y)
    size = np.abs(grad.numpy()).reshape(len(y), -1).sum(1)
    return int(np.sum(size == 0))


def _square_check(by_attack):
    """The reference's check that Square, a black-box attack, broke points the
    gradient-based attacks before it left robust (a sign of gradient masking)."""
    names = list(by_attack)
    if "square" not in names or names.index("square") == 0:
        return None
    before = by_attack[names[names.index("square") - 1]]
    drop = before - by_attack["square"]
    if drop > _SQUARE_TOL:
        return (f"Square, which uses no gradients, lowered the robust accuracy by "
                f"{100 * drop:.2f} points after the gradient-based attacks: their gradients "
                "may be masked and the evaluation unreliable; try Square with more queries "
                "and restarts, or an adaptive attack")
    return None


def _say(line, verbose):
    """Prints ``line`` (verbose 1, 2), else logs it."""
    if verbose in (1, 2):
        print(line, flush=True)
    else:
        logging.info("AutoAttack: %s", line)


def _warn(sentence, verbose):
    """Prints the warning (verbose 1, 2), else logs it; returns the sentence."""
    if verbose in (1, 2):
        print(f"warning: {sentence}", flush=True)
    else:
        logging.warning("AutoAttack: %s", sentence)
    return sentence
