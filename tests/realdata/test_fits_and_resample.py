"""Reading survey-like FITS files and resampling them onto an instrument grid: the image
that comes back equals what the simulator renders there, to the resampling error."""

import math

import numpy as np
import pytest
from astropy.io import fits

from deeplense_tf.realdata import mock, resample
from deeplense_tf.realdata.fits import RealDataError, outer_background, read_cutout
from deeplense_tf.simulation import instruments, recipes
from deeplense_tf.simulation.simulator import example_rng

RA, DEC = 150.1, 2.2


def _truth(recipe, index, seed=0):
    sim = recipes.get(recipe).simulator(noise=False)
    return sim.simulate(example_rng(seed, 2, index), keep_noiseless=True).noiseless.astype(np.float64)


@pytest.mark.parametrize("scale, npx, rotation, bunit, tol", [
    # Measured rms differences: 0.0045, 0.0048, 0.0106 of the peak; exact area-weighted
    # resampling gives the same (0.0042, 0.0048, 0.012): the simulator's own discretization
    # (PSF applied per grid) differs by that much between grids.
    (0.04, 200, 30.0, "ELECTRONS/S", 0.006),   # drizzled ACS/WFC3-UVIS-like, downsampled 2x
    (0.065, 130, -60.0, "ELECTRONS", 0.007),  # WFC3-IR drizzled at 0.065", counts not rates
    (0.13, 60, 90.0, "ELECTRONS/S", 0.014),   # WFC3-IR native: coarser than the model grid
])
def test_hst_drizzled_round_trip(tmp_path, scale, npx, rotation, bunit, tol):
    """Rendered on the file's rotated grid, written in e-/s (or e-) with a sky and
    PHOTFLAM/PHOTPLAM, read back, sky subtracted, converted and resampled: equal to the
    render on the HST model grid to `tol` of the peak (rms), flux to 1%."""
    image, _ = mock.render_on_grid("model_iii_axion", 0, 4, num_pix=npx, pixel_scale_arcsec=scale,
                                   rotation_deg=rotation, offset_arcsec=(0.25, -0.15))
    path = str(tmp_path / "lens_drz.fits")
    mock.write_hst(path, image, ra=RA, dec=DEC, pixel_scale_arcsec=scale, rotation_deg=rotation,
                   offset_arcsec=(0.25, -0.15), bunit=bunit, noise=False, sky_e_s=0.8)
    instrument = instruments.get("hst")
    cutout = read_cutout(path, instrument)
    assert cutout.convention == "hst" and cutout.pixel_scale_arcsec == pytest.approx(scale)
    assert cutout.target == pytest.approx((RA, DEC))
    prepared = resample.to_instrument_grid(cutout, instrument)
    truth = _truth("model_iii_axion", 4)
    assert prepared.image.shape == truth.shape and prepared.centre_source == "header"
    assert prepared.image.sum() == pytest.approx(truth.sum(), rel=0.01)
    assert np.std(prepared.image - truth) / truth.max() < tol
    assert prepared.method == ("adaptive" if scale < 0.064 else "interp")


def test_euclid_multiband_round_trip_and_noise(tmp_path):
    """A VIS + NIR_H Euclid cut-out with MAGZERO and RMS extensions: the VIS image comes
    back in Euclid counts/s on the model grid; the noise comes from the RMS extension."""
    image, _ = mock.render_on_grid("model_ii_axion", 0, 2, num_pix=100, pixel_scale_arcsec=0.1,
                                   rotation_deg=17.0)
    path = str(tmp_path / "EUC_lens.fits")
    mock.write_euclid(path, image, ra=RA, dec=DEC, rotation_deg=17.0, noise_sigma=0.011,
                      rng=np.random.default_rng(1), bands=("VIS", "NIR_H"))
    instrument = instruments.get("euclid")
    cutout = read_cutout(path, instrument)
    assert cutout.band == "VIS" and cutout.convention == "euclid"
    assert cutout.flux_scale == pytest.approx(10 ** (0.4 * (25.72 - 30.132)))
    prepared = resample.to_instrument_grid(cutout, instrument, method="interp")
    truth = _truth("model_ii_axion", 2)
    assert prepared.image.sum() == pytest.approx(truth.sum(), rel=0.01)
    # Noise 0.011 per pixel plus the resampling error (measured: ~0.02 rms at the arcs).
    assert np.std(prepared.image - truth) < 0.035
    assert prepared.noise_source == "noise extension"
    assert np.median(prepared.noise_sigma) == pytest.approx(0.011 * 1.01, rel=0.02)
    matched = resample.match_noise(prepared, instrument, seed=0)
    assert outer_background(matched.image)[1] == pytest.approx(instrument.background_rms, rel=0.1)
    assert matched.noise_added > 0


