"""Exact-likelihood posterior of the axion mass for the DeepLense vortex recipes.

In `model_ii_axion` and `model_iii_axion` everything is fixed but four numbers: the
target log10 m_a, the vortex angle, and the source centre (x, y). For one image d the
posterior of the target is therefore

    p(m | d) ∝ ∫∫∫ L(d | m, θ, c) dc dθ  p(m)          (flat priors of the recipe)

with L the generator's own noise model: each pixel Gaussian background of the
instrument's rms plus Poisson noise of the source counts. The model image is rendered
by the simulator itself (`LensSimulator.render`, the vortex from
`AxionVortex.realization`), so the likelihood is the generator's.

What is approximated, and how well (tests/reference/ check each):
- Poisson noise as Gaussian of the same variance, background rms^2 + mu / t_exp. The
  faintest pixels carry < 1 count against a background variance of ~600 counts^2 in
  Euclid VIS, the brightest ~2e4 counts: the difference is far below the noise.
- The source-centre integral by Laplace's method around the best fit for each (m, θ),
  Gauss-Newton with a finite-difference Jacobian. The centre is known to ~1e-4" (the
  images have S/N ~2,500), and chi^2 is quadratic in it out to 0.01": the Laplace
  integral equals a direct 2-D quadrature to a few 1e-3 nats (test), well below the
  angle and mass structure it is compared across.
- The angle and mass integrals by adaptive quadrature of ln p (see `quadrature`):
  a coarse grid (the angle's step moves the vortex's end by about one pixel), then
  bisection wherever neighbouring nodes differ by more than `tol` nats within
  `window` nats of the maximum. `Settings.doubled()` halves every step; the run
  command's convergence check compares the two.
- Where the vortex is long (light axions), ln L in (m, θ) is a comb: each of the
  vortex's point masses that sits on a sub-pixel ray throws that ray's light away, and
  the same feature returns when the neighbouring point mass lands on the ray, i.e. when
  the length changes by s_k / s_(k±1) (~0.009 dex). The truth's tooth and its aliases are
  1e-4-1e-3 dex by 1e-4-3e-3 rad, ridged and pitted inside, and the grids above can land
  on an alias or misjudge a tooth's mass. So a scan in m at the best slice's angle finds
  the teeth, and each one within `tooth_window` nats is integrated in 2-D by stratified
  random sampling on a box sheared along its ridge: one point per cell gives an unbiased
  estimate of each row's ∫ L dθ however rough L is inside the cell.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from scipy.special import logsumexp, ndtr

from deeplense_tf.reference import quadrature
from deeplense_tf.simulation import priors, substructure


class UnsupportedRecipe(ValueError):
    """A recipe with nuisance parameters this estimator does not marginalize."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """Quadrature settings. `doubled()` is the convergence check's finer grid."""

    m_nodes: int = 41  # coarse grid of log10 m_a over the prior
    theta_step_pixels: float = 1.0  # coarse angle step: how far the vortex's end moves
    min_theta_nodes: int = 4
    window: float = 15.0  # nodes further below the maximum (nats) are not refined
    curvature_tol: float = 0.1  # refine where linear ln p is off by more (nats)
    max_step: float = 3.0  # ... or where neighbouring nodes differ by more (nats)
    sharp_drop: float = 2.0  # a coarse peak above both neighbours by more is "sharp"
    gauss_hermite_nodes: int = 7
    max_newton: int = 6
    full_scan_nodes: int = 16  # above this many coarse angles, scan near candidates only
    candidate_halfwidth: float = 2.5  # coarse steps around a candidate angle
    sweep_every: int = 4  # ... and every n-th coarse angle elsewhere
    max_m_nodes: int = 160
    max_theta_nodes: int = 320
    # ln L is rough on small scales (the vortex's point masses crossing rays move it by
    # ~0.1-0.3 nats): curvature-driven refinement stops at these widths, refinement of
    # steep flanks (max_step) goes on to 1e-3 of them.
    min_m_width: float = 1e-3  # dex
    min_theta_width: float = 1e-3  # radians
    source_grid: int = 15  # first search of the source centre, per axis
    fd_step_arcsec: float = 1e-4
    max_gauss_newton: int = 8
    gauss_newton_gain: float = 0.01  # nats: the source fit stops when a step adds less
    # The comb stage (module docstring), where the best slice's vortex is longer than
    # `full_scan_nodes` coarse angles allow.
    comb_span: float = 0.02  # dex scanned either side of the best slice (0: no comb stage)
    comb_step: float = 2e-5  # dex
    tooth_window: float = 20.0  # nats
    tooth_cells: int = 32  # stratified cells per axis of a tooth's box
    tooth_min_ess: float = 50.0  # below this effective sample size the box is tightened

    def doubled(self) -> "Settings":
        return dataclasses.replace(
            self, m_nodes=2 * self.m_nodes - 1, theta_step_pixels=self.theta_step_pixels / 2,
            min_theta_nodes=2 * self.min_theta_nodes, window=self.window + 5,
            curvature_tol=self.curvature_tol / 4, max_step=self.max_step / 2,
            gauss_hermite_nodes=2 * self.gauss_hermite_nodes - 1,
            max_m_nodes=2 * self.max_m_nodes, max_theta_nodes=2 * self.max_theta_nodes,
            sweep_every=max(1, self.sweep_every // 2), comb_span=1.5 * self.comb_span,
            comb_step=self.comb_step / 2, tooth_window=self.tooth_window + 5,
            tooth_cells=2 * self.tooth_cells)


@dataclasses.dataclass
class Posterior:
    """The 1-D posterior of log10 m_a for one image, as nodes of normalized ln density
    (piecewise-exponential between nodes; see `quadrature`), and what it cost."""

    log10_m: np.ndarray
    log_density: np.ndarray
    evaluations: int  # likelihood slices (m, θ) evaluated
    cpu_seconds: float
    map_log10_m: float
    map_angle: float
    map_source_center: tuple[float, float]

    def quantile(self, q) -> np.ndarray:
        return quadrature.quantile(self.log10_m, self.log_density, q)

    def cdf(self, value) -> np.ndarray:
        return quadrature.cdf(self.log10_m, self.log_density, value)

    @property
    def median(self) -> float:
        return float(self.quantile(0.5)[0])

    def mean_and_std(self) -> tuple[float, float]:
        return quadrature.mean_and_std(self.log10_m, self.log_density)

    def density(self, grid) -> np.ndarray:
        """Density on `grid` (log-linear interpolation between nodes, 0 outside)."""
        grid = np.asarray(grid, np.float64)
        inside = (grid >= self.log10_m[0]) & (grid <= self.log10_m[-1])
        return np.where(inside, np.exp(np.interp(grid, self.log10_m, self.log_density)), 0.0)


def _uniform(prior, what):
    if not isinstance(prior, priors.Uniform):
        raise UnsupportedRecipe(f"{what}: the reference estimator needs a uniform prior here, "
                                f"got {prior}")
    return prior.low, prior.high


def nuisance_check(recipe) -> dict:
    """The fixed parameters and the free ranges of `recipe`, or UnsupportedRecipe saying
    which parameter is free that this estimator would have to marginalize."""
    supported = ("the reference estimator marginalizes log10_m_axion, the vortex angle and the "
                 "source centre only, with everything else fixed (the DeepLense recipes "
                 "model_ii_axion and model_iii_axion)")
    subs = dict(recipe.substructures)
    if set(subs) != {"axion"} or not isinstance(subs["axion"], substructure.AxionVortex):
        raise UnsupportedRecipe(f"recipe {recipe.name!r}: substructure classes {sorted(subs)}; "
                                f"{supported}")
    free = []
    for owner, obj in (("deflector", recipe.deflector), ("source", recipe.source)):
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            if isinstance(value, priors.Prior) and not isinstance(value, priors.Fixed):
                if not (owner == "source" and field.name in ("center_x", "center_y")):
                    free.append(f"{owner}.{field.name} ~ {type(value).__name__}")
    from deeplense_tf.simulation import instruments

    instrument = (recipe.instrument if isinstance(recipe.instrument, instruments.Instrument)
                  else instruments.get(recipe.instrument))
    if not isinstance(instrument.exposure_time_s, priors.Fixed):
        free.append(f"instrument.exposure_time_s ~ {type(instrument.exposure_time_s).__name__}")
    if free:
        raise UnsupportedRecipe(f"recipe {recipe.name!r}: free parameters {free}; {supported}")
    vortex = subs["axion"]
    m_range = _uniform(vortex.log10_m_axion, f"recipe {recipe.name!r}: log10_m_axion")
    angle_range = _uniform(vortex.angle, f"recipe {recipe.name!r}: vortex angle")
    if not (math.isclose(angle_range[0], 0.0, abs_tol=1e-12)
            and math.isclose(angle_range[1], math.pi, rel_tol=1e-12)):
        raise UnsupportedRecipe(f"recipe {recipe.name!r}: vortex angle prior {angle_range}; "
                                "expected U(0, pi) (a segment's full range of orientations)")
    return {
        "instrument": instrument,
        "vortex": vortex,
        "m_range": m_range,
        "center_x": _uniform(recipe.source.center_x, f"recipe {recipe.name!r}: source.center_x"),
        "center_y": _uniform(recipe.source.center_y, f"recipe {recipe.name!r}: source.center_y"),
    }


class VortexReference:
    """The posterior of log10 m_a for images of one vortex recipe.

    Args:
      recipe: a `recipes.Recipe` whose only free parameters are the target, the vortex
        angle and the source centre (else `UnsupportedRecipe`).
      settings: quadrature settings.
    """

    def __init__(self, recipe, settings: Settings = Settings()):
        info = nuisance_check(recipe)
        self.recipe, self.settings = recipe, settings
        self.instrument = info["instrument"]
        self.vortex = info["vortex"]
        self.m_range = info["m_range"]
        self.box = (info["center_x"], info["center_y"])
        self.sim = recipe.simulator(noise=False)
        rng = np.random.default_rng(0)  # every remaining prior is Fixed: any draw is the value
        macro = recipe.deflector.sample(rng)
        self.source_fixed = recipe.source.sample(rng)
        self.exposure = self.instrument.exposure_time_s.sample(rng)
        self.center = (macro["lens_center_x"], macro["lens_center_y"])
        self.x, self.y = self.sim.ray_grid
        ax, ay = self.sim.macro_deflection(macro)
        self._bx0, self._by0 = self.x - ax, self.y - ay
        self._ray_spacing = self.instrument.pixel_scale_arcsec / self.sim.supersampling
        self._var0 = self.instrument.background_rms ** 2
        self.shape = (self.instrument.num_pix, self.instrument.num_pix)

    # ------------------------------------------------------------------ likelihood

    def rays(self, log10_m: float, angle: float):
        """Source-plane positions of the sub-pixel rays for a vortex (m, θ)."""
        vortex = self.vortex.realization(log10_m, angle, self.sim.geometry, self.center,
                                         self._ray_spacing)
        sx, sy = vortex.deflection(self.x, self.y)
        return self._bx0 - sx, self._by0 - sy

    def twin_rays(self):
        """Source-plane positions of the sub-pixel rays for the m_a -> infinity limit: the
        vortex's whole mass as one point mass at the lens centre (the information study's
        twin, `simulation.information`)."""
        theta_e2 = float(self.sim.geometry.point_mass_theta_e(self.vortex.mass_msun) ** 2)
        sx, sy = substructure.point_mass_deflection(
            self.x, self.y, np.array([self.center[0]]), np.array([self.center[1]]),
            np.array([theta_e2]))
        return self._bx0 - sx, self._by0 - sy

    def model_image(self, log10_m, angle, center_x, center_y, rays=None) -> np.ndarray:
        """The noiseless image the simulator renders for these parameters."""
        bx, by = rays if rays is not None else self.rays(log10_m, angle)
        return self.sim.render(bx, by, dict(self.source_fixed, source_center_x=center_x,
                                            source_center_y=center_y))

    def variance(self, model) -> np.ndarray:
        return self._var0 + np.clip(model, 0, None) / self.exposure

    def log_likelihood_of_model(self, image, model) -> float:
        """ln L(d | mu): independent Gaussians of variance background^2 + mu / t_exp."""
        v = self.variance(model)
        return float(-0.5 * np.sum((image - model) ** 2 / v + np.log(2 * np.pi * v)))

    def log_likelihood(self, image, log10_m, angle, center_x, center_y) -> float:
        image = self._image(image)
        return self.log_likelihood_of_model(image, self.model_image(log10_m, angle, center_x,
                                                                     center_y))

    def _image(self, image):
        image = np.asarray(image, np.float64)
        if image.shape == self.shape + (1,):
            image = image[..., 0]
        if image.shape != self.shape:
            raise ValueError(f"image: expected shape {self.shape} (or {self.shape + (1,)}) for "
                             f"recipe {self.recipe.name!r}, got {image.shape}")
        if not np.isfinite(image).all():
            raise ValueError("image: contains NaN or infinite pixels")
        return image

    # ------------------------------------------------------- source-centre integral

    def source_marginal(self, image, rays, start) -> tuple[float, np.ndarray]:
        """ln ∫ L(d | m, θ, c) p(c) dc for the rays of one (m, θ), by Laplace's method
        around the Gauss-Newton fit started at `start`; returns it and the best centre."""
        h = self.settings.fd_step_arcsec
        bx, by = rays

        def render(c):
            return self.model_image(0, 0, c[0], c[1], rays=(bx, by))

        def jacobian(c, mu):
            jac = np.stack([(render(c + [h, 0.0]) - mu) / h, (render(c + [0.0, h]) - mu) / h])
            return jac.reshape(2, -1)

        c = np.asarray(start, np.float64)
        mu = render(c)
        loglike = self.log_likelihood_of_model(image, mu)
        jac, jac_at = jacobian(c, mu), c
        for _ in range(self.settings.max_gauss_newton):
            # Fisher scoring for Gaussians whose variance v(mu) grows with the model:
            # gradient J^T [r / v + (r^2 / v^2 - 1 / v) v' / 2], information
            # J^T [1 / v + (v' / v)^2 / 2] J, with v' = 1 / t_exp where mu > 0.
            v = self.variance(mu).ravel()
            dv = np.where(mu.ravel() > 0, 1.0 / self.exposure, 0.0)
            r = (image - mu).ravel()
            a = (jac * (1 / v + 0.5 * (dv / v) ** 2)) @ jac.T
            b = jac @ (r / v + 0.5 * (r * r / (v * v) - 1 / v) * dv)
            step = np.linalg.solve(a, b)
            gain = 0.5 * float(b @ step)  # what the quadratic model says the step would add
            sigma = np.sqrt(np.diag(np.linalg.inv(a)))
            if gain < self.settings.gauss_newton_gain:
                # Converged: the rest of the way is the quadratic model's (< gain nats).
                c, loglike = c + step, loglike + gain
                break
            scale = min(1.0, 0.05 / max(np.abs(step).max(), 1e-300))  # trust region 0.05"
            for _ in range(8):  # backtrack until the likelihood does not drop
                trial = c + scale * step
                mu_trial = render(trial)
                trial_loglike = self.log_likelihood_of_model(image, mu_trial)
                if trial_loglike >= loglike:
                    break
                scale /= 4
            if trial_loglike >= loglike:
                c, mu, loglike = trial, mu_trial, trial_loglike
            elif np.array_equal(jac_at, c):
                break  # no ascent even with a fresh Jacobian: as good as it gets
            if np.any(np.abs(c - jac_at) > 20 * sigma) or trial_loglike < loglike:
                jac, jac_at = jacobian(c, mu), c  # moved far, or a stale Jacobian misled
        # Laplace: ∫ exp(-(c - ĉ)^T A (c - ĉ) / 2) dc = 2π / sqrt(det A), times the share
        # of that Gaussian inside the uniform prior box, over the box's area.
        sign, logdet = np.linalg.slogdet(a)
        inside = 1.0
        area = 1.0
        for k, (low, high) in enumerate(self.box):
            inside *= ndtr((high - c[k]) / sigma[k]) - ndtr((low - c[k]) / sigma[k])
            area *= high - low
        log_marginal = (loglike + math.log(2 * math.pi) - 0.5 * logdet
                        + math.log(max(inside, 1e-300)) - math.log(area))
        return log_marginal, c

    def initial_source_center(self, image) -> np.ndarray:
        """Best centre on a grid over the prior box, for a vortex at the heavy end (a point
        mass in effect, whatever its angle): where the Gauss-Newton fits start."""
        rays = self.rays(self.m_range[1], 0.0)
        n = self.settings.source_grid
        best, best_c = -np.inf, None
        for cx in np.linspace(*self.box[0], n):
            for cy in np.linspace(*self.box[1], n):
                value = self.log_likelihood_of_model(image, self.model_image(0, 0, cx, cy, rays))
                if value > best:
                    best, best_c = value, np.array([cx, cy])
        return best_c

    # ------------------------------------------------------------------ posterior

    def _theta_grid(self, log10_m) -> np.ndarray:
        """Coarse angles for one m: the vortex's end moves ~`theta_step_pixels` between them."""
        length = float(substructure.vortex_length_arcsec(10.0 ** log10_m))
        step = self.settings.theta_step_pixels * self.instrument.pixel_scale_arcsec
        n = max(self.settings.min_theta_nodes, math.ceil(math.pi * length / (2 * step)))
        return np.arange(n) * (math.pi / n)

    def posterior(self, image) -> Posterior:
        """p(log10 m_a | image) with the angle and the source centre marginalized."""
        return _PosteriorRun(self, self._image(image)).run()


def _circular_distance(a, b):
    """Distance between angles of a line (period pi)."""
    d = np.abs(np.asarray(a) - np.asarray(b)) % math.pi
    return np.minimum(d, math.pi - d)


class _PosteriorRun:
    """The quadrature for one image (see the module docstring for the scheme)."""

    def __init__(self, ref: VortexReference, image: np.ndarray):
        self.ref, self.image, self.s = ref, image, ref.settings
        self.evaluations = 0
        self.centre = ref.initial_source_center(image)
        self.best = (-np.inf, None, None, self.centre)
        self.gh_x, self.gh_w = np.polynomial.hermite.hermgauss(self.s.gauss_hermite_nodes)

    def slice_value(self, m, theta) -> float:
        """ln ∫ L p(c) dc at (m, θ), the fit started from the latest centre."""
        self.evaluations += 1
        value, centre = self.ref.source_marginal(self.image, self.ref.rays(m, theta), self.centre)
        self.centre = centre
        if value > self.best[0]:
            self.best = (value, m, theta, centre)
        return value

    # ---------------------------------------------------------------- the angle

    def angle_scan(self, m, candidates=(), sweep=True):
        """Coarse angle nodes of m and their values. With candidate angles (peaks found at
        a neighbouring m) and a long vortex, only the coarse nodes near the candidates and
        every `sweep_every`-th node elsewhere are evaluated; the rest count as -inf."""
        grid = self.ref._theta_grid(m)
        step = grid[1] - grid[0]
        if len(candidates) and len(grid) > self.s.full_scan_nodes:
            near = np.min(_circular_distance(grid[:, None], np.asarray(candidates)[None]),
                          axis=1) <= self.s.candidate_halfwidth * step
            keep = near | (sweep & (np.arange(len(grid)) % self.s.sweep_every == 0))
        else:
            keep = np.ones(len(grid), bool)
        values = np.full(len(grid), -np.inf)
        for i in np.flatnonzero(keep):
            values[i] = self.slice_value(m, grid[i])
        return grid, values

    def peaks(self, thetas, values):
        """Local maxima (periodic) within the window of the highest node."""
        top = np.max(values)
        left, right = np.roll(values, 1), np.roll(values, -1)
        is_peak = (values >= left) & (values >= right) & (values > top - self.s.window)
        return thetas[is_peak], values[is_peak]

    def _parabola_peak(self, m, theta0, width0):
        """Newton steps on a 3-point parabola: (angle, sigma, value) of a sharp peak, or
        None when ln L is not concave there."""
        theta, delta = theta0, width0
        value0 = self.slice_value(m, theta)
        fit = None
        for _ in range(self.s.max_newton):
            lo, hi = self.slice_value(m, theta - delta), self.slice_value(m, theta + delta)
            curvature = (lo + hi - 2 * value0) / delta**2
            if not curvature < 0:
                return fit
            shift = -(hi - lo) / (2 * delta * curvature)
            sigma = 1 / math.sqrt(-curvature)
            shift = max(-3 * delta, min(3 * delta, shift))  # stay near the fitted span
            theta = (theta + shift) % math.pi
            fit = (theta, sigma)
            if abs(shift) < 0.5 * sigma and 0.3 * sigma < delta < 3 * sigma:
                return fit
            delta = min(sigma, math.pi / 8)
            value0 = self.slice_value(m, theta)
        return fit

    def gauss_hermite(self, m, theta, sigma) -> float:
        """ln ∫ L dθ around a sharp peak by Gauss-Hermite quadrature scaled to it."""
        nodes = theta + math.sqrt(2) * sigma * self.gh_x
        logs = np.array([self.slice_value(m, t % math.pi) for t in nodes]) + self.gh_x**2
        top = logs.max()
        return float(top + math.log(np.sum(self.gh_w * np.exp(logs - top)))
                     + math.log(math.sqrt(2) * sigma))

    def sharp_marginal(self, m, fits):
        """ln ∫ L dθ / π as a sum of Gauss-Hermite integrals over distinct sharp peaks."""
        unique = []
        for t, sigma in fits:  # merge peaks that converged to the same angle
            if all(_circular_distance(t, u) > 3 * max(sigma, su) for u, su in unique):
                unique.append((t, sigma))
        logs = [self.gauss_hermite(m, t, sigma) for t, sigma in unique]
        top = max(logs)
        return top + math.log(sum(math.exp(v - top) for v in logs)) - math.log(math.pi), unique

    def angle_marginal(self, m, thetas, values):
        """ln ∫ L dθ / π from coarse nodes: sharp peaks by Newton + Gauss-Hermite, broad
        posteriors by refining the nodes. Returns it and the peaks' (angle, sigma)."""
        step = math.pi / len(thetas)
        peak_t, peak_v = self.peaks(thetas, values)
        sharp = []
        for t, v in zip(peak_t, peak_v):
            i = int(np.argmin(_circular_distance(thetas, t)))
            neighbours = values[[(i - 1) % len(values), (i + 1) % len(values)]]
            if np.all(v - neighbours > self.s.sharp_drop):
                fit = self._parabola_peak(m, t, step / 4)
                if fit is None:
                    sharp = None
                    break
                sharp.append(fit)
            else:
                sharp = None
                break
        if sharp:
            return self.sharp_marginal(m, sharp)
        finite = np.isfinite(values)
        if not finite.all():  # fill skipped nodes before refining a broad posterior
            for i in np.flatnonzero(~finite):
                values[i] = self.slice_value(m, thetas[i])
        x, y = refine_curvature(lambda t: self.slice_value(m, t), thetas, values, s=self.s,
                                width=self.s.min_theta_width, max_nodes=self.s.max_theta_nodes,
                                period=math.pi)
        xp, yp = quadrature.periodic_nodes(x, y, math.pi)
        top_i = int(np.argmax(y))
        return (quadrature.log_integral(xp, yp) - math.log(math.pi),
                [(float(x[top_i]), float(math.pi))])

    # ------------------------------------------------------------------- the mass

    def run(self) -> Posterior:
        cpu0 = time.process_time()
        s, ref = self.s, self.ref
        m_grid = np.linspace(*ref.m_range, s.m_nodes)
        coarse, candidates = {}, ()
        # 1. Coarse scan from the heavy end (the vortex barely matters there, so the
        # source fit is easy) to the light end; peaks of one m seed the next.
        for m in m_grid[::-1]:
            thetas, values = self.angle_scan(m, candidates)
            coarse[m] = (thetas, values)
            candidates = self.peaks(thetas, values)[0]
        # A Riemann sum over the evaluated coarse angles: only decides where to refine.
        rough = {m: float(logsumexp(v[np.isfinite(v)]) + math.log(t[1] - t[0]) - math.log(math.pi))
                 for m, (t, v) in coarse.items()}
        self.stage_evaluations = {"coarse": self.evaluations}
        top = max(rough.values())
        # 2. The angle integral in full where m matters (within the window, and one
        # coarse node beyond on each side); elsewhere the coarse sum stands.
        live = [i for i, m in enumerate(m_grid) if rough[m] > top - s.window]
        live = sorted({j for i in live for j in (i - 1, i, i + 1) if 0 <= j < len(m_grid)})
        values, peaks = dict(rough), {}
        for i in live:
            m = m_grid[i]
            self.centre = self.best[3]
            values[m], peaks[m] = self.angle_marginal(m, *coarse[m])

        # 3. Refine in m; a new node scans the angles near its neighbours' peaks.
        def m_value(m):
            below = max((k for k in peaks if k < m), default=None)
            above = min((k for k in peaks if k > m), default=None)
            neighbours = [k for k in (below, above) if k is not None]
            self.centre = self.best[3]
            step = math.pi / len(ref._theta_grid(m))
            if all(sigma < step / 2 for k in neighbours for _, sigma in peaks[k]):
                # Both neighbours have sharp angle peaks: start Newton from them.
                fits = []
                for t, sigma in sorted((p for k in neighbours for p in peaks[k]), key=lambda p: p[1]):
                    if all(_circular_distance(t, u) > 3 * max(sigma, su) for u, su in fits):
                        fit = self._parabola_peak(m, t, sigma)
                        if fit is None:
                            break
                        fits.append(fit)
                else:
                    value, peaks[m] = self.sharp_marginal(m, fits)
                    return value
            seeds = [t for k in neighbours for t, _ in peaks[k]]
            thetas, vals = self.angle_scan(m, seeds, sweep=False)
            value, peaks[m] = self.angle_marginal(m, thetas, vals)
            return value

        self.stage_evaluations["angles"] = self.evaluations - self.stage_evaluations["coarse"]
        xs = np.array(sorted(values))
        ys = np.array([values[m] for m in xs])
        xs, ys = refine_curvature(m_value, xs, ys, s=s, width=s.min_m_width,
                                  max_nodes=s.max_m_nodes)
        self.stage_evaluations["mass"] = self.evaluations - sum(self.stage_evaluations.values())
        # 4. The comb's teeth, integrated in 2-D, replace the nodes over their ranges.
        self.teeth = self.comb()
        if self.teeth:
            xs, ys = merge_teeth(xs, ys, self.teeth)
        self.stage_evaluations["comb"] = self.evaluations - sum(self.stage_evaluations.values())
        _, m_best, theta_best, c_best = self.best
        return Posterior(log10_m=xs, log_density=quadrature.normalize(xs, ys),
                         evaluations=self.evaluations, cpu_seconds=time.process_time() - cpu0,
                         map_log10_m=float(m_best), map_angle=float(theta_best),
                         map_source_center=(float(c_best[0]), float(c_best[1])))

    # -------------------------------------------------------------------- the comb

    def _value(self, m, theta) -> float:
        lo, hi = self.ref.m_range
        return self.slice_value(m, theta % math.pi) if lo <= m <= hi else -math.inf

    def comb(self) -> list["Tooth"]:
        """Teeth of the comb near the best slice, each integrated in 2-D (none where the
        vortex is too short for a comb)."""
        s, (lo, hi) = self.s, self.ref.m_range
        best, m_best, theta, centre = self.best
        if s.comb_span <= 0 or len(self.ref._theta_grid(m_best)) <= s.full_scan_nodes:
            return []
        ms = np.arange(max(lo, m_best - s.comb_span), min(hi, m_best + s.comb_span), s.comb_step)
        self.centre = centre
        values = np.array([self.slice_value(m, theta) for m in ms])
        left = np.concatenate([[-np.inf], values[:-1]])
        right = np.concatenate([values[1:], [-np.inf]])
        peak = (values >= left) & (values >= right)
        candidates = [(best, m_best, theta)] + [(v, m, theta) for m, v in zip(ms[peak], values[peak])]
        teeth = []
        for v, m, t in sorted(candidates, key=lambda c: -c[0]):
            if v < self.best[0] - s.tooth_window or any(tooth.holds(m, t) for tooth in teeth):
                continue
            tooth = self.tooth(m, t)
            # A pitted tooth has several maxima along the scan: one climbed to from outside
            # a tooth's box can still reach that tooth's top; it is the same tooth.
            if not any(other.holds(tooth.m_center, tooth.theta_center) for other in teeth):
                teeth.append(tooth)
        top = self.best[0]
        return [tooth for tooth in teeth if tooth.peak > top - s.tooth_window]

    def tooth(self, m0, t0) -> "Tooth":
        """One tooth, from a point on it: pattern search to its top, a coarse grid grown
        until its edges are `tooth_window` nats down, then the stratified 2-D integral on
        a box sheared along the ridge, tightened while few cells carry the weight."""
        s = self.s
        self.centre = self.best[3]
        # Pattern search (steps of comb_step in m, 2.5x that in radians: the ridge's slope).
        top, step = self._value(m0, t0), s.comb_step
        while step > s.comb_step / 16:
            for dm, dt in ((step, 0.0), (-step, 0.0), (0.0, 2.5 * step), (0.0, -2.5 * step)):
                value = self._value(m0 + dm, t0 + dt)
                if value > top:
                    top, m0, t0 = value, m0 + dm, t0 + dt
                    break
            else:
                step /= 2
        # Coarse grid around the top, grown until its edges are down by the window.
        half_m, half_t, n = 25 * s.comb_step, 100 * s.comb_step, 15
        for _ in range(6):
            gm, gt = m0 + np.linspace(-half_m, half_m, n), t0 + np.linspace(-half_t, half_t, n)
            grid = np.array([[self._value(a, b) for b in gt] for a in gm])
            top = max(top, grid.max())
            high_m = max(grid[0].max(), grid[-1].max()) > top - s.tooth_window
            high_t = max(grid[:, 0].max(), grid[:, -1].max()) > top - s.tooth_window
            if not (high_m or high_t):
                break
            half_m, half_t = half_m * (2 if high_m else 1), half_t * (2 if high_t else 1)
        # The ridge's slope from the live cells (tempered weights: pits do not steer it).
        live, level = grid > top - s.tooth_window - 5, top
        if not live.any():
            # Every grid slice lies far below the pattern search's top (a source fit started
            # from another centre can settle lower): the grid's own best is the reference.
            level = float(grid.max())
            live = grid > level - s.tooth_window - 5
        mm, tt = np.meshgrid(gm, gt, indexing="ij")
        w = np.exp((grid[live] - level) / 5)
        dm_, dt_ = mm[live] - m0, tt[live] - t0
        mean_m, mean_t = np.average(dm_, weights=w), np.average(dt_, weights=w)
        var_m = float(np.sum(w * (dm_ - mean_m) ** 2))
        cov = float(np.sum(w * (dm_ - mean_m) * (dt_ - mean_t)))
        slope = cov / var_m if var_m > 0 else 0.0
        phi = dt_ - slope * dm_
        cm, ct = gm[1] - gm[0], gt[1] - gt[0]
        box = [dm_.min() - cm, dm_.max() + cm, phi.min() - ct, phi.max() + ct]
        rng = np.random.default_rng(int(abs(m0) * 1e6) % 2**32)
        k = s.tooth_cells
        for _ in range(3):
            em, ep = np.linspace(box[0], box[1], k + 1), np.linspace(box[2], box[3], k + 1)
            sm = em[:-1, None] + rng.random((k, k)) * (em[1] - em[0])
            sp = ep[None, :-1] + rng.random((k, k)) * (ep[1] - ep[0])
            vals = np.array([[self._value(m0 + a, t0 + b + slope * a) for a, b in zip(ra, rb)]
                             for ra, rb in zip(sm, sp)])
            top = max(top, vals.max())
            w = np.exp(vals - vals.max())
            ess = w.sum() ** 2 / np.sum(w * w)
            on = np.argwhere(vals > top - s.tooth_window - 5)
            if ess >= s.tooth_min_ess or len(on) == 0:
                break
            i0, j0 = on.min(0)
            i1, j1 = on.max(0)
            tight = [em[max(i0 - 1, 0)], em[min(i1 + 2, k)], ep[max(j0 - 1, 0)], ep[min(j1 + 2, k)]]
            if tight == box:
                break
            box = tight
        rows = logsumexp(vals, axis=1) + math.log(ep[1] - ep[0]) - math.log(math.pi)
        return Tooth(m_center=m0, theta_center=t0, slope=slope, box=tuple(box),
                     rows_m=m0 + 0.5 * (em[:-1] + em[1:]), rows_value=rows, peak=float(top),
                     ess=float(ess))


@dataclasses.dataclass
class Tooth:
    """A comb tooth integrated in 2-D: rows of ln ∫ L dθ / π (each the average over its
    strip of m), on a box (m, φ) around (m_center, theta_center) with
    θ = theta_center + φ + slope (m - m_center)."""

    m_center: float
    theta_center: float
    slope: float
    box: tuple
    rows_m: np.ndarray
    rows_value: np.ndarray
    peak: float
    ess: float

    @property
    def m_range(self):
        return self.m_center + self.box[0], self.m_center + self.box[1]

    def holds(self, m, theta) -> bool:
        dm = m - self.m_center
        phi = (theta - self.theta_center - self.slope * dm + math.pi / 2) % math.pi - math.pi / 2
        return self.box[0] <= dm <= self.box[1] and self.box[2] <= phi <= self.box[3]

    def log_density(self, m) -> np.ndarray:
        m = np.asarray(m, np.float64)
        lo, hi = self.m_range
        inside = (m >= lo) & (m <= hi)
        return np.where(inside, np.interp(m, self.rows_m, self.rows_value), -np.inf)


def merge_teeth(xs, ys, teeth) -> tuple[np.ndarray, np.ndarray]:
    """The 1-D nodes with each tooth's range replaced by its rows (teeth that overlap in m
    add up)."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    covered = np.zeros(len(xs), bool)
    for tooth in teeth:
        lo, hi = tooth.m_range
        covered |= (xs >= lo) & (xs <= hi)
    new = np.unique(np.concatenate([tooth.rows_m for tooth in teeth]))
    values = logsumexp(np.stack([tooth.log_density(new) for tooth in teeth]), axis=0)
    x = np.concatenate([xs[~covered], new])
    y = np.concatenate([ys[~covered], values])
    order = np.argsort(x)
    x, y = x[order], y[order]
    keep = np.concatenate([[True], np.diff(x) > 0])
    return x[keep], y[keep]


def refine_curvature(f, x, y, *, s: Settings, width: float, max_nodes: int,
                     period: float | None = None):
    """Bisects intervals whose piecewise-linear ln p is off by more than `s.curvature_tol`
    nats (estimated from second differences of neighbouring nodes, h^2 |f''| / 8), or
    whose ends differ by more than `s.max_step` nats, within `s.window` of the maximum."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    while len(xs) < max_nodes:
        n = len(xs)
        top = ys.max()
        if period is not None:
            xe = np.concatenate([xs[-2:] - period, xs, xs[:2] + period])
            ye = np.concatenate([ys[-2:], ys, ys[:2]])
            off = 2
        else:
            xe, ye, off = xs, ys, 0
        # Second divided differences at each interior node of the extended arrays.
        h0, h1 = np.diff(xe)[:-1], np.diff(xe)[1:]
        with np.errstate(invalid="ignore"):
            second = 2 * ((ye[2:] - ye[1:-1]) / h1 - (ye[1:-1] - ye[:-2]) / h0) / (h0 + h1)
        second = np.where(np.isfinite(second), np.abs(second), np.inf)
        new = []
        intervals = n if period is not None else n - 1
        for i in range(intervals):
            j = i + off  # index of the interval's left node in the extended arrays
            x0, x1, y0, y1 = xe[j], xe[j + 1], ye[j], ye[j + 1]
            if max(y0, y1) < top - s.window or x1 - x0 <= width * 1e-3:
                continue
            curv = max(second[j - 1] if j - 1 >= 0 else 0.0,
                       second[j] if j < len(second) else 0.0)
            error = (x1 - x0) ** 2 * curv / 8
            if ((error > s.curvature_tol and x1 - x0 > width) or abs(y1 - y0) > s.max_step
                    or not np.isfinite(y0 + y1)):
                mid = 0.5 * (x0 + x1)
                new.append(mid - period if period is not None and mid >= xs[0] + period else mid)
        if not new:
            break
        new = new[: max_nodes - n]
        xs = np.concatenate([xs, new])
        ys = np.concatenate([ys, [float(f(v)) for v in new]])
        order = np.argsort(xs)
        xs, ys = xs[order], ys[order]
    return xs, ys
