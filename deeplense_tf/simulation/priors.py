"""Prior distributions for simulation parameters, declared as data.

Every prior validates itself when constructed, so an impossible configuration
(an empty range, a negative width) fails at once with a message that names the
parameter, instead of producing a data set of NaNs hours later.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


class Prior:
    """A one-dimensional distribution with a name for error messages."""

    name: str = "parameter"

    def sample(self, rng: np.random.Generator) -> float:
        raise NotImplementedError

    @property
    def support(self) -> tuple[float, float]:
        """Smallest interval that holds every draw."""
        raise NotImplementedError

    def named(self, name: str) -> "Prior":
        return dataclasses.replace(self, name=name)

    def require_positive(self) -> "Prior":
        low, _ = self.support
        if not low > 0:
            raise ValueError(f"{self.name}: must be positive, but the prior {self} allows {low}")
        return self


@dataclasses.dataclass(frozen=True)
class Fixed(Prior):
    value: float
    name: str = "parameter"

    def __post_init__(self):
        if not math.isfinite(self.value):
            raise ValueError(f"{self.name}: fixed value must be finite, got {self.value}")

    def sample(self, rng):
        return float(self.value)

    @property
    def support(self):
        return (float(self.value), float(self.value))


@dataclasses.dataclass(frozen=True)
class Uniform(Prior):
    low: float
    high: float
    name: str = "parameter"

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.high > self.low):
            raise ValueError(
                f"{self.name}: Uniform range must be finite and non-empty (low < high), "
                f"got [{self.low}, {self.high}]")

    def sample(self, rng):
        return float(rng.uniform(self.low, self.high))

    @property
    def support(self):
        return (float(self.low), float(self.high))


@dataclasses.dataclass(frozen=True)
class Normal(Prior):
    """Normal distribution clipped to ``mean ± clip`` (clip=None: no clipping)."""

    mean: float
    sigma: float
    clip: float | None = None
    name: str = "parameter"

    def __post_init__(self):
        if not (math.isfinite(self.mean) and self.sigma > 0 and math.isfinite(self.sigma)):
            raise ValueError(f"{self.name}: Normal needs a finite mean and sigma > 0, got "
                             f"mean={self.mean}, sigma={self.sigma}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"{self.name}: clip must be positive, got {self.clip}")

    def sample(self, rng):
        value = float(rng.normal(self.mean, self.sigma))
        if self.clip is not None:
            value = float(np.clip(value, self.mean - self.clip, self.mean + self.clip))
        return value

    @property
    def support(self):
        if self.clip is None:
            return (-math.inf, math.inf)
        return (self.mean - self.clip, self.mean + self.clip)


def as_prior(value, name: str) -> Prior:
    """Accepts a Prior or a plain number (a fixed value) and names it."""
    if isinstance(value, Prior):
        return value.named(name)
    if isinstance(value, (int, float)):
        return Fixed(float(value), name=name)
    raise TypeError(f"{name}: expected a number or a Prior, got {type(value).__name__}")
