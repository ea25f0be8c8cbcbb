"""``tf.data`` input pipelines yielding ``(image, label, index)`` batches.

Augmentation is the standard CIFAR recipe: zero-pad by 4, random crop back to
H x W, random horizontal flip, drawn independently *per image*.

Why not ``keras.layers.RandomCrop`` / ``RandomFlip`` inside the map: in Keras
3.15, ``RandomCrop`` called on a batch draws one crop offset for the whole
batch, and when the layers are called per image inside a parallel
``tf.data`` map their shared ``SeedGenerator`` (a variable) is read and
advanced concurrently, so two pipelines with the same seed give different
images. Here every random choice is stateless: an epoch's order is
``stateless_shuffle`` under the epoch's seed, and each image's crop and flip
are ``tf.image.stateless_random_*`` ops seeded from (epoch seed, sample
index). Per-image, reproducible for a fixed seed, different every epoch, safe
under ``num_parallel_calls=AUTOTUNE``, and any epoch (or the rest of one) can
be rebuilt on its own, which is how a killed run resumes mid-epoch with the
batches it would have seen.
"""

import numpy as np
import tensorflow as tf

from gacd_tf.errors import ConfigError

# Arrays above this size are not embedded in the tf.data graph (protobuf
# limit 2 GB); they are read by index through ``tf.numpy_function`` instead.
MAX_IN_GRAPH_BYTES = 1 << 30
_AUTOTUNE = tf.data.AUTOTUNE


def random_pad_crop_flip(image, seed, padding=4):
    """Zero-pads, randomly crops back and randomly flips one image.

    Args:
        image: [H, W, C] tensor (any dtype).
        seed: int [2] tensor; the same seed gives the same crop and flip.
        padding: pixels of zeros added on each side before cropping.

    Returns:
        The augmented [H, W, C] image, same dtype.

    Example:
    >>> out = random_pad_crop_flip(tf.zeros([32, 32, 3]), tf.constant([1, 2]))
    >>> out.shape
    TensorShape([32, 32, 3])
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def _loader(images, labels):
    """Function index -> (uint8 image, int32 label, int32 index) of one example."""
    if images.nbytes <= MAX_IN_GRAPH_BYTES:
        images_t, labels_t = tf.constant(images), tf.constant(labels.astype(np.int32))
        return lambda i: (tf.gather(images_t, i), tf.gather(labels_t, i), i)

    # Huge (possibly memory-mapped) arrays are read lazily by index.
    def fetch(i):
        return np.ascontiguousarray(images[i]), np.int32(labels[i])

    def load(i):
        image, label = tf.numpy_function(fetch, [i], (tf.uint8, tf.int32), stateful=False)
        image.set_shape(images.shape[1:])
        label.set_shape([])
        return image, label, i

    return load


def _epoch_seeds(seed, epochs, start_epoch):
    """Dataset of int64 [2] seeds, one per epoch.

    With ``epochs`` the seed of epoch ``e`` is ``(seed, e)``: any epoch can be
    rebuilt on its own, which is what resuming mid-run needs. Without, each
    iteration over the dataset draws a fresh seed (a new order every epoch
    of ``fit``), reproducibly for a fixed ``seed``.
    """
    if epochs is None:
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
        return draws.map(lambda r: tf.stack([r, tf.constant(seed, tf.int64)]))
    return tf.data.Dataset.range(start_epoch, epochs).map(
        lambda e: tf.stack([tf.constant(seed, tf.int64), e]))


def make_dataset(split, batch_size, training, seed=0, augment=None, drop_remainder=None,
                 epochs=None, start_epoch=0, start_step=0):
    """Builds the input pipeline of one split.

    Args:
        split: an :class:`ArraySplit` (uint8 NHWC images, int32 labels).
        batch_size: examples per batch.
        training: True shuffles (seeded, reshuffled every epoch) and by
            default augments and drops the last partial batch; False keeps
            the split's order, never augments and keeps every example.
        seed: seed of the shuffle and the augmentation.
        augment: pad-4 random crop + horizontal flip per image; defaults to
            ``training``.
        drop_remainder: drop the last partial batch; defaults to ``training``.
        epochs: training only. None: the dataset is one epoch, and each
            iteration over it (each epoch of ``fit``) draws a new order.
            An int: the dataset is the stream of epochs ``start_epoch`` to
            ``epochs - 1`` back to back, epoch ``e`` ordered and augmented
            from ``(seed, e)`` alone; pass ``steps_per_epoch`` to ``fit``.
        start_epoch: first epoch of the stream (with ``epochs``).
        start_step: batches of the first epoch to skip (resuming mid-epoch).

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels, indices)``: float32
        [B, H, W, 3] in [0, 1], int32 [B], int32 [B] where index ``i`` is the
        sample's position in ``split``.

    Example:
    >>> test = load_split("cifar10", "test", data_dir="data/cifar10")  # doctest: +SKIP
    >>> ds = make_dataset(test, batch_size=256, training=False)  # doctest: +SKIP
    >>> images, labels, indices = next(iter(ds))  # doctest: +SKIP
    """
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    augment = training if augment is None else augment
    drop_remainder = training if drop_remainder is None else drop_remainder
    if drop_remainder and len(split.labels) < batch_size:
        raise ConfigError(
            f"the {split.split} split holds {len(split.labels)} examples, fewer than one batch of "
            f"batch_size={batch_size}, so dropping the partial batch leaves nothing; lower it"
        ).on("batch_size")
    n = len(split.labels)
    load = _loader(split.images, split.labels)
    if not training:
        ds = tf.data.Dataset.range(n).map(lambda i: load(tf.cast(i, tf.int32)),
                                          num_parallel_calls=_AUTOTUNE)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        def one_epoch(epoch_seed):
            # The epoch's order and every image's crop/flip are functions of
            # (epoch seed, sample index) only: stateless, so reproducible
            # under parallel maps and rebuildable when resuming.
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int32),
                                                             seed=epoch_seed)
            ds = tf.data.Dataset.from_tensor_slices(order)

            def example(i):
                image, label, index = load(i)
                if augment:
                    image_seed = tf.random.experimental.stateless_fold_in(epoch_seed, index)
                    image = random_pad_crop_flip(image, image_seed)
                return image, label, index

            ds = ds.map(example, num_parallel_calls=_AUTOTUNE)
            return ds.batch(batch_size, drop_remainder=drop_remainder)

        ds = _epoch_seeds(seed, epochs, start_epoch).flat_map(one_epoch)
        if start_step:
            ds = ds.skip(start_step)
        # flat_map hides the length; Keras needs it to end an epoch quietly.
        per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
        count = 1 if epochs is None else max(0, epochs - start_epoch)
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            max(0, count * per_epoch - start_step)))
    ds = ds.map(
        lambda x, y, i: (tf.cast(x, tf.float32) / 255.0, y, i),
        num_parallel_calls=_AUTOTUNE,
    )
    return ds.prefetch(_AUTOTUNE)
