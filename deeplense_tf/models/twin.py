"""The macro-model twin: an input layer that subtracts, from each image, the best-fitting
image without the substructure's shape.

For recipes whose lens and source are fixed but for the source centre (the DeepLense
recipes `model_ii_axion` and `model_iii_axion`), every image is the fixed lens seen
through some vortex, of a fixed source at some centre. The twin of an image is the
same lens with the vortex's whole mass as one point mass at the lens centre (the limit
m_a -> infinity, a vortex of zero length), the source centre fitted to the image. The
image minus its twin is what the vortex's length did, and it is what carries m_a: the
information study measured it against exactly this twin (docs/data.md). A network
reading the raw image has to learn the fixed lens before it can see a 1% distortion of
the ring; the residual puts that distortion in front of it.

`MacroTwinResidual(recipe)` maps raw images (B, H, W, 1) to (B, H, W, 2): the image
and its residual, both in raw pixel units, so the regressor's normalization follows
as usual. The fit, in pure `keras.ops`, inside the model (SavedModel exports, `predict`
and serving need nothing else): the source centre starts at the best of a bank of
twins (centres on a grid over the prior), then Gauss-Newton steps of the least-squares
fit with the twin's derivatives in closed form. The twin is the lens in the
simulator's orientation: such a model is trained without dihedral augmentation and
evaluated without test-time augmentation (both refused).
The twin is rendered as the simulator renders (`LensSimulator.render`): the Sersic
surface brightness on the supersampled rays, the pixel mean, the Gaussian PSF of
`scipy.ndimage.gaussian_filter(mode="constant", truncate=4)`; tests compare it with the
simulator. Rays, source profile and bank are recomputed from the recipe when the layer
is built (no weights), so a saved model holds only the recipe's name.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def _gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The kernel of scipy.ndimage.gaussian_filter1d (order 0)."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / sigma**2 * x**2)
    return phi / phi.sum()


class TwinModel:
    """The twin of a fixed-lens recipe, in numpy: rays, source profile, PSF and the bank.

    Raises `deeplense_tf.reference.vortex.UnsupportedRecipe` for a recipe with other
    free parameters than the target, the vortex angle and the source centre."""

    def __init__(self, recipe_name: str, bank_per_axis: int = 8):
        from deeplense_tf.reference import vortex as vortex_lib
        from deeplense_tf.simulation import recipes

        if bank_per_axis < 2:
            raise ValueError(f"bank_per_axis: must be >= 2, got {bank_per_axis}")
        recipe = recipes.get(recipe_name)
        # The reference estimator's setup of a fixed-lens recipe: the check that only the
        # vortex and the source centre are free, the fixed draws, the rays.
        self.reference = ref = vortex_lib.VortexReference(recipe)
        self.beta_x, self.beta_y = ref.twin_rays()
        sim, source = ref.sim, ref.source_fixed
        self.num_pix, self.supersampling = recipe.num_pix, sim.supersampling
        self.pixel_area = sim.instrument.pixel_scale_arcsec**2
        self.psf_kernel = _gaussian_kernel1d(sim.psf_sigma_pix)
        self.box = ref.box

        kwargs = sim.source_light_kwargs(dict(source, source_center_x=0.0, source_center_y=0.0))
        profile = sim.source_profile
        # R^2 of the profile is a quadratic form of the offset from the centre, whatever
        # lenstronomy's convention (semi-major axis or product average): read it off.
        def radius2(px, py):
            return float(profile.get_distance_from_center(
                np.array([px]), np.array([py]), kwargs["e1"], kwargs["e2"], 0.0, 0.0)[0] ** 2)
        a, c = radius2(1.0, 0.0), radius2(0.0, 1.0)
        b = 0.5 * (radius2(1.0, 1.0) - a - c)
        self.quadratic = (a, b, c)
        self.amplitude = float(kwargs["amp"])
        self.r_sersic = float(kwargs["R_sersic"])
        self.n_sersic = float(kwargs["n_sersic"])
        self.b_n = float(profile.b_n(self.n_sersic))
        self.smoothing = float(profile._smoothing)

        (xl, xh), (yl, yh) = self.box
        gx, gy = np.meshgrid(np.linspace(xl, xh, bank_per_axis), np.linspace(yl, yh, bank_per_axis))
        self.bank_centers = np.stack([gx.ravel(), gy.ravel()], axis=1)
        self.bank = np.stack([self.render(c).ravel() for c in self.bank_centers]).astype(np.float32)

    def render(self, center) -> np.ndarray:
        """The twin for source centre `center` (x, y), by the simulator's own path."""
        return self.reference.model_image(None, None, float(center[0]), float(center[1]),
                                          rays=(self.beta_x, self.beta_y))


