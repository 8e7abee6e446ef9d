"""Real-galaxy sources (Hubble Deep Field stamps, user catalogues) and real sky."""

import collections

import numpy as np
import pytest

pytest.importorskip("skimage")

from deeplense_tf.simulation import real_sources  # noqa: E402
from deeplense_tf.simulation.real_sources import (  # noqa: E402
    StampCatalogue, hdf_catalogue, hdf_segmentation, interpol_kwargs, load_stamps, sky_cutouts,
    sky_mosaic, split_of)

# Stars of the field with saturated cores and diffraction spikes, (row, col).
HDF_STARS = ((166, 252), (215, 146), (577, 751))


def _independent_half_light(sb, x, y):
    """Circular half-light radius about the centroid of samples (no shared code)."""
    cx, cy = np.average(x, weights=sb), np.average(y, weights=sb)
    r = np.hypot(x - cx, y - cy)
    order = np.argsort(r)
    cumulative = np.cumsum(sb[order]) / sb.sum()
    return np.interp(0.5, cumulative, r[order]), cx, cy


def test_hdf_catalogue_passes_its_cuts():
    cat = hdf_catalogue()
    n = len(cat)
    assert 300 < n < 800
    assert cat.stamps.dtype == np.float32 and cat.stamps.shape == (n, 64, 64)
    assert np.isfinite(cat.stamps).all() and (cat.stamps >= 0).all()
    assert (cat.r_half_pix >= 2.0).all() and (cat.snr >= 20).all() and (cat.flux > 0).all()
    assert len(set(cat.ids)) == n and list(cat.ids) == sorted(cat.ids)
    # Each stamp fits: a zero frame (its segment grown by 3 px stays inside).
    frame = np.concatenate([cat.stamps[:, 0], cat.stamps[:, -1], cat.stamps[:, :, 0],
                            cat.stamps[:, :, -1]], axis=1)
    assert not frame.any()
    # Centred on the light: centroids within a pixel of the stamp centre.
    offsets = np.array([real_sources.light_centroid_pix(s) for s in cat.stamps[::20]])
    assert np.abs(offsets).max() <= 1.0
    with pytest.raises(ValueError):
        cat.stamps[0, 0, 0] = 1.0  # cached: read-only


def test_hdf_stamps_hold_only_their_own_segment():
    from scipy import ndimage

    seg, cat = hdf_segmentation(), hdf_catalogue()
    assert collections.Counter(seg.rejected.values())["saturated"] >= len(HDF_STARS)
    for row, col in HDF_STARS:
        assert seg.rejected[seg.segments[row, col]] == "saturated"
    for label, (top, left) in list(seg.kept.items())[::10]:
        stamp = cat.stamps[cat.ids.index(f"hdf_r{top + 32:03d}_c{left + 32:04d}")]
        window = seg.segments[top:top + 64, left:left + 64]
        others = (window > 0) & (window != label)
        assert not stamp[others].any()
        rim = ndimage.binary_dilation(window == label, iterations=3)
        assert not stamp[~rim].any() and stamp[window == label].sum() > 0


def test_hdf_catalogue_is_deterministic():
    seg = real_sources._hdf_segmentation.__wrapped__(64, 20.0, 2.0)  # bypass the caches
    np.testing.assert_array_equal(seg.segments, hdf_segmentation().segments)
    assert seg.kept == hdf_segmentation().kept
    again = real_sources._hdf_catalogue.__wrapped__(64, 20.0, 2.0)
    cat = hdf_catalogue()
    assert again.ids == cat.ids
    np.testing.assert_array_equal(again.stamps, cat.stamps)
    np.testing.assert_array_equal(again.r_half_pix, cat.r_half_pix)


def test_splits_are_disjoint_stable_and_80_10_10():
    cat = hdf_catalogue()
    parts = {name: cat.split(name) for name in real_sources.SPLITS}
    ids = [set(part.ids) for part in parts.values()]
    assert sum(map(len, ids)) == len(cat) and set.union(*ids) == set(cat.ids)
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    # Pinned: if the hash changed, stamps of old training sets would leak into new test sets.
    pinned = {i: split_of(i) for i in ("g0", "g1", "g10")}
    assert pinned == {"g0": "test", "g1": "train", "g10": "validation"}
    counts = collections.Counter(split_of(f"id{i}") for i in range(20000))
    assert counts["train"] / 20000 == pytest.approx(0.8, abs=0.01)
    assert counts["test"] / 20000 == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="'valid'"):
        cat.split("valid")


