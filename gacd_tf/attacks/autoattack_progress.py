"""Resumable AutoAttack runs: the ensemble's state after a batch, on disk.

AutoAttack on a whole test split takes hours on a CPU. :meth:`AutoAttack.run`
with ``progress_file=F`` saves, at most every ``progress_every`` seconds and
after each attack, everything it needs to go on from the next batch: the
per-example flags, the adversarial examples found, the predictions, the
per-attack figures and warnings so far, the position (attack, points done) and
the state of any random generator a custom attack keeps (the built-in
attacks keep none: their draws are keyed per example, so a batch run again
draws what it drew the first time). Started again with the same model,
images, labels and settings (the batch size may differ), it resumes from
there and ends with exactly the result of an uninterrupted run; finished, it
deletes the file. A file written for another model, other images or other
settings is refused, never mixed in.
"""

import hashlib
import json
import os

import numpy as np

from gacd_tf.errors import ConfigError

_ARRAYS = ("robust", "clean_correct", "x_adv", "predictions", "rows")


def run_key(config, model, x, y, probe_logits, indices=None):
    """A digest of what a run measures: the attack settings, the model's
    weights (where it exposes them) and its logits on the first batch (a
    SavedModel exposes none), the images, the labels and the examples'
    indices (the keys of their random draws)."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(probe_logits, dtype=np.float32).tobytes())
    for weight in getattr(model, "weights", []):
        value = np.ascontiguousarray(np.asarray(weight))
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    digest.update(np.ascontiguousarray(x).tobytes())
    digest.update(np.ascontiguousarray(y).tobytes())
    if indices is not None:
        digest.update(np.ascontiguousarray(indices, dtype=np.int64).tobytes())
    return digest.hexdigest()


def save(path, key, state):
    """Writes ``state`` (a dict: the arrays of ``_ARRAYS`` and JSON-able rest) to
    ``path`` atomically (a temporary file, fsynced, then renamed)."""
    meta = {k: v for k, v in state.items() if k not in _ARRAYS}
    meta["key"] = key
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".tmp-{os.path.basename(path)}")
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)),
                 **{k: np.asarray(state[k]) for k in _ARRAYS})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load(path, key):
    """The state saved in ``path`` for the run ``key``; None when there is no file.

    Raises:
        ConfigError: the file belongs to another run (model, images, labels
            or settings differ) or cannot be read.
    """
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            state = {k: data[k] for k in _ARRAYS}
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"AutoAttack progress file {path} cannot be read ({err}); delete "
                          "it to start the evaluation afresh") from None
    if meta.pop("key", None) != key:
        raise ConfigError(f"AutoAttack progress file {path} belongs to another evaluation "
                          "(model, images, labels or attack settings differ); delete it to "
                          "start this one afresh")
    state.update(meta)
    return state


def remove(path):
    if path and os.path.exists(path):
        os.remove(path)
