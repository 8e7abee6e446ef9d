"""A small vortex recipe for fast reference-posterior tests.

Same physics as `model_ii_axion` (fixed DeepLense macro model and source, vortex, flat
priors) on a coarser 24 x 24 grid of 0.25" (6" field, 2,304 rays instead of 16,384), so a
posterior takes about a second.
"""

import pytest

from deeplense_tf.simulation import components, priors, recipes, substructure
from deeplense_tf.simulation.instruments import Instrument


def small_recipe(**vortex):
    instrument = Instrument(name="small_test", num_pix=24, pixel_scale_arcsec=0.25,
                            psf_fwhm_arcsec=0.3, background_rms=0.02,
                            exposure_time_s=priors.Fixed(2000.0), magnitude_zero_point=25.7)
    return recipes.Recipe(name="small_vortex_test", description="test", instrument=instrument,
                          deflector=components.MainDeflector(), source=components.SersicSource(),
                          substructures={"axion": substructure.AxionVortex(**vortex)},
                          targets=("log10_m_axion",))


@pytest.fixture(scope="session")
def small():
    return small_recipe()
