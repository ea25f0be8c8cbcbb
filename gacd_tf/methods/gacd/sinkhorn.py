"""Entropic optimal transport between two batches (Feature Scattering).

GACD builds its positives with the Feature Scattering attack: PGD that
maximises the optimal-transport distance between the clean batch's and the
adversarial batch's representations, with a cosine cost and a log-domain
Sinkhorn solver (uniform marginals, ``epsilon = 0.01``, at most 100
iterations, stop when ``sum |u - u_prev| < 0.1``).

Differences from the PyTorch reference (Haichao-Zhang/FeatureScatter, ot.py):
the log-sum-exp is exact (the reference adds ``1e-6`` inside the log), and
the plan is a constant (``tf.stop_gradient``), so the gradient of the distance
is ``sum pi * dC`` -- the envelope-theorem gradient of the entropic OT value.
The reference does not detach the plan: its autograd also differentiates
through the unrolled Sinkhorn iterations.

Reference:
    Zhang & Wang, "Defense Against Adversarial Attacks Using Feature
    Scattering-based Adversarial Training", NeurIPS 2019; Cuturi, "Sinkhorn
    Distances", NeurIPS 2013; Peyre & Cuturi, "Computational Optimal
    Transport", 2019 (section 4.4, log-domain Sinkhorn).
"""

import tensorflow as tf

from gacd_tf.errors import ConfigError

_NORM_EPS = 1e-6  # as torch.nn.CosineSimilarity(eps=1e-6) in Feature Scattering


def _flatten_rows(x):
    x = tf.convert_to_tensor(x)
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _row_norms(x):
    # sqrt(max(|x|^2, eps^2)): finite value and gradient at the zero vector.
    return tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(x), axis=1), _NORM_EPS**2))


def cosine_cost(x, y):
    """Cosine cost matrix ``C_ij = max(0, 1 - cos(x_i, y_j))``.

    Rows are flattened, so ``x`` and ``y`` may be feature vectors ``[B, D]``
    or any ``[B, ...]`` tensors of the same per-row size.

    Args:
        x: ``[n, ...]`` first batch.
        y: ``[m, ...]`` second batch.

    Returns:
        ``[n, m]`` costs in ``[0, 2]``, in ``x``'s dtype (float32 for
        half-precision inputs: the transport plan needs the precision).

    Example:
    >>> cost = cosine_cost(tf.eye(3), tf.eye(3))  # zero diagonal, ones elsewhere
    """
    x = _flatten_rows(x)
    if x.dtype in (tf.float16, tf.bfloat16):
        x = tf.cast(x, tf.float32)
    y = tf.cast(_flatten_rows(y), x.dtype)
    norms = _row_norms(x)[:, None] * _row_norms(y)[None, :]
    cos = tf.matmul(x, y, transpose_b=True) / norms
    return tf.nn.relu(1.0 - cos)


def _check_sinkhorn_args(epsilon, max_iters, threshold):
    if not epsilon > 0:
        raise ConfigError(f"Sinkhorn epsilon must be > 0, got {epsilon}")
    if int(max_iters) != max_iters or max_iters < 1:
        raise ConfigError(f"Sinkhorn max_iters must be a whole number >= 1, got {max_iters}")
    if not threshold >= 0:
        raise ConfigError(f"Sinkhorn threshold must be >= 0, got {threshold}")
    return float(epsilon), int(max_iters), float(threshold)


