"""Rotation and projection matrices: pure JAX, angles in radians."""

import jax.numpy as jnp


def rot2(angle):
    """Counter-clockwise 2-D rotation matrix R(angle), shape (2, 2)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    return jnp.array([[c, -s], [s, c]])


def rot_y(angle):
    """Rotation about the y axis (the tilt axis), shape (3, 3).

    ``rot_y(t) @ (x, y, z) = (x cos t + z sin t, y, -x sin t + z cos t)``.
    """
    c, s = jnp.cos(angle), jnp.sin(angle)
    zero, one = jnp.zeros_like(c), jnp.ones_like(c)
    return jnp.array([[c, zero, s], [zero, one, zero], [-s, zero, c]])


def rot_x(angle):
    """Rotation about the x axis, shape (3, 3)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    zero, one = jnp.zeros_like(c), jnp.ones_like(c)
    return jnp.array([[one, zero, zero], [zero, c, -s], [zero, s, c]])


def project_z(xyz):
    """Orthographic projection along z: (..., 3) -> (..., 2)."""
    return xyz[..., :2]
