"""Data layer: HDF5 schema, Pythia jet generation, reading, splits and preprocessing.

Knows nothing of MLflow or models.
"""

from mae_tracker.data.errors import DataError

__all__ = ["DataError"]