def _write_all_formats(tmp_path, stamps):
    import h5py
    from astropy.io import fits

    np.save(tmp_path / "s.npy", stamps)
    np.savez(tmp_path / "s.npz", stamps=stamps)
    fits.PrimaryHDU(stamps).writeto(tmp_path / "cube.fits")
    column = fits.Column(name="IMAGE", format=f"{stamps[0].size}E", dim=f"({stamps.shape[2]},"
                         f"{stamps.shape[1]})", array=stamps)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([column])]).writeto(
        tmp_path / "table.fits")
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["stamps"] = stamps
    return ["s.npy", "s.npz", "cube.fits", "table.fits", "s.h5"]


def test_load_stamps_reads_every_format_alike(tmp_path):
    stamps = np.asarray(hdf_catalogue().stamps[:5])
    reference = load_stamps(stamps)
    for name in _write_all_formats(tmp_path, stamps):
        cat = load_stamps(tmp_path / name)
        assert cat.ids == reference.ids, name
        np.testing.assert_array_equal(cat.stamps, stamps)
        np.testing.assert_allclose(cat.r_half_pix, hdf_catalogue().r_half_pix[:5], rtol=1e-6)
        assert np.isnan(cat.snr).all()
    np.savez(tmp_path / "ids.npz", images=stamps, ids=np.array(list("abcde")))
    assert load_stamps(tmp_path / "ids.npz").ids == tuple("abcde")
    import h5py
    from astropy.io import fits

    with h5py.File(tmp_path / "ids.h5", "w") as f:
        f["cube"], f["ids"] = stamps, np.array(list("vwxyz"), dtype="S")
    assert load_stamps(tmp_path / "ids.h5", key="cube").ids == tuple("vwxyz")
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(stamps[:1]), fits.ImageHDU(stamps, name="GAL")]
                 ).writeto(tmp_path / "ext.fits")
    assert len(load_stamps(tmp_path / "ext.fits", key="gal")) == 5
    assert len(load_stamps(tmp_path / "ext.fits")) == 1


def _bad_cases(tmp_path):
    good = np.ones((3, 16, 16), np.float32)
    nan = good.copy()
    nan[1, 2, 3] = np.nan
    np.save(tmp_path / "empty.npy", np.zeros((0, 16, 16), np.float32))
    np.save(tmp_path / "ints.npy", good.astype(np.int16))
    (tmp_path / "notes.txt").write_text("x")
    np.savez(tmp_path / "two.npz", a=good, b=good)
    return [
        (tmp_path / "missing.npy", "no such file"),
        (tmp_path / "empty.npy", "no stamps"),
        (tmp_path / "ints.npy", "floating-point.*int16"),
        (good.astype(np.complex64), "floating-point.*complex64"),
        (good[0], "3-D array"),
        (nan, "NaN or inf.*index 1"),
        (np.ones((3, 16, 12), np.float32), "square"),
        (-good, "no positive total flux"),
        (tmp_path / "notes.txt", "unknown file type"),
        (tmp_path / "two.npz", "'stamps' or 'images'"),
        (np.stack([good[0], 2 * good[0], good[0]]), "stamps 0 and 2 are identical"),
    ]


def test_bad_stamp_input_is_refused_by_name(tmp_path):
    for given, words in _bad_cases(tmp_path):
        with pytest.raises(ValueError, match=words) as error:
            load_stamps(given)
        assert "load_stamps(" in str(error.value)
        if not isinstance(given, np.ndarray):
            assert given.name in str(error.value)


