"""Named simulation recipes: the physics behind each `deeplense_lensing` config.

A recipe fixes the instrument, the macro model and source priors, the substructure
classes and the regression targets. The TFDS builder adds split sizes and seeds.

DeepLense recipes (`model_i_axion`, `model_ii_axion`, `model_iii_axion`) keep their
fixed macro model (theta_E = 1.28", e1 = 0.1, gamma1 = 0.05; source R = 0.25", n = 1,
e = (-0.1, 0.1), centre U(-0.35, 0.35)") and vortex geometry, and fix their known
defects: noise is applied once (Model I added it twice, Models II/III not at all),
rays are supersampled 2x (DeepLense used 1x), subhalo Einstein radii use
angular-diameter distances, and every image is reproducible from its seed.

Realistic recipes (`*_lens_light`, `*_psf`, `*_correlated_noise`, `*_real_sources`,
`*_realistic`) are `euclid_axion` (or `hst_axion`) with `simulator.Realism` options: one
effect each, or all of them. Their macro model, source and substructure draws equal
those of the plain recipe for the same generator. Recipes with lens light also make the
source fainter by SOURCE_MAGNITUDE_SHIFT (see there).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

from deeplense_tf.simulation import components, instruments, substructure
from deeplense_tf.simulation.components import MainDeflector, SersicSource
from deeplense_tf.simulation.lens_light import LensLightModel
from deeplense_tf.simulation.priors import Fixed, Uniform
from deeplense_tf.simulation.psf import PSFVariation
from deeplense_tf.simulation import simulator as simulator_lib
from deeplense_tf.simulation.simulator import DrizzleNoise, LensSimulator, Realism

# Magnitudes added to the randomized source (U(20, 22) -> U(24.5, 26.5)) where the lens
# light is on: with today's sources the lens galaxy holds only ~0.3x the flux of the
# arcs, while in real galaxy-scale lenses (SLACS, SL2S, Euclid's first lenses) it
# outshines them 10-100x. With the shift the ratio of total fluxes (noiseless lens light
# over lensed source, in the 64 px cut-out) has median 17, 16-84 % range 9-32, over 60
# euclid_axion_lens_light draws (0.27 without it).
SOURCE_MAGNITUDE_SHIFT = 4.5

# The brighter-arc variant (euclid_axion_realistic_bright): sources 2 mag fainter than
# the parametric recipe's, 2.5 mag brighter than the realistic one's. The information
# study (simulation/information.py; README, The domain shift) keeps a median Delta chi^2
# of 1,070 below log10 m_a = -23.6 and 103 in [-23.6, -23.2), against 14 and 1.3 at the
# 4.5 mag shift (200 images each).
BRIGHT_SOURCE_SHIFT = 2.0

# Background noise correlation (our choice): Euclid VIS stacks resampled onto the native
# 0.1" grid (pixfrac 1, scale 1: lag-1 correlation 0.25); HST WFC3/IR drizzled from
# 0.13" to 0.08" with pixfrac 0.8 (lag-1 correlation 0.37). See docs/realism.md.
DRIZZLE = {"euclid": DrizzleNoise(pixfrac=1.0, scale_ratio=1.0),
           "hst": DrizzleNoise(pixfrac=0.8, scale_ratio=0.08 / 0.13)}


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
    realism: Realism | None = None

    @property
    def param_names(self) -> tuple[str, ...]:
        return simulator_lib.param_names(self.deflector, self.source, self.substructures.values(),
                                         self.realism)

    @property
    def num_pix(self) -> int:
        return instruments.get(self.instrument).num_pix

    def simulator(self, noise: bool = True, supersampling: int | None = None) -> LensSimulator:
        return LensSimulator(self.instrument, self.deflector, self.source, self.substructures,
                             supersampling=self.supersampling if supersampling is None else supersampling,
                             noise=noise, realism=self.realism)


def _deeplense(name, instrument, source, description):
    return Recipe(
        name=name, description=description, instrument=instrument, deflector=MainDeflector(),
        source=source, substructures={"axion": substructure.AxionVortex()},
        targets=("log10_m_axion",))


def _randomized(name, instrument, subs, targets, description):
    return Recipe(name=name, description=description, instrument=instrument,
                  deflector=components.randomized_deflector(),
                  source=components.randomized_source(), substructures=subs, targets=targets)


def _realistic(base: Recipe, suffix: str, description: str, *, lens_light=False, psf=False,
               correlated_noise=False, real_sources=False,
               magnitude_shift: float | None = None) -> Recipe:
    """`base` with the realism options named by the flags; with lens light the source is
    `magnitude_shift` (default SOURCE_MAGNITUDE_SHIFT) magnitudes fainter."""
    if magnitude_shift is None:
        magnitude_shift = SOURCE_MAGNITUDE_SHIFT if lens_light else 0.0
    realism = Realism(
        lens_light=LensLightModel.for_instrument(base.instrument) if lens_light else None,
        psf_variation=PSFVariation() if psf else None, optics_psf=psf,
        correlated_noise=DRIZZLE[base.instrument] if correlated_noise else None,
        real_sources=real_sources,
        source_magnitude_shift=magnitude_shift)
    return dataclasses.replace(base, name=f"{base.name}_{suffix}", description=description,
                               realism=realism)


def _realistic_recipes(by_name: dict[str, Recipe]) -> list[Recipe]:
    euclid, hst = by_name["euclid_axion"], by_name["hst_axion"]
    shift = f"source magnitude U({20 + SOURCE_MAGNITUDE_SHIFT:g}, {22 + SOURCE_MAGNITUDE_SHIFT:g})"
    return [
        _realistic(euclid, "lens_light",
                   "euclid_axion plus the lens galaxy's light (Sersic n 3-5 aligned with the "
                   f"SIE, magnitude from Faber-Jackson) and a fainter source ({shift}), so the "
                   "lens outshines the arcs as in real lenses.", lens_light=True),
        _realistic(euclid, "psf",
                   "euclid_axion with the Euclid VIS diffraction PSF (1.2 m annular pupil, "
                   "550-900 nm) broadened to 0.16\" FWHM, jittered per image (FWHM 5%, "
                   "ellipticity 0.03).", psf=True),
        _realistic(euclid, "correlated_noise",
                   "euclid_axion with background noise correlated as in a resampled stack "
                   "(drizzle pixfrac 1, same scale; lag-1 correlation 0.25).",
                   correlated_noise=True),
        _realistic(euclid, "real_sources",
                   "euclid_axion with Hubble Deep Field galaxies as sources (INTERPOL; "
                   "disjoint galaxies in train, validation and test) at the Sersic prior's "
                   "magnitude, size and position, random angle.", real_sources=True),
        _realistic(euclid, "realistic",
                   "euclid_axion with every realism effect: lens light and a fainter source "
                   f"({shift}), diffraction PSF with per-image jitter, correlated noise, Hubble "
                   "Deep Field sources.",
                   lens_light=True, psf=True, correlated_noise=True, real_sources=True),
        _realistic(euclid, "realistic_bright",
                   "euclid_axion_realistic with sources 2.5 mag brighter (source magnitude "
                   f"U({20 + BRIGHT_SOURCE_SHIFT:g}, {22 + BRIGHT_SOURCE_SHIFT:g}), arcs like "
                   "the brighter half of known lenses; the lens outshines them ~1.7x in "
                   "total flux instead of ~17x), where the vortex stays visible for the "
                   "lightest axions.",
                   lens_light=True, psf=True, correlated_noise=True, real_sources=True,
                   magnitude_shift=BRIGHT_SOURCE_SHIFT),
        _realistic(hst, "realistic",
                   "hst_axion with every realism effect: lens light and a fainter source "
                   f"({shift}), WFC3/F160W diffraction PSF with per-image jitter, drizzle-"
                   "correlated noise (pixfrac 0.8, 0.13\" to 0.08\"), Hubble Deep Field sources.",
                   lens_light=True, psf=True, correlated_noise=True, real_sources=True),
    ]


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
        _randomized("euclid_cdm_population", "euclid",
                    {"cdm": substructure.CDMSubhalos(profile="point_mass",
                                                     slope=Uniform(-2.2, -1.6))},
                    ("log10_sigma_sub", "shmf_slope"),
                    "As euclid_cdm_point_mass with the subhalo mass-function slope drawn too, "
                    "U(-2.2, -1.6) about CDM's -1.9: targets log10 Sigma_sub and the slope, "
                    "jointly (a full-covariance head)."),
        _randomized("hst_cdm_population", "hst_150",
                    {"cdm": substructure.CDMSubhalos(slope=Uniform(-2.2, -1.6))},
                    ("log10_sigma_sub", "shmf_slope"),
                    "As hst_cdm (truncated-NFW subhalos, 150 px of 0.04\") with the mass-function "
                    "slope drawn too, U(-2.2, -1.6): targets log10 Sigma_sub and the slope."),
        _randomized("hst_cdm_population_point_mass", "hst_150",
                    {"cdm": substructure.CDMSubhalos(profile="point_mass",
                                                     slope=Uniform(-2.2, -1.6))},
                    ("log10_sigma_sub", "shmf_slope"),
                    "As hst_cdm_population with the subhalos as point masses: the same draws "
                    "with the stronger signal of euclid_cdm_population, to train a backbone at "
                    "this pixel scale before the truncated-NFW set."),
        _randomized("euclid_wdm", "euclid", {"wdm": substructure.WDMSubhalos()},
                    ("log10_m_hm",),
                    "Euclid VIS 64 px, randomized macro model and source, warm-dark-matter "
                    "truncated-NFW subhalos (euclid_cdm's population at Sigma_sub = 0.1 kpc^-2, "
                    "suppressed below the half-mode mass: Lovell et al. 2020 mass function, Bose "
                    "et al. 2016 concentrations), target log10 m_hm/Msun ~ U(7, 10.5)."),
        _randomized("euclid_wdm_point_mass", "euclid",
                    {"wdm": substructure.WDMSubhalos(profile="point_mass")}, ("log10_m_hm",),
                    "As euclid_wdm with the subhalos as point masses (the limit in which "
                    "euclid_cdm_point_mass's Sigma_sub is learnable), target log10 m_hm/Msun ~ "
                    "U(7, 10.5)."),
        _randomized("hst_wdm", "hst_150", {"wdm": substructure.WDMSubhalos()},
                    ("log10_m_hm",),
                    "HST-like 150 px of 0.04\", randomized macro model and source, warm-dark-"
                    "matter truncated-NFW subhalos as euclid_wdm, target log10 m_hm/Msun ~ "
                    "U(7, 10.5)."),
        _randomized("euclid_sidm", "euclid", {"sidm": substructure.SIDMSubhalos()},
                    ("log10_sigma_over_m",),
                    "Euclid VIS 64 px, randomized macro model and source, self-interacting dark "
                    "matter: euclid_cdm's subhalos at Sigma_sub = 0.1 kpc^-2 with cores and "
                    "collapse after Essig et al. 2019 and Yang et al. 2023, target log10 "
                    "sigma/m / (cm^2/g) ~ U(0, 3)."),
        _randomized("hst_sidm", "hst_150", {"sidm": substructure.SIDMSubhalos()},
                    ("log10_sigma_over_m",),
                    "HST-like 150 px of 0.04\", randomized macro model and source, self-"
                    "interacting dark matter as euclid_sidm, target log10 sigma/m ~ U(0, 3)."),
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
    by_name = {r.name: r for r in recipes}
    return by_name | {r.name: r for r in _realistic_recipes(by_name)}


RECIPES: dict[str, Recipe] = _build()


def get(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"recipe: unknown name {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]
