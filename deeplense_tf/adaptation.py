r"""Unsupervised domain adaptation: labelled source images, unlabelled target images.

  python -m deeplense_tf.train --flagfile=configs/hybrid_euclid_axion.cfg --data_dir=DATA \
      --init_from=hybrid_euclid_axion --adapt=dann \
      --adapt_dataset=deeplense_lensing/euclid_axion_psf --workdir=RUN

The regressor keeps learning its targets on the labelled training set (`--dataset`)
while the pooled features it feeds its head (`head_pool`) are made indistinguishable
between those images and the unlabelled images of `--adapt_dataset` (simulations with
another PSF, realistic renders, or real cut-outs: only their images are read, never their
labels). Two ways, both with the target batch passed through the network together with
the source batch (one forward pass: normalization layers see both domains):

- `dann`, domain-adversarial training (Ganin et al. 2016, arXiv:1505.07818; the method
  DeepLense's domain-adaptation projects used for classification): a small classifier
  learns to tell the domains apart from the features, and its gradient reaches the
  network reversed and scaled by lambda(p) = w (2 / (1 + exp(-10 p)) - 1), p the share of
  training done, so the network learns features the classifier cannot separate.
- `coral`, feature-statistics alignment (Deep CORAL, Sun & Saenko 2016,
  arXiv:1607.01719, with the means aligned too): w lambda(p) times the squared distance
  between the two batches' feature means and covariances.

No target label exists to pick the best epoch by, so an adapted run keeps its last
epoch's model (the source validation loss, which an adapted model trades against the
target, would pick the unadapted one).
"""

from __future__ import annotations

import math

import tensorflow as tf

METHODS = ("none", "dann", "coral")
FEATURE_LAYER = "head_pool"


def adversarial_weight(progress, max_weight: float):
    """Ganin et al.'s ramp: 0 at the start, `max_weight` (1 - 2/(1+e^10)) at the end."""
    progress = tf.clip_by_value(tf.cast(progress, tf.float32), 0.0, 1.0)
    return max_weight * (2.0 / (1.0 + tf.exp(-10.0 * progress)) - 1.0)


@tf.custom_gradient
def reverse_gradient(x, weight):
    """Identity forward; backward multiplies the gradient by -weight (no gradient to
    weight)."""
    def grad(upstream):
        return -tf.cast(weight, upstream.dtype) * upstream, tf.zeros_like(weight)

    return tf.identity(x), grad


def feature_model(model):
    """(outputs, pooled features) from the regressor's own layers: the same weights."""
    import keras

    try:
        features = model.get_layer(FEATURE_LAYER).output
    except ValueError:
        raise ValueError(f"domain adaptation needs the {FEATURE_LAYER!r} layer of a "
                         "deeplense_tf regressor; this model has none") from None
    return keras.Model(model.input, [model.output, features], name=f"{model.name}_features")


def domain_classifier(feature_dim: int, width: int = 256, seed: int = 0):
    """Two hidden layers and a logit (float32): source = 1, target = 0."""
    import keras

    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input(shape=(int(feature_dim),), dtype="float32", name="features")
    x = keras.layers.Dense(width, activation="relu", kernel_initializer=init,
                           dtype="float32", name="domain_hidden_1")(inputs)
    x = keras.layers.Dense(width, activation="relu", kernel_initializer=init,
                           dtype="float32", name="domain_hidden_2")(x)
    logit = keras.layers.Dense(1, kernel_initializer=init, dtype="float32",
                               name="domain_logit")(x)
    return keras.Model(inputs, logit, name="domain_classifier")


def dann_loss(classifier, source_features, target_features, weight):
    """(per-example binary cross-entropy over both batches, accuracy): the classifier
    learns at full strength, the features receive its gradient times -weight."""
    features = tf.concat([source_features, target_features], axis=0)
    logits = tf.squeeze(classifier(reverse_gradient(tf.cast(features, tf.float32), weight),
                                   training=True), axis=-1)
    n_source = tf.shape(source_features)[0]
    domain = tf.concat([tf.ones([n_source]), tf.zeros([tf.shape(target_features)[0]])], 0)
    per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=domain, logits=logits)
    accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), domain),
                                      tf.float32))
    return per_example, accuracy


def coral_distance(source_features, target_features):
    """||mu_s - mu_t||^2 / d + ||C_s - C_t||_F^2 / (4 d^2): the Deep CORAL term plus the
    means, for batches of pooled features (n, d)."""
    fs = tf.cast(source_features, tf.float32)
    ft = tf.cast(target_features, tf.float32)
    d = tf.cast(tf.shape(fs)[1], tf.float32)

    def moments(f):
        n = tf.cast(tf.shape(f)[0], tf.float32)
        mean = tf.reduce_mean(f, axis=0)
        centred = f - mean
        return mean, tf.matmul(centred, centred, transpose_a=True) / tf.maximum(n - 1.0, 1.0)

    (ms, cs), (mt, ct) = moments(fs), moments(ft)
    return (tf.reduce_sum((ms - mt) ** 2) / d
            + tf.reduce_sum((cs - ct) ** 2) / (4.0 * d * d))


def check_target_dataset(source_dataset: str, source_shape, target_dataset: str,
                         target_shape) -> None:
    """Refuses a target data set that cannot be adapted to: the source itself, or images
    of another shape."""
    def base(name):
        return name.split(":")[0].strip("/")

    if base(source_dataset) == base(target_dataset):
        raise ValueError(f"--adapt_dataset={target_dataset} is the training data set itself; "
                         "name the unlabelled images of the domain to adapt to")
    if tuple(source_shape) != tuple(target_shape):
        raise ValueError(f"--adapt_dataset={target_dataset}: images of shape "
                         f"{tuple(target_shape)}, but the training images are "
                         f"{tuple(source_shape)}; resample them onto the same grid")


def describe(method: str, weight: float) -> str:
    if method == "dann":
        return (f"domain-adversarial (DANN), reversed-gradient weight ramped to {weight:g} "
                f"({weight * (2 / (1 + math.exp(-10)) - 1):.4g} at the end)")
    if method == "coral":
        return f"feature-statistics alignment (CORAL + means), weight ramped to {weight:g}"
    return "none"
