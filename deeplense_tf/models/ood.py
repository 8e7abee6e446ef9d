"""Out-of-distribution score computed with every prediction (`OODScore`).

A network trained on simulations answers something for any image. The score says how
far an image is from what the model was trained on, in two ways:

- features: the Mahalanobis distance^2 of the model's pooled penultimate features
  (`head_pool`) to the training split's (mean and shrunk covariance);
- pixels: the Mahalanobis distance^2 of four raw-pixel statistics to the training
  split's: asinh of the total flux, of the peak pixel and of the central quarter's flux
  (in units of the training images' noise), and the log of the outer frame's standard
  deviation (the noise level).

score = max(d2_features / median_train, d2_pixels / median_train); `ood_flag` = score >
threshold, the threshold set on held-out simulations (see `deeplense_tf.ood`). Means
and Cholesky factors of the precision matrices are non-trainable weights, so the
`.keras` file and the SavedModel carry them.
"""

import keras
import numpy as np
from keras import ops

NUM_PIXEL_STATISTICS = 4


def pixel_statistics(images, asinh_scale, frame):
    """(B, 4) statistics of raw images (B, H, W, 1) with keras.ops (also on numpy)."""
    x = ops.cast(images, "float32")[..., 0]
    h, w = x.shape[1], x.shape[2]
    total = ops.sum(x, axis=(1, 2))
    peak = ops.max(x, axis=(1, 2))
    qh, qw = h // 4, w // 4
    central = ops.sum(x[:, qh:h - qh, qw:w - qw], axis=(1, 2))
    border = ops.concatenate([ops.reshape(x[:, :frame, :], (-1, frame * w)),
                              ops.reshape(x[:, h - frame:, :], (-1, frame * w)),
                              ops.reshape(x[:, frame:h - frame, :frame], (-1, (h - 2 * frame) * frame)),
                              ops.reshape(x[:, frame:h - frame, w - frame:],
                                          (-1, (h - 2 * frame) * frame))], axis=1)
    noise = ops.std(border, axis=1)
    a = float(asinh_scale)
    return ops.stack([ops.arcsinh(total / a), ops.arcsinh(peak / a), ops.arcsinh(central / a),
                      ops.log(noise / a + 1e-6)], axis=1)


@keras.saving.register_keras_serializable(package="deeplense_tf")
class OODScore(keras.layers.Layer):
    """[features (B, F), raw images (B, H, W, 1)] -> {"ood_score", "ood_flag"} (B,).

    Args:
      num_features: F, the width of the pooled features.
      asinh_scale: the pixel unit of the statistics (the training images' noise).
      frame: width in pixels of the outer frame whose spread is the noise statistic.
      feature_median, pixel_median: the training split's median distances^2 (scales).
      threshold: score above which `ood_flag` is 1.
    Weights (set with `set_statistics`): feature_mean (F,), feature_cholesky (F, F),
    pixel_mean (4,), pixel_cholesky (4, 4); precision = L L^T.
    """

    def __init__(self, num_features, asinh_scale=1.0, frame=4, feature_median=1.0,
                 pixel_median=1.0, threshold=1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.num_features = int(num_features)
        self.asinh_scale = float(asinh_scale)
        self.frame = int(frame)
        self.feature_median = float(feature_median)
        self.pixel_median = float(pixel_median)
        self.threshold = float(threshold)
        for name, value in (("asinh_scale", self.asinh_scale), ("feature_median", self.feature_median),
                            ("pixel_median", self.pixel_median), ("threshold", self.threshold)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"OODScore.{name}: must be finite and positive, got {value}")
        f, p = self.num_features, NUM_PIXEL_STATISTICS
        self.feature_mean = self.add_weight(shape=(f,), initializer="zeros", trainable=False,
                                            name="feature_mean")
        self.feature_cholesky = self.add_weight(shape=(f, f), initializer="identity",
                                                trainable=False, name="feature_cholesky")
        self.pixel_mean = self.add_weight(shape=(p,), initializer="zeros", trainable=False,
                                          name="pixel_mean")
        self.pixel_cholesky = self.add_weight(shape=(p, p), initializer="identity",
                                              trainable=False, name="pixel_cholesky")

    def set_statistics(self, feature_mean, feature_cholesky, pixel_mean, pixel_cholesky):
        for weight, value in ((self.feature_mean, feature_mean),
                              (self.feature_cholesky, feature_cholesky),
                              (self.pixel_mean, pixel_mean), (self.pixel_cholesky, pixel_cholesky)):
            weight.assign(np.asarray(value, np.float32))

    def distances(self, features, images):
        """(d2_features, d2_pixels), each (B,)."""
        centred = ops.cast(features, "float32") - self.feature_mean
        d2_features = ops.sum(ops.square(ops.matmul(centred, self.feature_cholesky)), axis=1)
        stats = pixel_statistics(images, self.asinh_scale, self.frame) - self.pixel_mean
        d2_pixels = ops.sum(ops.square(ops.matmul(stats, self.pixel_cholesky)), axis=1)
        return d2_features, d2_pixels

    def call(self, inputs):
        features, images = inputs
        d2_features, d2_pixels = self.distances(features, images)
        score = ops.maximum(d2_features / self.feature_median, d2_pixels / self.pixel_median)
        return {"ood_score": score, "ood_flag": ops.cast(score > self.threshold, "float32")}

    def get_config(self):
        config = super().get_config()
        config.update(num_features=self.num_features, asinh_scale=self.asinh_scale,
                      frame=self.frame, feature_median=self.feature_median,
                      pixel_median=self.pixel_median, threshold=self.threshold)
        return config
