"""Folders of survey-like cut-outs made from simulations (`deeplense_tf.realdata.mock`)."""

import numpy as np
import pytest

from deeplense_tf.realdata import mock

RA0, DEC0 = 150.0, 2.0


@pytest.fixture(scope="session")
def euclid_cutouts(tmp_path_factory):
    """CUTOUTS/: four good Euclid cut-outs (0.1"/px, rotated, with noise and RMS), one too
    small for the field, one truncated file, and catalogue.csv (positions, the true
    log10_m_axion of three, splits)."""
    folder = tmp_path_factory.mktemp("cutouts")
    rows = ["file,name,ra,dec,log10_m_axion,split"]
    for i in range(4):
        image, params = mock.render_on_grid("model_ii_axion", 0, i, num_pix=100,
                                            pixel_scale_arcsec=0.1, rotation_deg=25.0 * i)
        ra = RA0 + 0.01 * i
        mock.write_euclid(str(folder / f"lens{i}.fits"), image, ra=ra, dec=DEC0,
                          rotation_deg=25.0 * i, noise_sigma=0.011, rng=np.random.default_rng(i))
        label = params["log10_m_axion"] if i < 3 else ""
        rows.append(f"lens{i}.fits,J{i:04d},{ra},{DEC0},{label},{'train' if i < 2 else 'test'}")
    image, _ = mock.render_on_grid("model_ii_axion", 0, 9, num_pix=40, pixel_scale_arcsec=0.1)
    mock.write_euclid(str(folder / "small.fits"), image, ra=RA0, dec=DEC0, noise_sigma=0.011)
    (folder / "broken.fits").write_bytes((folder / "lens0.fits").read_bytes()[:3000])
    (folder / "catalogue.csv").write_text("\n".join(rows) + "\n")
    return folder