def sinkhorn_plan(cost, epsilon=0.01, max_iters=100, threshold=0.1):
    """Entropic OT plan of a cost matrix, by log-domain Sinkhorn.

    Uniform marginals ``mu = 1/n``, ``nu = 1/m``. Starting from ``u = v = 0``
    the dual potentials are updated alternately (Gauss-Seidel, as in Feature
    Scattering)::

        u <- eps * (log mu - logsumexp((-C + u + v) / eps, axis=1)) + u
        v <- eps * (log nu - logsumexp((-C + u + v) / eps, axis=0)) + v

    until ``sum |u - u_prev| < threshold`` or ``max_iters`` updates; the plan
    is ``exp((-C + u + v) / eps)``. After each ``v`` update the column
    marginals are exact; the row marginals are met to within the tolerance.
    The loop is a ``tf.while_loop``, so it runs eagerly, in ``tf.function`` and
    in a Keras ``train_step``. The cost is treated as a constant and the plan
    is returned with ``tf.stop_gradient``.

    Args:
        cost: ``[n, m]`` cost matrix (float32 or float64).
        epsilon: entropic regularisation (> 0).
        max_iters: maximum number of (u, v) update pairs (>= 1).
        threshold: stop once ``sum_i |u_i - u_prev_i| < threshold``.

    Returns:
        ``[n, m]`` transport plan (sums to 1), no gradient.

    Example:
    >>> plan = sinkhorn_plan(cosine_cost(tf.eye(4), tf.eye(4)))  # ~ eye(4) / 4
    """
    epsilon, max_iters, threshold = _check_sinkhorn_args(epsilon, max_iters, threshold)
    cost = tf.stop_gradient(tf.convert_to_tensor(cost))
    dtype = cost.dtype
    n, m = tf.shape(cost)[0], tf.shape(cost)[1]
    log_mu = -tf.math.log(tf.cast(n, dtype))
    log_nu = -tf.math.log(tf.cast(m, dtype))

    def scaled(u, v):
        return (-cost + u[:, None] + v[None, :]) / epsilon

    def body(i, u, v, _):
        u_new = epsilon * (log_mu - tf.reduce_logsumexp(scaled(u, v), axis=1)) + u
        v_new = epsilon * (log_nu - tf.reduce_logsumexp(scaled(u_new, v), axis=0)) + v
        return i + 1, u_new, v_new, tf.reduce_sum(tf.abs(u_new - u))

    def cond(i, u, v, err):
        return tf.logical_and(i < max_iters, err >= threshold)

    inf = tf.constant(float("inf"), dtype)
    start = (tf.constant(0), tf.zeros([n], dtype), tf.zeros([m], dtype), inf)
    _, u, v, _ = tf.while_loop(cond, body, start, parallel_iterations=1)
    return tf.stop_gradient(tf.exp(scaled(u, v)))


def sinkhorn_distance(
    x_repr, y_repr, epsilon=0.01, max_iters=100, threshold=0.1, reduction="sum"
):
    """Feature Scattering's OT distance ``D = sum_ij pi_ij C_ij``.

    ``C = cosine_cost(x_repr, y_repr)`` and ``pi = sinkhorn_plan(C)``. The
    plan is a constant, so gradients flow through ``C`` only (to both
    ``x_repr`` and ``y_repr``); in the attack ``x_repr`` is the clean batch
    and ``y_repr`` the adversarial one.

    Args:
        x_repr: ``[n, ...]`` representations of the first batch (clean).
        y_repr: ``[m, ...]`` representations of the second batch (adversarial).
        epsilon: entropic regularisation of the plan.
        max_iters: maximum Sinkhorn iterations.
        threshold: Sinkhorn stopping tolerance on ``sum |u - u_prev|``.
        reduction: ``"sum"`` for the scalar ``D``; ``"none"`` for the per-row
            contributions ``sum_j pi_ij C_ij`` (``[n]``, summing to ``D``).

    Returns:
        A scalar (``"sum"``) or an ``[n]`` tensor (``"none"``).

    Example:
    >>> clean = tf.random.normal([8, 16])
    >>> d = sinkhorn_distance(clean, clean + 0.1 * tf.random.normal([8, 16]))

    Reference:
        Zhang & Wang, NeurIPS 2019 (code: Haichao-Zhang/FeatureScatter,
        ot.py ``sinkhorn_loss_joint_IPOT``).
    """
    if reduction not in ("sum", "none"):
        raise ConfigError(f"sinkhorn_distance reduction must be 'sum' or 'none', got {reduction!r}")
    cost = cosine_cost(x_repr, y_repr)
    plan = sinkhorn_plan(cost, epsilon=epsilon, max_iters=max_iters, threshold=threshold)
    per_row = tf.reduce_sum(plan * cost, axis=1)
    return per_row if reduction == "none" else tf.reduce_sum(per_row)
