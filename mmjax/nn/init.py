"""Initialisers that carry logical axis names for sharding."""

import flax.linen as nn


def logical(init, names):
    """Wraps an initialiser so the param is boxed with its logical axis names."""
    return nn.with_logical_partitioning(init, tuple(names))


def normal_init(stddev):
    return nn.initializers.normal(stddev)