def test_catalogue_position_wins_over_the_header(tmp_path):
    image, _ = mock.render_on_grid("model_ii_axion", 0, 1, num_pix=100, pixel_scale_arcsec=0.1,
                                   offset_arcsec=(0.5, 0.3))
    path = str(tmp_path / "lens.fits")
    mock.write_euclid(path, image, ra=RA, dec=DEC, offset_arcsec=(0.5, 0.3), target_keys=False)
    instrument = instruments.get("euclid")
    cutout = read_cutout(path, instrument)
    guessed = resample.to_instrument_grid(cutout, instrument)
    assert guessed.centre_source == "brightest"
    given = resample.to_instrument_grid(cutout, instrument, center=(RA, DEC))
    assert given.centre_source == "catalogue"
    truth = _truth("model_ii_axion", 1)
    assert np.std(given.image - truth) / truth.max() < 0.005


def test_noise_estimate_on_real_empty_sky():
    """The Hubble Deep Field's emptiest 64 x 64 patch: the outer-frame, sigma-clipped
    estimate agrees with the patch's robust spread, and a bright lens put in the middle
    does not move it."""
    from skimage import data

    sky = data.hubble_deep_field().astype(np.float64).mean(axis=2)
    patches = [(sky[y:y + 64, x:x + 64].std(), y, x) for y in range(0, sky.shape[0] - 64, 32)
               for x in range(0, sky.shape[1] - 64, 32)]
    _, y, x = min(patches)
    patch = sky[y:y + 64, x:x + 64]
    mad = 1.4826 * np.median(np.abs(patch - np.median(patch)))
    _, estimate = outer_background(patch)
    assert estimate == pytest.approx(mad, rel=0.15)
    lens = _truth("model_ii_axion", 0)
    with_lens = patch + lens / lens.max() * 50 * mad
    assert outer_background(with_lens)[1] == pytest.approx(estimate, rel=0.05)


def _write(path, data, header=None, extensions=()):
    hdus = [fits.PrimaryHDU(data, header)] + list(extensions)
    fits.HDUList(hdus).writeto(path, overwrite=True)


def _wcs_header(scale=0.1, n=100):
    h = mock._wcs_header(RA, DEC, n, scale, 0.0, (0.0, 0.0))
    h["MAGZERO"] = 30.0
    return h


def test_bad_files_get_one_clear_line(tmp_path):
    euclid, hst = instruments.get("euclid"), instruments.get("hst")
    image = np.ones((100, 100), np.float32)
    cases = {}
    no_wcs = fits.Header()
    no_wcs["MAGZERO"] = 30.0
    _write(tmp_path / "nowcs.fits", image, no_wcs)
    cases["nowcs.fits"] = "no celestial WCS"
    header = _wcs_header()
    del header["MAGZERO"]
    _write(tmp_path / "nounits.fits", image, header)
    cases["nounits.fits"] = "unknown units"
    _write(tmp_path / "cube.fits", np.ones((3, 100, 100), np.float32), _wcs_header())
    cases["cube.fits"] = "expected a 2-D image"
    h = _wcs_header()
    h["BUNIT"] = "JY/BEAM"
    h["PHOTFLAM"], h["PHOTPLAM"] = 1e-19, 15000.0
    del h["MAGZERO"]
    _write(tmp_path / "jansky.fits", image, h)
    cases["jansky.fits"] = "unknown BUNIT 'JY/BEAM'"
    (tmp_path / "truncated.fits").write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    cases["truncated.fits"] = "not a readable FITS file"
    for name, words in cases.items():
        with pytest.raises(RealDataError, match=f"{name}: .*{words}"):
            read_cutout(str(tmp_path / name), euclid)
    # The wrong band for the model, and an image too small for its field.
    band = _wcs_header(0.08, 100)
    band["FILTER"] = "F814W"
    del band["MAGZERO"]
    band["PHOTFLAM"], band["PHOTPLAM"] = 1e-19, 8000.0
    _write(tmp_path / "f814w.fits", image, band)
    with pytest.raises(RealDataError, match="band F814W, but the model's instrument 'hst'"):
        read_cutout(str(tmp_path / "f814w.fits"), hst)
    _write(tmp_path / "small.fits", np.ones((40, 40), np.float32), _wcs_header(0.1, 40))
    with pytest.raises(RealDataError, match="small.fits: the model's field .* refused rather "
                                            "than padded"):
        resample.to_instrument_grid(read_cutout(str(tmp_path / "small.fits"), euclid), euclid)


