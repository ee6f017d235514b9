"""A local CSV time series cut into windows: predict the next value of a target column (LSTM regression).

Rows are time steps in file order. Every numeric column is an input feature (the target's own past
included); columns with any non-numeric value (dates, names) are ignored. Missing values (empty, `?`,
`NA`, `nan`, `null`) are filled forward, then backward. Example t: x = rows[t - seq_len : t] (all
features), y = target[t], for t = seq_len .. rows - 1.

Split: chronological, no shuffling across time: the last data.test_fraction of the rows are held out
(their windows may look back into the training rows, as a forecast would). Every column, the target
included, is standardised with the training rows' mean and std; `target_mean` / `target_std` in the
data set's extras convert the loss back to the original units (MSE x std^2).
"""

from __future__ import annotations

import csv

import numpy as np
import torch

from ..train.errors import ConfigError
from .base import SourceData, require_path

MISSING = {"", "?", "na", "nan", "null", "none", "n/a"}
DELIMITERS = ",;\t|"


def _parse_column(values: list[str]) -> np.ndarray | None:
    """float64 with NaN for missing values, or None if any value is not a number."""
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:
        pass
    out = np.empty(len(values))
    for i, v in enumerate(values):
        v = v.strip()
        if v.lower() in MISSING:
            out[i] = np.nan
            continue
        try:
            out[i] = float(v)
        except ValueError:
            return None
    return out


def _fill(col: np.ndarray) -> np.ndarray:
    """Forward-fill NaNs, then backward-fill the leading ones."""
    valid = ~np.isnan(col)
    idx = np.where(valid, np.arange(len(col)), 0)
    np.maximum.accumulate(idx, out=idx)
    col = col[idx]
    first = np.argmax(valid)
    col[:first] = col[first]
    return col


class WindowSource:
    """Windows over a standardised (rows, features) series; example i predicts row targets[i]."""

    def __init__(self, series: torch.Tensor, target_col: int, targets: torch.Tensor, seq_len: int):
        self.series, self.target_col, self.targets, self.seq_len = series, target_col, targets, seq_len

    def __len__(self) -> int:
        return len(self.targets)

    def fetch(self, indices: torch.Tensor, keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.targets[indices]
        window = t.view(-1, 1) - self.seq_len + torch.arange(self.seq_len)  # (B, seq_len) row numbers
        return self.series[window], self.series[t, self.target_col].view(-1, 1)


def load_csv(cfg) -> SourceData:
    path = require_path(cfg, "a CSV file with a header row and numeric columns")
    if path.is_dir():
        raise ConfigError(f"data.path: {str(path)!r} is a folder; data.name=csv needs one CSV file")
    seq_len = getattr(cfg, "seq_len", 24)
    with open(path, newline="") as f:
        sample = f.read(65536)
        f.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample, delimiters=DELIMITERS)
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(f, dialect)
        header = next(reader, None)
        rows = [r for r in reader if r and any(c.strip() for c in r)]
    if not header:
        raise ConfigError(f"data.path: {str(path)!r} is empty; expected a header row, then one row per time step")
    header = [h.strip() for h in header]
    for line, r in enumerate(rows, start=2):
        if len(r) != len(header):
            raise ConfigError(f"data.path: {path} line {line} has {len(r)} fields, the header {len(header)}")
    if not rows:
        raise ConfigError(f"data.path: {str(path)!r} has a header but no rows")
    columns = {}
    for j, name in enumerate(header):
        parsed = _parse_column([r[j] for r in rows])
        if parsed is not None and not np.isnan(parsed).all():
            columns[name] = _fill(parsed)
    if not columns:
        raise ConfigError(f"data.path: {str(path)!r} has no numeric column (header: {header})")
    target = getattr(cfg, "target_column", "") or list(columns)[-1]
    if target not in columns:
        why = "is not numeric" if target in header else "is not a column"
        raise ConfigError(
            f"data.target_column: {target!r} {why} of {path.name}; numeric columns: {', '.join(columns)}"
        )
    names = list(columns)
    series = np.stack([columns[n] for n in names], axis=1)  # (rows, features)
    n_rows = len(series)
    cut = int(round(n_rows * (1 - cfg.test_fraction)))
    if cut - seq_len < 1:
        raise ConfigError(
            f"data.seq_len: {seq_len} leaves no training window in the first {cut} of {n_rows} rows; lower "
            f"data.seq_len or data.test_fraction, or use a longer series"
        )
    if n_rows - cut < 1:
        raise ConfigError(f"data.test_fraction: {cfg.test_fraction} of {n_rows} rows holds out none; raise it")
    mean, std = series[:cut].mean(0), series[:cut].std(0)
    std = np.where(std > 1e-12, std, 1.0)
    series = torch.from_numpy(((series - mean) / std).astype(np.float32))
    t_col = names.index(target)
    train = WindowSource(series, t_col, torch.arange(seq_len, cut), seq_len)
    test = WindowSource(series, t_col, torch.arange(cut, n_rows), seq_len)
    extras = {"columns": names, "target_column": target, "target_mean": float(mean[t_col]),
              "target_std": float(std[t_col])}
    return SourceData(train, test, 0, (seq_len, len(names)), task="regression", kind="sequence", extras=extras)
