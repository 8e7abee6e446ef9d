"""Survey-like FITS files made from the package's own simulations, at known parameters.

No real survey file can be shipped or downloaded with the package, so the tests, the
README's example and the `predict` benchmark use files written here that carry the
conventions of the real products (`deeplense_tf.realdata.fits`):

- `write_hst`: a drizzled-style HST file: `SCI` in ELECTRONS/S (or ELECTRONS), `WHT`
  (inverse variance), `ERR`, `DQ`, `PHOTFLAM`/`PHOTPLAM`/`PHOTZPT`/`EXPTIME`, sky left
  in, any pixel scale, a rotated CD-matrix WCS;
- `write_euclid`: a Euclid-style cut-out: the image with `MAGZERO`, background
  subtracted, 0.1"/px, optionally as a multi-band file (one extension per band) with
  an `RMS` extension.

Each renders the lens of one simulated example (the same parameters as example i of
the recipe, drawn from the same generator) on the file's own pixel grid and
orientation, so that reading it back and resampling it onto the instrument grid can be
compared with what the simulator renders there.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from deeplense_tf.simulation import instruments, recipes
from deeplense_tf.simulation.simulator import LensSimulator, example_rng


def render_on_grid(recipe_name: str, seed: int, index: int, *, num_pix: int,
                   pixel_scale_arcsec: float, rotation_deg: float = 0.0,
                   offset_arcsec=(0.0, 0.0), split_index: int = 2):
    """(noiseless image in counts/s at the instrument's zero point, params) of example
    `index` of the recipe, rendered on a `num_pix` grid of `pixel_scale_arcsec` whose
    pixel axes are rotated by `rotation_deg` from the sky's (east left, north up) and
    whose centre sits `offset_arcsec` (east-left x, north y) from the lens."""
    recipe = recipes.get(recipe_name)
    base = instruments.get(recipe.instrument)
    instrument = dataclasses.replace(base, name=f"{base.name}_grid", num_pix=num_pix,
                                     pixel_scale_arcsec=pixel_scale_arcsec)
    sim = LensSimulator(instrument, recipe.deflector, recipe.source, recipe.substructures,
                        supersampling=recipe.supersampling, noise=False)
    # Sky-aligned simulation coordinates of the file's sub-pixels: x_sky = R(phi) x_file.
    x, y = sim.ray_grid
    phi = math.radians(rotation_deg)
    c, s = math.cos(phi), math.sin(phi)
    sim._x = c * x - s * y + offset_arcsec[0]
    sim._y = s * x + c * y + offset_arcsec[1]
    lens = sim.simulate(example_rng(seed, split_index, index), keep_noiseless=True)
    return lens.noiseless.astype(np.float64), lens.params


def _wcs_header(ra, dec, num_pix, pixel_scale_arcsec, rotation_deg, offset_arcsec):
    """Header cards of a TAN CD-matrix WCS whose pixel axes are rotated by rotation_deg
    from east-left / north-up, with the lens `offset_arcsec` from the image centre."""
    from astropy.io import fits

    phi = math.radians(rotation_deg)
    scale = pixel_scale_arcsec / 3600.0
    cd = scale * np.array([[-math.cos(phi), math.sin(phi)], [math.sin(phi), math.cos(phi)]])
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CUNIT1"], header["CUNIT2"] = "deg", "deg"
    # The image centre lies offset (x east-left, y north) from the lens at (ra, dec).
    centre_ra = ra - offset_arcsec[0] / 3600.0 / math.cos(math.radians(dec))
    centre_dec = dec + offset_arcsec[1] / 3600.0
    header["CRVAL1"], header["CRVAL2"] = centre_ra, centre_dec
    header["CRPIX1"] = header["CRPIX2"] = (num_pix + 1) / 2
    header["CD1_1"], header["CD1_2"] = cd[0]
    header["CD2_1"], header["CD2_2"] = cd[1]
    return header


def hst_zero_point(photflam: float, photplam: float) -> float:
    """AB zero point (1 e-/s) of an HST image from its PHOTFLAM and PHOTPLAM."""
    return -2.5 * math.log10(photflam) - 5 * math.log10(photplam) - 2.408


def write_hst(path: str, image_cps, *, ra: float, dec: float, pixel_scale_arcsec: float,
              rotation_deg: float = 0.0, offset_arcsec=(0.0, 0.0), photflam: float = 1.9275e-20,
              photplam: float = 15369.176, exptime: float = 2400.0, sky_e_s: float = 0.8,
              read_noise_e: float = 20.0, bunit: str = "ELECTRONS/S", filter_name: str = "F160W",
              rng=None, noise: bool = True, target_keys: bool = True, masked=None) -> dict:
    """Writes an HST drizzled-style file of a noiseless image in counts/s at the HST
    instrument's zero point; returns what was written (zero point, sky, noise sigma).

    Noise: Poisson of (source + sky) electrons over `exptime` plus read noise, per pixel;
    `WHT` = 1 / sigma^2 and `ERR` = sigma in the file's units. `masked`: a boolean array of
    pixels flagged in `DQ` (and set to NaN in `SCI`)."""
    from astropy.io import fits

    rng = rng if rng is not None else np.random.default_rng(0)
    zp_file = hst_zero_point(photflam, photplam)
    zp_inst = instruments.get("hst").magnitude_zero_point
    to_file = 10 ** (0.4 * (zp_file - zp_inst))  # instrument counts/s -> file e-/s
    signal = np.asarray(image_cps, np.float64) * to_file + sky_e_s
    variance = (np.clip(signal, 0, None) * exptime + read_noise_e**2) / exptime**2
    sigma = np.sqrt(variance)
    data = signal + (rng.normal(0.0, 1.0, signal.shape) * sigma if noise else 0.0)
    factor = exptime if bunit.upper() == "ELECTRONS" else 1.0
    header = _wcs_header(ra, dec, data.shape[0], pixel_scale_arcsec, rotation_deg, offset_arcsec)
    header["BUNIT"] = bunit
    header["PHOTFLAM"], header["PHOTPLAM"], header["PHOTZPT"] = photflam, photplam, -21.10
    header["EXPTIME"] = exptime
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"], primary.header["INSTRUME"] = "HST", "WFC3"
    primary.header["FILTER"] = filter_name
    primary.header["EXPTIME"] = exptime
    if target_keys:
        primary.header["RA_TARG"], primary.header["DEC_TARG"] = ra, dec
    dq = np.zeros(data.shape, np.int16)
    sci = (data * factor).astype(np.float32)
    if masked is not None:
        dq[masked] = 4
        sci[masked] = np.nan
    hdus = [primary,
            fits.ImageHDU(sci, header, name="SCI"),
            fits.ImageHDU((1.0 / (sigma * factor) ** 2).astype(np.float32), header, name="WHT"),
            fits.ImageHDU((sigma * factor).astype(np.float32), header, name="ERR"),
            fits.ImageHDU(dq, header, name="DQ")]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return {"zero_point": zp_file, "sky_e_s": sky_e_s, "sigma_e_s": sigma,
            "to_file": to_file}


def write_euclid(path: str, image_cps, *, ra: float, dec: float,
                 pixel_scale_arcsec: float = 0.1, rotation_deg: float = 0.0,
                 offset_arcsec=(0.0, 0.0), magzero: float = 30.132, noise_sigma: float = 0.0,
                 rng=None, bands=("VIS",), rms_extension: bool = True,
                 target_keys: bool = True) -> dict:
    """Writes a Euclid-style cut-out of a noiseless image in counts/s at the Euclid
    instrument's zero point: background subtracted, `MAGZERO`, one image extension per
    band (VIS holds the lens; other bands get the same image, as a multi-band cut-out
    would), Gaussian noise of `noise_sigma` (instrument units) and an `RMS` extension."""
    from astropy.io import fits

    rng = rng if rng is not None else np.random.default_rng(0)
    zp_inst = instruments.get("euclid").magnitude_zero_point
    to_file = 10 ** (0.4 * (magzero - zp_inst))
    data = np.asarray(image_cps, np.float64)
    if noise_sigma > 0:
        data = data + rng.normal(0.0, noise_sigma, data.shape)
    header = _wcs_header(ra, dec, data.shape[0], pixel_scale_arcsec, rotation_deg, offset_arcsec)
    header["MAGZERO"] = magzero
    header["BUNIT"] = "ADU"
    primary = fits.PrimaryHDU()
    primary.header["TELESCOP"] = "EUCLID"
    if target_keys:
        primary.header["RA_OBJ"], primary.header["DEC_OBJ"] = ra, dec
    hdus = [primary]
    for band in bands:
        band_header = header.copy()
        band_header["FILTER"] = band
        hdus.append(fits.ImageHDU((data * to_file).astype(np.float32), band_header, name=band))
        if rms_extension and noise_sigma > 0:
            hdus.append(fits.ImageHDU(np.full(data.shape, noise_sigma * to_file, np.float32),
                                      band_header, name=f"{band}_RMS" if len(bands) > 1 else "RMS"))
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return {"zero_point": magzero, "to_file": to_file}


def write_examples(output_dir: str) -> list[str]:
    """The example cut-outs shipped with the package (deterministic): four Euclid VIS
    lenses of `model_ii_axion` test examples 0-3 (one multi-band, one with a lens galaxy
    whose light the models never saw), one cut-out too small for the field, one HST
    WFC3/F160W drizzled file, and `catalogue.csv` with positions and the true masses."""
    import os

    from deeplense_tf.simulation import perturbations

    os.makedirs(output_dir, exist_ok=True)
    euclid = instruments.get("euclid")
    rows = ["file,name,ra,dec,log10_m_axion"]
    written = []
    for i in range(4):
        rotation = 35.0 * i
        image, params = render_on_grid("model_ii_axion", 0, i, num_pix=100,
                                       pixel_scale_arcsec=0.1, rotation_deg=rotation)
        if i == 3:
            grid = dataclasses.replace(euclid, num_pix=100, pixel_scale_arcsec=0.1)
            image = image + perturbations.lens_light(grid, params, np.random.default_rng(3),
                                                     magnitude=19.0)
        ra, dec = 150.1 + 0.02 * i, 2.2 - 0.01 * i
        name = f"EUC_example_{i}.fits"
        write_euclid(os.path.join(output_dir, name), image, ra=ra, dec=dec, rotation_deg=rotation,
                     noise_sigma=0.011, rng=np.random.default_rng(100 + i),
                     bands=("VIS", "NIR_H") if i == 1 else ("VIS",))
        rows.append(f"{name},J{i:03d}{'_lens_light' if i == 3 else ''},{ra:.6f},{dec:.6f},"
                    f"{params['log10_m_axion']:.5f}")
        written.append(name)
    small, _ = render_on_grid("model_ii_axion", 0, 4, num_pix=48, pixel_scale_arcsec=0.1)
    write_euclid(os.path.join(output_dir, "EUC_example_too_small.fits"), small, ra=150.2, dec=2.1,
                 noise_sigma=0.011, rng=np.random.default_rng(104))
    rows.append("EUC_example_too_small.fits,J004_small,150.200000,2.100000,")
    written.append("EUC_example_too_small.fits")
    hst_image, hst_params = render_on_grid("model_iii_axion", 0, 5, num_pix=100,
                                           pixel_scale_arcsec=0.065, rotation_deg=-20.0)
    write_hst(os.path.join(output_dir, "HST_example_drz.fits"), hst_image, ra=210.3, dec=-1.1,
              pixel_scale_arcsec=0.065, rotation_deg=-20.0, rng=np.random.default_rng(105))
    written.append("HST_example_drz.fits")
    with open(os.path.join(output_dir, "catalogue.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(
            "# Example cut-outs\n\n"
            "Survey-like FITS files made from the package's simulations by `python -m "
            "deeplense_tf.realdata.mock --output_dir=<this folder>` (no real survey file can "
            "be shipped): `EUC_example_0..3.fits` are Euclid VIS cut-outs (0.1\"/px, MAGZERO, "
            "RMS extension, rotated WCS) of `model_ii_axion` test lenses 0-3, the second with a "
            "NIR_H extension too, the fourth with a lens galaxy's light added (which the models "
            "never saw: the OOD flag should catch it); `EUC_example_too_small.fits` is smaller "
            "than a model's 6.46\" field and is refused; `HST_example_drz.fits` is a "
            "WFC3/F160W drizzled file (0.065\"/px, SCI/WHT/ERR/DQ in e-/s, sky left in) of "
            f"`model_iii_axion` test lens 5 (log10 m_a = {hst_params['log10_m_axion']:.3f}). "
            "`catalogue.csv` gives names, positions and the true log10 m_a of the Euclid "
            "lenses.\n")
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Writes the example cut-outs.")
    parser.add_argument("--output_dir", required=True)
    print("\n".join(write_examples(parser.parse_args().output_dir)))