def test_masked_or_nan_pixels_in_the_field_are_refused(tmp_path):
    image, _ = mock.render_on_grid("model_iii_axion", 0, 0, num_pix=160, pixel_scale_arcsec=0.04)
    masked = np.zeros(image.shape, bool)
    masked[78:82, 78:82] = True  # the lens centre
    path = str(tmp_path / "masked.fits")
    mock.write_hst(path, image, ra=RA, dec=DEC, pixel_scale_arcsec=0.04, masked=masked)
    hst = instruments.get("hst")
    with pytest.raises(RealDataError, match=r"masked.fits: \d+ of the model's 4096 pixels touch "
                                            "masked or NaN pixels"):
        resample.to_instrument_grid(read_cutout(path, hst), hst)
    far = np.zeros(image.shape, bool)
    far[:3, :3] = True  # outside the model's 5.1" field: harmless
    mock.write_hst(path, image, ra=RA, dec=DEC, pixel_scale_arcsec=0.04, masked=far)
    assert np.isfinite(resample.to_instrument_grid(read_cutout(path, hst), hst).image).all()


def test_hst_sky_and_units_are_recorded(tmp_path):
    image, _ = mock.render_on_grid("model_iii_axion", 0, 3, num_pix=160, pixel_scale_arcsec=0.04)
    path = str(tmp_path / "lens.fits")
    written = mock.write_hst(path, image, ra=RA, dec=DEC, pixel_scale_arcsec=0.04, noise=False,
                             sky_e_s=1.5)
    cutout = read_cutout(path, instruments.get("hst"))
    assert cutout.zero_point_in == pytest.approx(written["zero_point"])
    assert cutout.sky == pytest.approx(1.5 / written["to_file"], rel=1e-3)
    assert "PHOTFLAM, PHOTPLAM" in cutout.conversion and "sigma from ERR" in cutout.conversion
    assert math.isclose(cutout.flux_scale, 1 / written["to_file"], rel_tol=1e-9)


def test_fast_paths_equal_the_library_calls(tmp_path):
    """The bilinear path equals reproject_interp, and the clipped statistics astropy's."""
    from astropy.stats import sigma_clipped_stats
    from reproject import reproject_interp

    from deeplense_tf.realdata.fits import clipped_stats

    image, _ = mock.render_on_grid("model_ii_axion", 0, 6, num_pix=100, pixel_scale_arcsec=0.1,
                                   rotation_deg=33.0)
    path = str(tmp_path / "lens.fits")
    mock.write_euclid(path, image, ra=RA, dec=DEC, rotation_deg=33.0, noise_sigma=0.011)
    cutout = read_cutout(path, instruments.get("euclid"))
    wcs_out = resample.output_wcs(RA, DEC, 64, 0.101, like=cutout.wcs)
    fast = resample._interp(cutout.data[None], cutout.wcs, wcs_out, 64)[0]
    slow = reproject_interp((cutout.data, cutout.wcs), wcs_out, shape_out=(64, 64),
                            return_footprint=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    values = np.concatenate([np.random.default_rng(0).normal(1, 2, 5000), np.full(50, 80.0)])
    np.testing.assert_allclose(clipped_stats(values),
                               sigma_clipped_stats(values, sigma=3, maxiters=10)[1:], rtol=1e-12)


def test_shipped_example_cutouts_are_what_their_command_writes(tmp_path):
    import pathlib

    shipped = pathlib.Path(mock.__file__).parent / "examples"
    written = mock.write_examples(str(tmp_path))
    assert sorted(written) == sorted(p.name for p in shipped.glob("*.fits"))
    for name in written:
        with fits.open(shipped / name) as a, fits.open(tmp_path / name) as b:
            assert [h.name for h in a] == [h.name for h in b]
            for ha, hb in zip(a, b):
                if ha.data is not None:
                    np.testing.assert_array_equal(ha.data, hb.data, err_msg=f"{name} {ha.name}")
    assert (shipped / "catalogue.csv").read_text() == (tmp_path / "catalogue.csv").read_text()
