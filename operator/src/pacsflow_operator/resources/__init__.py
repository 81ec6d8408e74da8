"""Custom resource models, one module per API version."""

from . import v1alpha1

__all__ = ["v1alpha1"]
