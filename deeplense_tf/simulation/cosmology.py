"""Lensing geometry: distances, critical density and mass-to-angle conversions.

Flat LambdaCDM with H0 = 70 km/s/Mpc and Omega_m = 0.3, lens at z = 0.5 and source at
z = 1.0 (the DeepLense recipe). All distances are angular-diameter distances.
"""

from __future__ import annotations

import functools

import numpy as np

# h * c in eV m, and 1 kpc in m: for the de Broglie wavelength of an axion.
_HC_EV_M = 1.239841984e-6
_KPC_M = 3.0856775814913673e19
_C_KM_S = 299792.458


class LensingGeometry:
    """Distances and conversions for one lens/source redshift pair (see `geometry`)."""

    def __init__(self, z_lens: float = 0.5, z_source: float = 1.0, h0: float = 70.0,
                 omega_m: float = 0.3):
        if not 0 < z_lens < z_source:
            raise ValueError(f"redshifts: need 0 < z_lens < z_source, got z_lens={z_lens}, "
                             f"z_source={z_source}")
        # Imported here: astropy and lenstronomy take seconds to import, and reading a
        # data set must not pay for the simulator.
        from astropy.cosmology import FlatLambdaCDM
        from lenstronomy.Cosmo.lens_cosmo import LensCosmo

        self.z_lens, self.z_source = z_lens, z_source
        self.cosmo = FlatLambdaCDM(H0=h0, Om0=omega_m)
        self.lens_cosmo = LensCosmo(z_lens=z_lens, z_source=z_source, cosmo=self.cosmo)
        # Critical surface density in Msun per arcsec^2 at the lens plane.
        self.sigma_crit_arcsec2 = float(self.lens_cosmo.sigma_crit_angle)
        # Physical kpc per arcsec at the lens plane.
        self.kpc_per_arcsec = float(self.lens_cosmo.dd * 1e3 * np.pi / 180 / 3600)

    def point_mass_theta_e(self, mass_msun):
        """Einstein radius (arcsec) of a point mass: theta_E^2 = M / (pi Sigma_crit)."""
        mass = np.asarray(mass_msun, dtype=np.float64)
        if np.any(mass < 0):
            raise ValueError(f"mass_msun: must be non-negative, got min {mass.min()}")
        return np.sqrt(mass / (np.pi * self.sigma_crit_arcsec2))

    def de_broglie_wavelength_arcsec(self, m_axion_ev: float, velocity_km_s: float) -> float:
        """lambda_dB = h / (m_a v), projected to arcsec at the lens plane."""
        if not (m_axion_ev > 0 and velocity_km_s > 0):
            raise ValueError(f"need m_axion_ev > 0 and velocity_km_s > 0, got {m_axion_ev}, "
                             f"{velocity_km_s}")
        wavelength_m = _HC_EV_M / (m_axion_ev * velocity_km_s / _C_KM_S)
        return wavelength_m / _KPC_M / self.kpc_per_arcsec

    def nfw_angles(self, m200_msun, concentration):
        """(Rs, alpha_Rs) in arcsec of an NFW halo of mass M200 and concentration c."""
        return self.lens_cosmo.nfw_physical2angle(np.asarray(m200_msun), np.asarray(concentration))


@functools.lru_cache(maxsize=None)
def geometry(z_lens: float = 0.5, z_source: float = 1.0) -> LensingGeometry:
    """The shared, cached geometry for a redshift pair (astropy distances are slow)."""
    return LensingGeometry(z_lens, z_source)
