"""``tf.data`` input pipelines yielding ``(image, label, index)`` batches.

Augmentation is the standard CIFAR recipe: zero-pad by 4, random crop back to
H x W, random horizontal flip, drawn independently *per image*.

Why not ``keras.layers.RandomCrop`` / ``RandomFlip`` inside the map: in Keras
3.15, ``RandomCrop`` called on a batch draws one crop offset for the whole
batch, and when the layers are called per image inside a parallel
``tf.data`` map their shared ``SeedGenerator`` (a variable) is read and
advanced concurrently, so two pipelines with the same seed give different
images. Here each image instead gets a stateless seed from
``tf.data.Dataset.random(seed, rerandomize_each_iteration=True)`` plus its
index, and the crop and flip are ``tf.image.stateless_random_*`` ops:
per-image, reproducible for a fixed seed, different every epoch, and safe
under ``num_parallel_calls=AUTOTUNE``.
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


def _source(images, labels, training, seed):
    """Dataset of uint8 (image, label, index), shuffled when training."""
    n = len(labels)
    indices = np.arange(n, dtype=np.int32)
    if images.nbytes <= MAX_IN_GRAPH_BYTES:
        ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32), indices))
        if training:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return ds

    # Huge (possibly memory-mapped) arrays: shuffle indices, read images lazily.
    def fetch(i):
        return np.ascontiguousarray(images[i]), np.int32(labels[i])

    def load(i):
        image, label = tf.numpy_function(fetch, [i], (tf.uint8, tf.int32), stateful=False)
        image.set_shape(images.shape[1:])
        label.set_shape([])
        return image, label, i

    ds = tf.data.Dataset.range(n).map(lambda i: tf.cast(i, tf.int32))
    if training:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.map(load, num_parallel_calls=_AUTOTUNE)


def make_dataset(split, batch_size, training, seed=0, augment=None, drop_remainder=None):
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
            f"{batch_size}, so dropping the partial batch leaves nothing; lower --batch_size"
        )
    ds = _source(split.images, split.labels, training, seed)
    if augment:
        # One random int64 per element and epoch; with the index it seeds the image's crop/flip.
        draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(ds, draws)
        ds = ds.map(
            lambda example, r: (
                random_pad_crop_flip(example[0], tf.stack([r, tf.cast(example[2], tf.int64)])),
                *example[1:],
            ),
            num_parallel_calls=_AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        lambda x, y, i: (tf.cast(x, tf.float32) / 255.0, y, i),
        num_parallel_calls=_AUTOTUNE,
    )
    return ds.prefetch(_AUTOTUNE)
