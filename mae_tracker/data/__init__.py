"""Data layer: reading and preparing jet-image files (HDF5 schema and validation, Parquet, the
task table's metadata, datasets of files, splits, loaders, sparse copies, preprocessing).

Knows nothing of MLflow, models or simulation: generating files is :mod:`mae_tracker.sim`,
which imports from here and never the other way round (so no Pythia, FastJet or awkward here).
"""

from mae_tracker.data.errors import DataError

__all__ = ["DataError"]
