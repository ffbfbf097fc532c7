"""A `sensors` table shaped nothing like transactions, as pandas writes it to Parquet.

A string key (`reading_id`), a nanosecond timestamp (`ts`, pandas' default when it writes
Parquet), a text category (`site`), float, integer and boolean readings with spaced and
mixed-case names (`Temp C`, `Vibration`, `cycles`, `mode`, `door open`), the label under another
name (`fault`), nulls in every column but the key and the partition, partitioned by
`reading_day`. Training and scoring tests both write it with `write_sensors`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

SPEC_PATH = Path(__file__).parent / "data" / "sensors_spec.toml"
SITES = ("Plant-7", "Plant-2", "Plant-9", "Depot 4")  # in decreasing frequency
DAYS = 6
START = pd.Timestamp("2026-03-01")


def sensor_rows(rows_per_day: int = 250, seed: int = 0) -> pd.DataFrame:
    """The sensors rows: about 6% faults, which run hot and shake; every reading has nulls."""
    rng = np.random.default_rng(seed)
    n = rows_per_day * DAYS
    day = np.repeat(np.arange(DAYS), rows_per_day)
    fault = rng.random(n) < 0.06
    temp = rng.normal(60.0, 4.0, n) + np.where(fault, 25.0, 0.0)
    vibration = np.abs(rng.normal(1.0, 0.3, n)) * np.where(fault, 4.0, 1.0)
    cycles = rng.poisson(200, n)
    site = rng.choice(SITES, n, p=[0.55, 0.25, 0.15, 0.05])
    frame = pd.DataFrame(
        {
            "reading_id": [f"R-{i:06d}" for i in range(n)],
            "ts": (START + pd.to_timedelta(day, unit="D") + pd.to_timedelta(rng.integers(0, 86_400, n), unit="s")),
            "site": pd.Series(site, dtype=object),
            "Temp C": temp,
            "Vibration": vibration,
            "cycles": pd.array(cycles, dtype="Int64"),
            "mode": pd.array(rng.integers(0, 3, n), dtype="Int64"),
            "door open": pd.array(rng.random(n) < 0.1, dtype="boolean"),
            "fault": pd.array(fault, dtype="boolean"),
            "reading_day": [(START + pd.Timedelta(days=int(d))).date().isoformat() for d in day],
        }
    )
    # Nulls in every column but the key and the partition: a few rows each, and a NaN reading.
    for i, column in enumerate(["ts", "site", "Temp C", "Vibration", "cycles", "mode", "door open", "fault"]):
        frame.loc[frame.index[(np.arange(n) % 97) == i + 3], column] = None
    frame.loc[5, "Temp C"] = np.nan
    return frame


def write_sensors(path: Path, rows_per_day: int = 250, seed: int = 0) -> Path:
    """Write the sensors rows to `path` as pandas does (pyarrow, nanosecond timestamps),
    partitioned by `reading_day`; returns `path`."""
    frame = sensor_rows(rows_per_day, seed)
    assert str(frame["ts"].dtype) == "datetime64[ns]"
    frame.to_parquet(path, partition_cols=["reading_day"], index=False)
    return path
