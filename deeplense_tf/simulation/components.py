"""Main deflector (SIE + external shear) and source (elliptical Sersic) models.

Both are priors over lenstronomy keyword arguments. A model with only `Fixed`
priors reproduces DeepLense's fixed macro model; the randomized presets follow the
ranges suggested in PHYSICS.md of the project design notes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deeplense_tf.simulation import priors
from deeplense_tf.simulation.priors import Fixed, Normal, Uniform


def _named(obj):
    """Names every Prior field after the field, for error messages."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        if isinstance(value, (priors.Prior, int, float)) and not isinstance(value, bool):
            object.__setattr__(obj, field.name, priors.as_prior(value, f"{type(obj).__name__}.{field.name}"))


@dataclasses.dataclass(frozen=True)
class MainDeflector:
    """Singular isothermal ellipsoid plus external shear (lenstronomy 'SIE', 'SHEAR')."""

    theta_e: priors.Prior = Fixed(1.28)
    e1: priors.Prior = Fixed(0.1)
    e2: priors.Prior = Fixed(0.0)
    gamma1: priors.Prior = Fixed(0.05)
    gamma2: priors.Prior = Fixed(0.0)
    center_x: priors.Prior = Fixed(0.0)
    center_y: priors.Prior = Fixed(0.0)

    def __post_init__(self):
        _named(self)
        self.theta_e.require_positive()

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """Draws parameters; keys are the stored parameter names."""
        return {
            "theta_e": self.theta_e.sample(rng),
            "lens_e1": self.e1.sample(rng),
            "lens_e2": self.e2.sample(rng),
            "shear_gamma1": self.gamma1.sample(rng),
            "shear_gamma2": self.gamma2.sample(rng),
            "lens_center_x": self.center_x.sample(rng),
            "lens_center_y": self.center_y.sample(rng),
        }

    @staticmethod
    def lenstronomy_kwargs(params: dict[str, float]) -> list[dict[str, float]]:
        return [
            {"theta_E": params["theta_e"], "e1": params["lens_e1"], "e2": params["lens_e2"],
             "center_x": params["lens_center_x"], "center_y": params["lens_center_y"]},
            {"gamma1": params["shear_gamma1"], "gamma2": params["shear_gamma2"], "ra_0": 0.0,
             "dec_0": 0.0},
        ]


def randomized_deflector() -> MainDeflector:
    """Randomized macro model (PHYSICS.md priors); removes the ring-radius shortcut."""
    return MainDeflector(
        theta_e=Uniform(1.0, 1.6), e1=Normal(0.0, 0.1, clip=0.3), e2=Normal(0.0, 0.1, clip=0.3),
        gamma1=Normal(0.0, 0.04, clip=0.15), gamma2=Normal(0.0, 0.04, clip=0.15),
        center_x=Normal(0.0, 0.02, clip=0.1), center_y=Normal(0.0, 0.02, clip=0.1))


@dataclasses.dataclass(frozen=True)
class SersicSource:
    """Elliptical Sersic source (lenstronomy 'SERSIC_ELLIPSE').

    Brightness is an apparent `magnitude` (converted with the instrument's zero point)
    or, when `magnitude` is None, a lenstronomy `amplitude` (DeepLense Model I).
    """

    magnitude: priors.Prior | None = Fixed(20.0)
    amplitude: priors.Prior | None = None
    r_sersic: priors.Prior = Fixed(0.25)
    n_sersic: priors.Prior = Fixed(1.0)
    e1: priors.Prior = Fixed(-0.1)
    e2: priors.Prior = Fixed(0.1)
    center_x: priors.Prior = Uniform(-0.35, 0.35)
    center_y: priors.Prior = Uniform(-0.35, 0.35)

    def __post_init__(self):
        _named(self)
        if (self.magnitude is None) == (self.amplitude is None):
            raise ValueError("SersicSource: give exactly one of magnitude or amplitude")
        if self.amplitude is not None:
            self.amplitude.require_positive()
        self.r_sersic.require_positive()
        self.n_sersic.require_positive()

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        brightness = self.magnitude if self.magnitude is not None else self.amplitude
        return {
            ("source_magnitude" if self.magnitude is not None else "source_amplitude"):
                brightness.sample(rng),
            "source_r_sersic": self.r_sersic.sample(rng),
            "source_n_sersic": self.n_sersic.sample(rng),
            "source_e1": self.e1.sample(rng),
            "source_e2": self.e2.sample(rng),
            "source_center_x": self.center_x.sample(rng),
            "source_center_y": self.center_y.sample(rng),
        }

    def param_names(self) -> tuple[str, ...]:
        return tuple(self.sample(np.random.default_rng(0)))


def randomized_source() -> SersicSource:
    return SersicSource(
        magnitude=Uniform(20.0, 22.0), r_sersic=Uniform(0.15, 0.4), n_sersic=Uniform(0.8, 2.5),
        e1=Normal(0.0, 0.15, clip=0.4), e2=Normal(0.0, 0.15, clip=0.4),
        center_x=Uniform(-0.3, 0.3), center_y=Uniform(-0.3, 0.3))
