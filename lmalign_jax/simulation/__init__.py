"""Simulated data with known truth: marker observations, bead phantoms with their projections, and
realistic raw cryo-ET stacks (:mod:`.cryo`)."""

from .cryo import CryoSeries, Imaging, simulate_cryo_series
from .synthetic import SyntheticSeries, simulate

__all__ = ["SyntheticSeries", "simulate", "CryoSeries", "Imaging", "simulate_cryo_series"]
