"""Simulated data with known truth: marker observations and bead phantoms with their projections."""

from .synthetic import SyntheticSeries, simulate

__all__ = ["SyntheticSeries", "simulate"]
