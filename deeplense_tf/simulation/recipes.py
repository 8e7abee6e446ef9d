"""Named simulation recipes: the physics behind each `deeplense_lensing` config.

A recipe fixes the instrument, the macro model and source priors, the substructure
classes and the regression targets. The TFDS builder adds split sizes and seeds.

DeepLense recipes (`model_i_axion`, `model_ii_axion`, `model_iii_axion`) keep their
fixed macro model (theta_E = 1.28", e1 = 0.1, gamma1 = 0.05; source R = 0.25", n = 1,
e = (-0.1, 0.1), centre U(-0.35, 0.35)") and vortex geometry, and fix their known
defects: noise is applied once (Model I added it twice, Models II/III not at all),
rays are supersampled 2x (DeepLense used 1x), subhalo Einstein radii use
angular-diameter distances, and every image is reproducible from its seed.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from deeplense_tf.simulation import components, instruments, substructure
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.priors import Fixed
from deeplense_tf.simulation import simulator as simulator_lib
from deeplense_tf.simulation.simulator import LensSimulator


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    instrument: str
    deflector: MainDeflector
    source: SersicSource
    substructures: Mapping[str, substructure.Substructure]
    targets: tuple[str, ...]
    supersampling: int = 2

    @property
    def param_names(self) -> tuple[str, ...]:
        return simulator_lib.param_names(self.deflector, self.source, self.substructures.values())

    @property
    def num_pix(self) -> int:
        return instruments.get(self.instrument).num_pix

    def simulator(self, noise: bool = True, supersampling: int | None = None) -> LensSimulator:
        return LensSimulator(self.instrument, self.deflector, self.source, self.substructures,
                             supersampling=self.supersampling if supersampling is None else supersampling,
                             noise=noise)


def _deeplense(name, instrument, source, description):
    return Recipe(
        name=name, description=description, instrument=instrument, deflector=MainDeflector(),
        source=source, substructures={"axion": substructure.AxionVortex()},
        targets=("log10_m_axion",))


def _randomized(name, instrument, subs, targets, description):
    return Recipe(name=name, description=description, instrument=instrument,
                  deflector=components.randomized_deflector(),
                  source=components.randomized_source(), substructures=subs, targets=targets)


def _build() -> dict[str, Recipe]:
    axion = {"axion": substructure.AxionVortex()}
    recipes = [
        _deeplense("model_i_axion", "model_i", SersicSource(magnitude=None, amplitude=Fixed(20.0)),
                   "DeepLense Model I recipe: 150 px of 0.05\", Gaussian PSF FWHM 0.087\", fixed "
                   "macro model, axion vortex, target log10 m_a ~ U(-24, -22)."),
        _deeplense("model_ii_axion", "euclid", SersicSource(),
                   "DeepLense Model II recipe: Euclid VIS 64 px, fixed macro model, source "
                   "magnitude 20, axion vortex, target log10 m_a ~ U(-24, -22)."),
        _deeplense("model_iii_axion", "hst", SersicSource(),
                   "DeepLense Model III recipe: HST WFC3/F160W 64 px, fixed macro model, source "
                   "magnitude 20, axion vortex, target log10 m_a ~ U(-24, -22)."),
        _randomized("euclid_axion", "euclid", axion, ("log10_m_axion",),
                    "Euclid VIS 64 px, randomized SIE + shear and Sersic source, axion vortex, "
                    "target log10 m_a ~ U(-24, -22)."),
        _randomized("hst_axion", "hst", axion, ("log10_m_axion",),
                    "HST WFC3/F160W 64 px, randomized macro model and source, axion vortex, "
                    "target log10 m_a ~ U(-24, -22)."),
        _randomized("euclid_cdm", "euclid", {"cdm": substructure.CDMSubhalos()},
                    ("log10_sigma_sub",),
                    "Euclid VIS 64 px, randomized macro model and source, truncated-NFW subhalo "
                    "population, target log10 Sigma_sub/kpc^-2 ~ U(-2.5, -0.5)."),
        _randomized("euclid_cdm_point_mass", "euclid",
                    {"cdm": substructure.CDMSubhalos(profile="point_mass")}, ("log10_sigma_sub",),
                    "As euclid_cdm with the subhalos as point masses (DeepLense's simplification,"
                    " a 5-10x stronger signal)."),
        _randomized("hst_cdm", "hst_150", {"cdm": substructure.CDMSubhalos()},
                    ("log10_sigma_sub",),
                    "HST-like 150 px of 0.04\", randomized macro model and source, truncated-NFW "
                    "subhalo population, target log10 Sigma_sub/kpc^-2 ~ U(-2.5, -0.5)."),
        _randomized("euclid_fdm", "euclid", {"fdm": substructure.FDMGranules()},
                    ("log10_m_axion",),
                    "Euclid VIS 64 px, randomized macro model and source, fuzzy-dark-matter "
                    "granules (rms convergence 0.03), target log10 m_a ~ U(-24, -22)."),
        _randomized("euclid_classes", "euclid",
                    {"no_sub": substructure.NoSubstructure(), "cdm": substructure.DeepLenseCDM(),
                     "axion": substructure.AxionVortex()}, (),
                    "Euclid VIS 64 px, randomized macro model and source, three balanced classes:"
                    " no substructure, DeepLense CDM point masses, axion vortex."),
    ]
    return {r.name: r for r in recipes}


RECIPES: dict[str, Recipe] = _build()


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown name {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]
