"""Rotations, written elementwise so one model function serves a single point or a whole grid.

Every helper takes coordinates as separate arrays of any common (broadcastable) shape, so a
projection model evaluated on arrays of shape (k, n_views, n_markers) runs as fused
elementwise arithmetic with no tiny matrix products. Angles are radians.
"""

import jax.numpy as jnp


def rotate2(angle, u, v):
    """Counter-clockwise rotation of (u, v) by ``angle``: R(angle) (u, v)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    return c * u - s * v, s * u + c * v


def rotate_y(angle, x, y, z):
    """Rotation about the y (tilt) axis: (x cos t + z sin t, y, -x sin t + z cos t)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    return c * x + s * z, y, -s * x + c * z


def rotate_x(angle, x, y, z):
    """Rotation about the x axis: (x, y cos a - z sin a, y sin a + z cos a)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    return x, c * y - s * z, s * y + c * z


def rot_y(angle):
    """Matrix form of ``rotate_y``, shape (3, 3)."""
    c, s = jnp.cos(angle), jnp.sin(angle)
    zero, one = jnp.zeros_like(c), jnp.ones_like(c)
    return jnp.array([[c, zero, s], [zero, one, zero], [-s, zero, c]])
