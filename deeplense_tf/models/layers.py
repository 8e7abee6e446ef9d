"""Custom Keras 3 layers of the regressors: input normalization, position embedding, output.

Pure `keras.ops`, so they run under the TensorFlow and the JAX backend and under XLA.
Each is registered for `.keras` loading and returns every constructor argument from
`get_config()`.
"""

import math

import keras
import numpy as np
from keras import ops

NORMALIZATION_MODES = ("none", "per_image_standardization", "per_image_minmax", "asinh", "global")
HEADS = ("gaussian", "gaussian_full", "point")
GAUSSIAN_HEADS = ("gaussian", "gaussian_full")
STD_SUFFIX = "_std"
CORR_PREFIX = "corr__"
OFF_DIAGONAL_BOUND = 10.0  # of the full-covariance head's Cholesky factor, in units of d_i


def correlation_key(first: str, second: str) -> str:
    """Output key of the correlation between two targets of a full-covariance head."""
    return f"{CORR_PREFIX}{first}__{second}"


def target_pairs(targets):
    """(i, j, key) for every pair i > j of targets, in the head's column order."""
    return [(i, j, correlation_key(targets[j], targets[i]))
            for i in range(1, len(targets)) for j in range(i)]


@keras.saving.register_keras_serializable(package="deeplense_tf")
class ImageNormalization(keras.layers.Layer):
    """Maps raw pixel values (physical counts) to the network's input scale.

    Modes:
      - `none`: identity.
      - `per_image_standardization`: `(x - mean) / max(std, epsilon)` over each image's
        pixels; scale-free, needs no training statistics, discards the total flux.
      - `per_image_minmax`: `(x - min) / max(max - min, epsilon)`, into [0, 1]; one hot
        pixel rescales the whole image, so measure it before choosing it.
      - `asinh`: `asinh(x / asinh_scale)`: linear below `asinh_scale` (set it near the
        noise level, in the same units as the pixels), logarithmic above.
      - `global`: `(x - pixel_mean) / pixel_std`, fixed statistics of the training split
        computed by the caller and stored in this layer's config, so that the saved
        model needs no side file.

    A constant image gives zeros (never NaN) in the per-image modes. Always computed in
    float32: raw counts lose too much precision in bfloat16.
    """

    def __init__(self, mode="per_image_standardization", pixel_mean=None, pixel_std=None,
                 asinh_scale=1.0, epsilon=1e-6, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if mode not in NORMALIZATION_MODES:
            raise ValueError(
                f"Unknown normalization {mode!r}; accepted: {', '.join(NORMALIZATION_MODES)}.")
        if mode == "global":
            if pixel_mean is None or pixel_std is None:
                raise ValueError("normalization='global' needs pixel_mean and pixel_std "
                                 "(statistics of the training split).")
            if not (math.isfinite(pixel_mean) and math.isfinite(pixel_std) and pixel_std > 0):
                raise ValueError(f"normalization='global' needs a finite pixel_mean and a "
                                 f"positive pixel_std; got {pixel_mean}, {pixel_std}.")
        if mode == "asinh" and not asinh_scale > 0:
            raise ValueError(f"asinh_scale must be positive; got {asinh_scale}.")
        self.mode = mode
        self.pixel_mean = None if pixel_mean is None else float(pixel_mean)
        self.pixel_std = None if pixel_std is None else float(pixel_std)
        self.asinh_scale = float(asinh_scale)
        self.epsilon = float(epsilon)

    def call(self, images):
        x = ops.cast(images, "float32")
        axes = tuple(range(1, len(x.shape)))
        if self.mode == "per_image_standardization":
            mean = ops.mean(x, axis=axes, keepdims=True)
            std = ops.sqrt(ops.mean(ops.square(x - mean), axis=axes, keepdims=True))
            return (x - mean) / ops.maximum(std, self.epsilon)
        if self.mode == "per_image_minmax":
            low = ops.min(x, axis=axes, keepdims=True)
            high = ops.max(x, axis=axes, keepdims=True)
            return (x - low) / ops.maximum(high - low, self.epsilon)
        if self.mode == "asinh":
            return ops.arcsinh(x / self.asinh_scale)
        if self.mode == "global":
            return (x - self.pixel_mean) / self.pixel_std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, pixel_mean=self.pixel_mean, pixel_std=self.pixel_std,
                      asinh_scale=self.asinh_scale, epsilon=self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="deeplense_tf")
