"""Linear evaluation: a linear classifier trained on a frozen backbone's features."""

import keras
import tensorflow as tf

from gacd_tf.attacks import PGD
from gacd_tf.errors import ModelError
from gacd_tf.models.interface import features_and_logits
from gacd_tf.methods.common import per_example_ce, unpack_batch
from gacd_tf.methods.robust_trainer import RobustTrainer, accuracy


class LinearProbe(RobustTrainer):
    """Trains a new ``Dense`` head on a frozen model's penultimate features.

    The network (``self.model``, what ``fit`` checkpoints and what attacks
    see) maps target images in [0, 1] to target logits: ``images ->
    [bilinear resize to the backbone's input size] -> backbone features ->
    Dense(num_classes)``. The backbone's layers are frozen *in place*
    (``trainable=False``: no gradient, batch norm in inference mode, so its
    weights and statistics never change); only the head is trained, on
    natural images with cross-entropy plus the coupled L2 term. Validation
    (``test_step``) reports natural and adversarial accuracy of backbone +
    head under ``eval_attack``, the attack going through the frozen backbone.

    Args:
        backbone: a classifier following the gacd_tf interface
            (:func:`gacd_tf.models.features_and_logits`), e.g. a distilled
            student loaded from ``.keras``. Its own classes are ignored.
        num_classes: classes of the target task.
        input_shape: ``(H, W, 3)`` of the target images (default: the
            backbone's); other sizes are resized inside the network, so STL-10
            96x96 images reach a 32x32 CIFAR backbone and attacks still
            perturb the target pixels.
        weight_decay: coupled L2 coefficient of the head.
        eval_attack: validation attack (default PGD-7, eps 8/255, step 2/255,
            the transfer threat model).
        **kwargs: passed to ``keras.Model``.

    Example:
    >>> probe = LinearProbe(load_model("runs/gacd/model.keras"), num_classes=5)  # doctest: +SKIP
    >>> probe.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    >>> probe.fit(make_dataset(target_train, 128, training=True), epochs=10)
    >>> evaluate_robustness(probe.model, test_ds, PGD(steps=7))

    Reference:
        Linear evaluation of frozen representations (Chen et al., SimCLR,
        ICML 2020); transfer of robust features (Shafahi et al., ICLR 2020);
        the GACD paper, Table 4 (PGD-7).
    """

    def __init__(self, backbone, num_classes, input_shape=None, weight_decay=0.0,
                 eval_attack=None, **kwargs):
        if int(num_classes) < 1:
            raise ModelError(f"a linear probe needs at least one class, got {num_classes}")
        both = features_and_logits(backbone)
        backbone.trainable = False
        features = keras.Model(both.inputs, both.outputs[0], name=f"{backbone.name}_features")
        features.trainable = False
        backbone_shape = tuple(backbone.input_shape[1:])
        input_shape = tuple(input_shape) if input_shape is not None else backbone_shape
        if len(input_shape) != 3 or input_shape[-1] != backbone_shape[-1]:
            raise ModelError(f"target images of shape {input_shape} do not fit the backbone "
                             f"{backbone.name!r}, which takes {backbone_shape}")
        images = keras.Input(input_shape, name="images")
        x = images
        if input_shape[:2] != backbone_shape[:2]:
            x = keras.layers.Resizing(*backbone_shape[:2], interpolation="bilinear",
                                      name="resize")(x)
        # float32 under a mixed-precision policy too, as the zoo's logits layers.
        logits = keras.layers.Dense(int(num_classes), dtype="float32",
                                    name="linear_head")(features(x))
        network = keras.Model(images, logits, name=f"{backbone.name}_linear_probe")
        super().__init__(network, ["loss", "accuracy"], weight_decay=weight_decay,
                         eval_attack=eval_attack if eval_attack is not None else PGD(steps=7),
                         **kwargs)
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.head = network.get_layer("linear_head")

    def train_step(self, data):
        x, y, _ = unpack_batch(data)
        weights = self.head.trainable_weights
        with tf.GradientTape() as tape:
            # Inference mode throughout: the backbone is frozen, the head has no
            # training-time behaviour.
            logits = self.model(x, training=False)
            loss = tf.reduce_mean(per_example_ce(y, logits))
        self.apply_update(tape, loss, weights)
        return self.report(loss=loss, accuracy=accuracy(y, logits))

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, weight_decay=self.weight_decay)
        return config