@keras.saving.register_keras_serializable(package="deeplense_tf")
class MacroTwinResidual(keras.layers.Layer):
    """Raw images (B, H, W, 1) -> (B, H, W, 2): [image, image - twin] (see the module
    docstring).

    Args:
      recipe: a recipe with a fixed lens and source (`model_ii_axion`, `model_iii_axion`).
      bank_per_axis: twins per axis of the source-centre grid that starts the fit.
      gauss_newton_steps: refinement steps of the source centre.
    """

    def __init__(self, recipe, bank_per_axis=8, gauss_newton_steps=5, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if gauss_newton_steps < 0:
            raise ValueError(f"gauss_newton_steps: must be >= 0, got {gauss_newton_steps}")
        self.recipe = str(recipe)
        self.bank_per_axis = int(bank_per_axis)
        self.gauss_newton_steps = int(gauss_newton_steps)
        self.twin = TwinModel(self.recipe, self.bank_per_axis)
        t = self.twin
        self._beta = (t.beta_x.astype(np.float32), t.beta_y.astype(np.float32))
        self._bank = t.bank
        self._bank_norm2 = np.sum(t.bank.astype(np.float64) ** 2, axis=1).astype(np.float32)
        self._bank_centers = t.bank_centers.astype(np.float32)

    def _render(self, center, slopes=True):
        """Twins (B, H, W) for centres (B, 2), with their derivatives by the centre (a list
        of one or three (B, H, W) maps)."""
        t = self.twin
        ux = ops.convert_to_tensor(self._beta[0])[None] - center[:, 0, None, None]
        uy = ops.convert_to_tensor(self._beta[1])[None] - center[:, 1, None, None]
        a, b, c = t.quadratic
        radius = ops.sqrt(ops.maximum(a * ux * ux + 2 * b * ux * uy + c * uy * uy,
                                      t.smoothing**2))
        frac = radius / t.r_sersic
        power = ops.power(frac, 1.0 / t.n_sersic)
        surface = t.amplitude * ops.exp(-t.b_n * (power - 1.0))
        # d surface / d centre = -d surface / d u = surface * b_n/n * frac^(1/n) / R * dR/du
        maps = [surface]
        if slopes:
            slope = surface * (t.b_n / t.n_sersic) * power / (radius * radius)
            maps += [slope * (a * ux + b * uy), slope * (b * ux + c * uy)]
        m = len(maps)
        n, s = t.num_pix, t.supersampling
        batch = ops.shape(surface)[0]
        maps = ops.reshape(ops.stack(maps, axis=1), (batch * m, n, s, n, s))
        pixels = ops.mean(maps, axis=(2, 4)) * t.pixel_area
        kernel = ops.convert_to_tensor(t.psf_kernel.astype(np.float32))
        k = kernel.shape[0]
        x = pixels[..., None]
        x = ops.conv(x, ops.reshape(kernel, (k, 1, 1, 1)), padding="same")
        x = ops.conv(x, ops.reshape(kernel, (1, k, 1, 1)), padding="same")
        x = ops.reshape(x, (batch, m, n, n))
        return [x[:, i] for i in range(m)]

    def fit(self, images):
        """-> (image, centre): the images (B, H, W) and their fitted source centres (B, 2)."""
        image = ops.cast(images, "float32")[..., 0]
        batch = ops.shape(image)[0]
        n = self.twin.num_pix
        flat = ops.reshape(image, (batch, n * n))
        # ||x - T||^2 up to ||x||^2
        score = (ops.convert_to_tensor(self._bank_norm2)[None]
                 - 2.0 * ops.matmul(flat, ops.transpose(ops.convert_to_tensor(self._bank))))
        entry = ops.argmin(score, axis=1)
        center = ops.take(ops.convert_to_tensor(self._bank_centers), entry, axis=0)
        (xl, xh), (yl, yh) = self.twin.box
        margin = 0.5 * max(xh - xl, yh - yl) / (self.bank_per_axis - 1)
        low = ops.convert_to_tensor(np.array([xl - margin, yl - margin], np.float32))
        high = ops.convert_to_tensor(np.array([xh + margin, yh + margin], np.float32))
        for _ in range(self.gauss_newton_steps):
            model, jx, jy = self._render(center)
            r = image - model
            sxx = ops.sum(jx * jx, axis=(1, 2))
            sxy = ops.sum(jx * jy, axis=(1, 2))
            syy = ops.sum(jy * jy, axis=(1, 2))
            gx = ops.sum(jx * r, axis=(1, 2))
            gy = ops.sum(jy * r, axis=(1, 2))
            det = ops.maximum(sxx * syy - sxy * sxy, 1e-30)
            step = ops.stack([(syy * gx - sxy * gy) / det, (sxx * gy - sxy * gx) / det], axis=1)
            center = ops.clip(center + step, low, high)
        return image, center

    def call(self, images):
        image, center = self.fit(images)
        (model,) = self._render(center, slopes=False)
        return ops.stop_gradient(ops.stack([image, image - model], axis=-1))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2,)

    def flops_per_image(self) -> int:
        """Floating-point operations of one image's fit and residual, counted as
        `deeplense_tf.models.cost` counts (a multiply-add 2), with the element-wise work
        that dominates here counted too: each arithmetic operation, square root, power
        and exponential on a ray or pixel is one.

        Per render on the n^2 s^2 supersampled rays: 19 operations for the surface (offsets,
        quadratic form, floor, root, ratio, power, exponential), 12 more for its two slopes;
        then per map the pixel mean (one per ray, two per pixel) and the separable PSF
        (2 x 2k per pixel). Per Gauss-Newton step one render with slopes plus 11 operations
        per pixel (the residual and the five sums of products); the last render has no
        slopes, and the residual is one more per pixel. The bank's scores are one
        (n^2 x bank) matrix product."""
        t = self.twin
        pixels = t.num_pix ** 2
        rays = pixels * t.supersampling ** 2
        k = len(t.psf_kernel)

        def render(maps):
            return rays * (19 + 12 * (maps > 1)) + maps * (rays + 2 * pixels + 4 * k * pixels)

        bank = 2 * pixels * len(self._bank_centers)
        step = render(3) + 11 * pixels
        return int(bank + self.gauss_newton_steps * step + render(1) + pixels)

    def get_config(self):
        config = super().get_config()
        config.update(recipe=self.recipe, bank_per_axis=self.bank_per_axis,
                      gauss_newton_steps=self.gauss_newton_steps)
        return config


def macro_twin_recipe(model) -> str | None:
    """The recipe of the `MacroTwinResidual` layer of `model` (searched in nested models
    too), or None when the model reads raw images only."""
    for layer in model.layers:
        if isinstance(layer, MacroTwinResidual):
            return layer.recipe
        if isinstance(layer, keras.Model):
            found = macro_twin_recipe(layer)
            if found:
                return found
    return None