class PositionEmbedding(keras.layers.Layer):
    """Adds a learned embedding per token position to a (batch, tokens, width) sequence."""

    def __init__(self, stddev=0.02, **kwargs):
        super().__init__(**kwargs)
        self.stddev = float(stddev)  # big_vision initializes them with N(0, 0.02)

    def build(self, input_shape):
        self.embedding = self.add_weight(
            name="embedding", shape=tuple(input_shape[1:]),
            initializer=keras.initializers.RandomNormal(stddev=self.stddev))

    def call(self, tokens):
        return tokens + ops.cast(self.embedding, tokens.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(stddev=self.stddev)
        return config


@keras.saving.register_keras_serializable(package="deeplense_tf")
class RegressionOutput(keras.layers.Layer):
    """Standardized head outputs -> dict of per-target tensors of shape (batch,) in physical units.

    Input: (batch, K) standardized predictions `z` for `head="point"`, (batch, 2K)
    `[z, raw_log_variance]` for `head="gaussian"`, or (batch, 2K + K(K-1)/2)
    `[z, raw_log_variance, raw_off_diagonal]` for `head="gaussian_full"`, with
    K = len(targets). Output:
    `{target: mean + std * z}` and, for the Gaussian head,
    `{target + "_std": std * exp(log_variance / 2)}`, where the standardized log-variance
    is `log_var_bound * tanh(raw / log_var_bound)`: smooth, the identity near 0, bounded
    so that the negative log-likelihood cannot blow up, and never flat like a hard clip
    (a prediction stuck beyond a hard clip gets no gradient back).

    `head="gaussian_full"` (K >= 2 targets) predicts a full covariance, Cholesky-
    parametrized as paltas does: in standardized units Sigma = L L^T, L lower triangular
    with diagonal d_i = exp(log_variance_i / 2) and below it, row by row (L[1,0], L[2,0],
    L[2,1], ...), L[i,j] = d_i * b * tanh(raw / b) with b = OFF_DIAGONAL_BOUND = 10: Sigma
    is positive definite for any input, no correlation comes closer to +-1 than float32
    can invert (two targets: |rho| <= 10 / sqrt(101) = 0.995), and the untrained head
    (zero inputs) predicts the identity, the prior. Outputs: each target's
    marginal `_std` = std * sqrt(Sigma_ii) and, per pair, the correlation
    `corr__<first>__<second>` = Sigma_ij / sqrt(Sigma_ii Sigma_jj) (`target_pairs`).

    `target_mean` / `target_std` are the training-split statistics, stored in the config:
    the saved model predicts physical units with no side file.

    `interval_calibration` (Gaussian head; set by `deeplense_tf.calibration`, fitted on a
    validation split): `{target: {"levels": [p...], "half_widths": [k...]}}`, the
    half-width of the central interval of level p in units of the head's sigma. With it,
    a target's outputs are calibrated intervals instead of Gaussian ones:
    `target_std` = sigma * k(0.6827) (the half-width holding 68.27%), and the interval
    ends `target_q16`, `target_q84` (level 0.68) and `target_q025`, `target_q975`
    (level 0.95), k interpolated linearly in p.
    """

    def __init__(self, targets, target_mean, target_std, head="gaussian", log_var_bound=10.0,
                 interval_calibration=None, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        targets = [targets] if isinstance(targets, str) else list(targets)
        target_mean = _as_float_list(target_mean, len(targets), "target_mean")
        target_std = _as_float_list(target_std, len(targets), "target_std")
        if not targets:
            raise ValueError("targets must name at least one target.")
        if head not in HEADS:
            raise ValueError(f"Unknown head {head!r}; accepted: {', '.join(HEADS)}.")
        if head == "gaussian_full" and len(targets) < 2:
            raise ValueError(f"head='gaussian_full' models the covariance of several targets; "
                             f"got one target {targets}: use head='gaussian' (loss "
                             "gaussian_nll) or name two or more --targets")
        output_names = list(targets) + ([t + STD_SUFFIX for t in targets]
                                        if head in GAUSSIAN_HEADS else [])
        if len(set(output_names)) != len(output_names):
            raise ValueError(f"targets {targets} repeat a name (the Gaussian head adds "
                             f"'<target>{STD_SUFFIX}' keys).")
        if not all(math.isfinite(m) for m in target_mean):
            raise ValueError(f"target_mean must be finite; got {target_mean}.")
        if not all(math.isfinite(s) and s > 0 for s in target_std):
            raise ValueError(f"target_std must be finite and positive; got {target_std}.")
        if not log_var_bound > 0:
            raise ValueError(f"log_var_bound must be positive; got {log_var_bound}.")
        self.targets = targets
        self.target_mean = target_mean
        self.target_std = target_std
        self.head = head
        self.log_var_bound = float(log_var_bound)
        self.interval_calibration = _check_interval_calibration(interval_calibration, targets,
                                                                head)

    @property
    def units(self):
        """Width of the dense layer that feeds this one."""
        k = len(self.targets)
        return {"point": k, "gaussian": 2 * k, "gaussian_full": 2 * k + k * (k - 1) // 2}[self.head]

    def _standardized_sigmas(self, z):
        """Standardized marginal sigmas (list of (batch,)) and, for the full head, the
        correlations {key: (batch,)}."""
        k = len(self.targets)
        diag = [ops.exp(0.5 * self.log_var_bound * ops.tanh(z[:, k + i] / self.log_var_bound))
                for i in range(k)]
        if self.head == "gaussian":
            return diag, {}
        rows = []  # rows[i][m] = L[i, m] for m <= i
        column = 2 * k
        bound = OFF_DIAGONAL_BOUND
        for i in range(k):
            row = []
            for _ in range(i):
                row.append(diag[i] * bound * ops.tanh(z[:, column] / bound))
                column += 1
            rows.append(row + [diag[i]])
        variance = [sum(ops.square(v) for v in row) for row in rows]
        sigmas = [ops.sqrt(v) for v in variance]
        correlations = {}
        for i, j, key in target_pairs(self.targets):
            covariance = sum(rows[i][m] * rows[j][m] for m in range(j + 1))
            correlations[key] = covariance / (sigmas[i] * sigmas[j])
        return sigmas, correlations

    def call(self, standardized):
        z = ops.cast(standardized, "float32")
        outputs = {}
        sigmas, correlations = (self._standardized_sigmas(z) if self.head in GAUSSIAN_HEADS
                                else (None, {}))
        for i, (name, mean, std) in enumerate(zip(self.targets, self.target_mean,
                                                   self.target_std)):
            # Index one column: (batch,), never (batch, 1).
            outputs[name] = z[:, i] * std + mean
            if sigmas is not None:
                sigma = sigmas[i] * std
                table = (self.interval_calibration or {}).get(name)
                if table is None:
                    outputs[name + STD_SUFFIX] = sigma
                    continue
                outputs[name + STD_SUFFIX] = sigma * interval_half_width(table, ONE_SIGMA_LEVEL)
                for level, low, high in INTERVAL_OUTPUTS:
                    half = sigma * interval_half_width(table, level)
                    outputs[name + low] = outputs[name] - half
                    outputs[name + high] = outputs[name] + half
        outputs.update(correlations)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(targets=self.targets, target_mean=self.target_mean,
                      target_std=self.target_std, head=self.head,
                      log_var_bound=self.log_var_bound,
                      interval_calibration=self.interval_calibration)
        return config


ONE_SIGMA_LEVEL = 0.682689  # central coverage of +-1 sigma of a Gaussian
# (level, lower suffix, upper suffix) of the interval outputs of a calibrated target.
INTERVAL_OUTPUTS = ((0.68, "_q16", "_q84"), (0.95, "_q025", "_q975"))


def interval_half_width(table, level):
    """k(level): half-width of the central interval in units of sigma (linear in the level
    between the table's entries, k(0) = 0)."""
    levels = [0.0] + list(table["levels"])
    widths = [0.0] + list(table["half_widths"])
    return float(np.interp(level, levels, widths))


def _check_interval_calibration(calibration, targets, head):
    if calibration is None:
        return None
    if head not in GAUSSIAN_HEADS:
        raise ValueError("interval_calibration: only a Gaussian head has intervals to calibrate")
    out = {}
    for name, table in dict(calibration).items():
        if name not in targets:
            raise ValueError(f"interval_calibration: {name!r} is not a target ({targets})")
        levels = np.asarray(table["levels"], np.float64)
        widths = np.asarray(table["half_widths"], np.float64)
        if (levels.ndim != 1 or levels.shape != widths.shape or len(levels) < 2
                or not np.all((levels > 0) & (levels < 1)) or np.any(np.diff(levels) <= 0)
                or not np.all(np.isfinite(widths) & (widths > 0)) or np.any(np.diff(widths) < 0)):
            raise ValueError(f"interval_calibration[{name!r}]: expected increasing levels in "
                             "(0, 1) and positive, non-decreasing half_widths of the same length")
        if not levels[-1] >= 0.95:
            raise ValueError(f"interval_calibration[{name!r}]: levels must reach 0.95 (the "
                             f"widest interval output), got up to {levels[-1]}")
        out[name] = {"levels": levels.tolist(), "half_widths": widths.tolist()}
    return out


def _as_float_list(value, length, what):
    values = np.asarray(value, dtype=np.float64).ravel().tolist()
    if len(values) != length:
        raise ValueError(f"{what} has {len(values)} values for {length} targets.")
    return values


@keras.saving.register_keras_serializable(package="deeplense_tf")
class EnsembleCombine(keras.layers.Layer):
    """Members' standardized head outputs -> one standardized head output (a deep ensemble).

    Input: `{"heads": [M tensors (batch, units)], "features": [M tensors (batch, F_m)]}`,
    each head in the parametrization `RegressionOutput` reads (`[z]` for the point head,
    `[z, raw_log_variance]` for the Gaussian one) in its member's standardized units
    (`member_target_mean[m]`, `member_target_std[m]`). Output: `(head, features)`: the
    combined head in the units of `target_mean` / `target_std` (the ensemble's
    `regression_output` layer reads it) and the members' pooled features side by side
    (what the OOD score of an ensemble measures). In physical units the combined mean is
    the members' average and its variance the mixture's, the mean of the variances plus
    the variance of the means; the log-variance is mapped back through the head's tanh
    bound, so an uncalibrated ensemble outputs exactly that mixture sigma and a calibrated
    one scales it like any head's.
    """

    def __init__(self, member_target_mean, member_target_std, target_mean, target_std,
                 head="gaussian", log_var_bound=10.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if head not in ("gaussian", "point"):
            raise ValueError(f"EnsembleCombine: head {head!r} is not supported (expected "
                             "'gaussian' or 'point'; a full-covariance head's ensemble is not "
                             "a single full-covariance Gaussian)")
        self.member_target_mean = [list(map(float, m)) for m in member_target_mean]
        self.member_target_std = [list(map(float, s)) for s in member_target_std]
        k = len(target_mean)
        if (len(self.member_target_mean) < 2
                or len(self.member_target_mean) != len(self.member_target_std)
                or any(len(m) != k for m in self.member_target_mean + self.member_target_std)):
            raise ValueError("EnsembleCombine: expected two or more members, each with one "
                             f"mean and std per target ({k} targets)")
        self.target_mean = _as_float_list(target_mean, k, "target_mean")
        self.target_std = _as_float_list(target_std, k, "target_std")
        self.head = head
        self.log_var_bound = float(log_var_bound)

    def call(self, inputs):
        heads, features = inputs["heads"], inputs["features"]
        if len(heads) != len(self.member_target_mean):
            raise ValueError(f"EnsembleCombine: {len(heads)} heads for "
                             f"{len(self.member_target_mean)} members")
        k, b = len(self.target_mean), self.log_var_bound
        columns = []
        variances = []
        for i in range(k):
            means, variance = [], []
            for head, mean, std in zip(heads, self.member_target_mean, self.member_target_std):
                head = ops.cast(head, "float32")
                means.append(head[:, i] * std[i] + mean[i])
                if self.head == "gaussian":
                    log_var = b * ops.tanh(head[:, k + i] / b)
                    variance.append(ops.exp(log_var) * std[i] ** 2)
            means = ops.stack(means)
            combined = ops.mean(means, axis=0)
            columns.append((combined - self.target_mean[i]) / self.target_std[i])
            if self.head == "gaussian":
                total = ops.mean(ops.stack(variance), axis=0) + ops.var(means, axis=0)
                log_var = ops.log(total / self.target_std[i] ** 2)
                bound = 1.0 - 1e-6
                variances.append(b * ops.arctanh(ops.clip(log_var / b, -bound, bound)))
        head = ops.stack(columns + variances, axis=1)
        features = ops.concatenate([ops.cast(f, "float32") for f in features], axis=-1)
        return head, features

    def compute_output_spec(self, inputs):
        heads, features = inputs["heads"], inputs["features"]
        batch = heads[0].shape[0]
        units = len(self.target_mean) * (2 if self.head == "gaussian" else 1)
        width = sum(f.shape[-1] for f in features)
        return (keras.KerasTensor((batch, units), dtype="float32"),
                keras.KerasTensor((batch, width), dtype="float32"))

    def get_config(self):
        config = super().get_config()
        config.update(member_target_mean=self.member_target_mean,
                      member_target_std=self.member_target_std, target_mean=self.target_mean,
                      target_std=self.target_std, head=self.head,
                      log_var_bound=self.log_var_bound)
        return config