def test_interpol_source_has_the_requested_flux_size_and_centre():
    """Independent check: lenstronomy renders the unlensed source on a fine grid."""
    from lenstronomy.LightModel.light_model import LightModel

    cat = hdf_catalogue()
    zero_point, magnitude, r_eff = 25.0, 21.0, 0.3
    d = 0.006
    g = (np.arange(-600, 600) + 0.5) * d
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    for i, angle in ((0, 0.0), (len(cat) // 2, 0.7), (len(cat) - 1, -2.0)):
        name, kwargs = interpol_kwargs(cat.stamps[i], magnitude, r_eff, 0.1, -0.05, angle,
                                       zero_point, r_half_pix=cat.r_half_pix[i])
        flux = LightModel([name]).surface_brightness(x, y, [kwargs]) * d * d
        assert flux.sum() == pytest.approx(10 ** (-0.4 * (magnitude - zero_point)), rel=0.01)
        r_half, cx, cy = _independent_half_light(flux, x, y)
        assert r_half == pytest.approx(r_eff, rel=0.03)
        assert (cx, cy) == pytest.approx((0.1, -0.05), abs=0.005)
    # Measured on the fly when no radius is given: the same answer.
    assert interpol_kwargs(cat.stamps[0], 21, 0.3, 0, 0, 0, 25)[1]["scale"] == pytest.approx(
        0.3 / cat.r_half_pix[0], rel=1e-9)


def test_interpol_source_lensed_through_an_sie():
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    stamp = hdf_catalogue().stamps[10]
    name, kwargs = interpol_kwargs(stamp, 21.0, 0.25, 0.05, 0.02, 0.3, 25.0)
    n, s, pix = 64, 2, 0.101  # the Euclid grid, supersampled 2x
    sub = ((np.arange(n * s) + 0.5) / s - n / 2) * pix
    x, y = (a.ravel() for a in np.meshgrid(sub, sub))
    lens = LensModel(["SIE"])
    bx, by = lens.ray_shooting(x, y, [{"theta_E": 1.2, "e1": 0.1, "e2": 0.0, "center_x": 0.0,
                                       "center_y": 0.0}])
    image = LightModel([name]).surface_brightness(bx, by, [kwargs]).reshape(n, s, n, s).mean(
        axis=(1, 3)) * pix**2
    unlensed = 10 ** (-0.4 * (21.0 - 25.0))
    assert np.isfinite(image).all() and (image >= 0).all()
    assert image.sum() > 3 * unlensed  # a source near the caustics is strongly magnified


def test_lenstronomy_interpol_cache_needs_clearing():
    """Pins the trap documented in the module: a reused LightModel keeps its first stamp."""
    from lenstronomy.LightModel.light_model import LightModel

    cat = hdf_catalogue()
    a = interpol_kwargs(cat.stamps[0], 21, 0.3, 0, 0, 0, 25, cat.r_half_pix[0])[1]
    b = interpol_kwargs(cat.stamps[1], 21, 0.3, 0, 0, 0, 25, cat.r_half_pix[1])[1]
    x, y = np.meshgrid(np.linspace(-1, 1, 50), np.linspace(-1, 1, 50))
    model = LightModel(["INTERPOL"])
    model.surface_brightness(x, y, [a])
    fresh_b = LightModel(["INTERPOL"]).surface_brightness(x, y, [b])
    stale_b = model.surface_brightness(x, y, [b])
    a_image_b_geometry = LightModel(["INTERPOL"]).surface_brightness(
        x, y, [dict(b, image=a["image"])])
    np.testing.assert_array_equal(stale_b, a_image_b_geometry)  # b's image ignored
    assert np.abs(stale_b - fresh_b).max() > 0.1 * fresh_b.max()
    model.delete_interpol_caches()
    np.testing.assert_array_equal(model.surface_brightness(x, y, [b]), fresh_b)


def test_sky_cutouts_avoid_every_segment_and_have_the_requested_sigma():
    from scipy import ndimage

    seg = hdf_segmentation()
    occupied = ndimage.binary_dilation(seg.segments > 0, iterations=4)
    windows = real_sources.empty_sky_windows(32, margin_pix=4, stride=8)
    patches = sky_cutouts(32, 0.02, stride=8)
    assert patches.dtype == np.float32 and patches.shape == (len(windows), 32, 32)
    assert len(patches) >= 6
    np.testing.assert_allclose(patches.std(axis=(1, 2)), 0.02, rtol=1e-4)
    np.testing.assert_allclose(patches.mean(axis=(1, 2)), 0.0, atol=1e-6)
    # Each patch is the scaled residual of its window, with no segment pixel within 4 px.
    for (top, left), patch in zip(windows, patches):
        assert not occupied[top:top + 32, left:left + 32].any()
        sky = seg.residual[top:top + 32, left:left + 32]
        np.testing.assert_allclose(patch, (sky - sky.mean()) / sky.std() * 0.02, atol=1e-6)
        for other_top, other_left in windows:  # windows do not overlap
            assert (other_top, other_left) == (top, left) or (
                abs(other_top - top) >= 32 or abs(other_left - left) >= 32)
    assert sky_cutouts(64, 1.0).shape == (0, 64, 64)  # the field is too crowded for 64 px
    np.testing.assert_array_equal(sky_cutouts(32, 0.02, stride=8), patches)
    with pytest.raises(ValueError, match="sigma"):
        sky_cutouts(32, 0.0)


def test_sky_mosaic_fills_a_euclid_grid():
    patches = sky_mosaic(64, 0.3, 4, np.random.default_rng(1))
    assert patches.shape == (4, 64, 64) and np.isfinite(patches).all()
    np.testing.assert_allclose(patches.std(axis=(1, 2)), 0.3, rtol=1e-4)
    np.testing.assert_array_equal(sky_mosaic(64, 0.3, 4, np.random.default_rng(1)), patches)


def test_catalogue_refuses_inconsistent_fields():
    with pytest.raises(ValueError, match="unique ids"):
        StampCatalogue(np.ones((2, 8, 8), np.float32), np.ones(2), np.ones(2), np.ones(2),
                       ("a", "a"))
