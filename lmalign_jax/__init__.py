"""lmalign_jax: fiducial-marker alignment of electron-tomography tilt series in JAX."""

__version__ = "0.1.0"
