"""Readers for each data source: they list or load examples and decode a batch on request.

Each reader returns a `SourceData` (train and held-out `Source`s plus what the model needs to know);
`autoopt_dist.train.data` turns that into per-rank batches. Readers raise `ConfigError` naming the
field to fix (data.path, data.name, ...) for anything wrong with the data on disk.
"""

from .base import Source, SourceData, TensorSource

__all__ = ["Source", "SourceData", "TensorSource"]
