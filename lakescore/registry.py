"""The model registry: bundles under `<lake>/models/<name>/v<version>/`, one row per version in
the `model_registry` Delta table.

Stages: champion (what the nightly job scores with), challenger, archived. The first model of a
name becomes its champion. Promotion is one Delta commit (an UPDATE that archives the old
champion and crowns the new one together), so a reader never sees zero or two champions.

Writes go through delta-spark's DeltaTable API and reads through DataFrames: values (names,
notes, metrics) travel as literals in expressions, never spliced into SQL text, so a note with
quotes or backslashes is stored exactly as given.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from delta.tables import DeltaTable
from pyspark.sql import Column, DataFrame, Row, SparkSession
from pyspark.sql import functions as F

from lakescore import lake
from lakescore import schemas as S
from lakescore.bundle import Bundle, BundleError, load_bundle
from lakescore.config import Settings, check_identifier

log = logging.getLogger(__name__)

_MODEL_REF = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(@(?P<version>\d+|champion))?$")


class RegistryError(ValueError):
    pass


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: int
    path: str
    stage: str
    kind: str
    sha256: str
    metrics: Mapping[str, float]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


def parse_model_ref(ref: str) -> tuple[str, int | None]:
    """`name` or `name@champion` -> (name, None); `name@3` -> (name, 3)."""
    match = _MODEL_REF.match(ref or "")
    if not match:
        raise RegistryError(f"model {ref!r} is not `name`, `name@champion` or `name@<version>`, e.g. transactions@3")
    version = match.group("version")
    return match.group("name"), (int(version) if version and version != "champion" else None)


def registry_table(settings: Settings) -> str:
    return settings.table(S.MODEL_REGISTRY)


def ensure_registry(spark: SparkSession, settings: Settings) -> str:
    """Create the registry table if needed (empty, with its schema) and register it in the
    catalog; return its path. The registry is read and written by this path, under `lake.root`
    (the catalog entry is for SQL; lakescore.catalog checks that it agrees)."""
    return lake.ensure_own_table(spark, settings, S.MODEL_REGISTRY, S.MODEL_REGISTRY_SCHEMA)


def _rows(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path)


def _versions_of(spark: SparkSession, path: str, name: str) -> DataFrame:
    return _rows(spark, path).where(F.col("name") == name)


def bundle_dir(settings: Settings, name: str, version: int) -> Path:
    return settings.lake.models_dir / check_identifier(name, "model name") / f"v{version}"


def next_version(spark: SparkSession, settings: Settings, name: str) -> int:
    table = ensure_registry(spark, settings)
    row = _versions_of(spark, table, check_identifier(name, "model name")).agg(F.max("version").alias("v")).collect()[0]
    # Also look at the folder: a bundle written by a run whose registry commit failed keeps its number.
    on_disk = [int(p.name[1:]) for p in (settings.lake.models_dir / name).glob("v*") if p.name[1:].isdigit()]
    return max([row["v"] or 0, *on_disk]) + 1


def register_bundle(spark: SparkSession, settings: Settings, bundle: Bundle, path: Path, note: str | None = None) -> ModelEntry:
    """Add a written bundle to the registry: champion if its name has none, else challenger.

    One MERGE commit, insert-only on (name, version): a concurrent registration of the same
    version fails instead of duplicating.
    """
    table = ensure_registry(spark, settings)
    has_champion = not _versions_of(spark, table, bundle.name).where(F.col("stage") == S.CHAMPION).isEmpty()
    stage = S.CHALLENGER if has_champion else S.CHAMPION
    manifest = bundle.manifest
    metrics = {k: float(v) for k, v in (manifest.metrics or {}).items() if v is not None}
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    row = Row(
        name=bundle.name,
        version=bundle.version,
        path=str(path),
        stage=stage,
        kind=bundle.kind,
        sha256=bundle.sha256,
        metrics=metrics,
        source_table=manifest.lineage.source_table if manifest.lineage else None,
        source_version=manifest.lineage.source_version if manifest.lineage else None,
        note=note,
        created_at=now,
        updated_at=now,
    )
    new = spark.createDataFrame([row], S.MODEL_REGISTRY_SCHEMA)
    (
        DeltaTable.forPath(spark, table)
        .alias("t")
        .merge(new.alias("n"), "t.name = n.name AND t.version = n.version")
        .whenNotMatchedInsertAll()
        .execute()
    )
    entry = ModelEntry(bundle.name, bundle.version, str(path), stage, bundle.kind, bundle.sha256, metrics)
    log.info("registered %s as %s", entry.label, stage)
    return entry


def get_entry(spark: SparkSession, settings: Settings, ref: str) -> ModelEntry:
    """Look up `name` (its champion) or `name@version`; RegistryError if there is none."""
    name, version = parse_model_ref(ref)
    table = ensure_registry(spark, settings)
    wanted = F.col("version") == version if version is not None else F.col("stage") == S.CHAMPION
    rows = _versions_of(spark, table, name).where(wanted).collect()
    if not rows:
        registered = _rows(spark, table).select("name", "version", "stage").orderBy("name", "version").collect()
        known = [f"{r['name']}@{r['version']} ({r['stage']})" for r in registered]
        what = f"version {version} of {name}" if version is not None else f"a champion for {name}"
        raise RegistryError(
            f"the registry has no {what}; registered: {', '.join(known) or 'none'}. "
            "Train one with `lakescore train` or pick a listed version"
        )
    r = rows[0]
    return ModelEntry(r["name"], r["version"], r["path"], r["stage"], r["kind"], r["sha256"], dict(r["metrics"] or {}))


def load_registered(spark: SparkSession, settings: Settings, ref: str) -> tuple[ModelEntry, Bundle]:
    """Resolve `ref` in the registry and load its bundle, checking it is the one registered."""
    entry = get_entry(spark, settings, ref)
    bundle = load_bundle(entry.path)
    if bundle.sha256 != entry.sha256:
        raise BundleError(
            f"bundle at {entry.path} has sha256 {bundle.sha256[:12]}..., the registry recorded "
            f"{entry.sha256[:12]}... for {entry.label}: the files were replaced; restore them or re-register"
        )
    return entry, bundle


def list_models(spark: SparkSession, settings: Settings, name: str | None = None) -> list[Row]:
    table = ensure_registry(spark, settings)
    rows = _versions_of(spark, table, check_identifier(name, "model name")) if name else _rows(spark, table)
    return rows.orderBy("name", "version").collect()


def promote(spark: SparkSession, settings: Settings, ref: str, note: str | None = None) -> ModelEntry:
    """Make `name@version` the champion in one Delta commit; the previous champion is archived."""
    name, version = parse_model_ref(ref)
    if version is None:
        raise RegistryError(f"promote needs an explicit version, e.g. {name}@3")
    entry = get_entry(spark, settings, ref)
    promoted = F.col("version") == version
    DeltaTable.forPath(spark, ensure_registry(spark, settings)).update(
        condition=(F.col("name") == name) & ((F.col("stage") == S.CHAMPION) | promoted),
        set={
            "stage": F.when(promoted, F.lit(S.CHAMPION)).otherwise(F.lit(S.ARCHIVED)),
            "note": F.when(promoted, F.col("note") if note is None else F.lit(note)).otherwise(F.col("note")),
            "updated_at": F.current_timestamp(),
        },
    )
    return ModelEntry(entry.name, entry.version, entry.path, S.CHAMPION, entry.kind, entry.sha256, entry.metrics)


def discard_bundle(path: Path) -> None:
    """Remove a bundle directory that never made it into the registry."""
    shutil.rmtree(path, ignore_errors=True)


def record_decision(
    spark: SparkSession,
    settings: Settings,
    challenger: ModelEntry,
    figures: Mapping[str, float],
    note: str,
    *,
    promote: bool,
) -> None:
    """Record a retraining decision on the challenger's row and, if `promote`, crown it: one commit.

    The figures join the challenger's metrics map; the note says what was decided and why. When
    promoted, the previous champion is archived by the same UPDATE, so readers never see two
    champions or none.
    """
    name = check_identifier(challenger.name, "model name")
    v = int(challenger.version)
    decided = F.col("version") == v
    figures_map = F.create_map(*[F.lit(x) for k, value in figures.items() for x in (k, float(value))])
    metrics_type = S.MODEL_REGISTRY_SCHEMA["metrics"].dataType
    metrics = F.map_concat(F.coalesce(F.col("metrics"), F.create_map().cast(metrics_type)), figures_map.cast(metrics_type))
    if promote:
        stage: Column = F.when(decided, F.lit(S.CHAMPION)).otherwise(F.lit(S.ARCHIVED))
        other_note = F.lit(f"archived: replaced by {name}@{v}")
    else:
        stage, other_note = F.col("stage"), F.col("note")
    DeltaTable.forPath(spark, ensure_registry(spark, settings)).update(
        condition=(F.col("name") == name) & (decided | (F.col("stage") == S.CHAMPION)),
        set={
            "stage": stage,
            "metrics": F.when(decided, metrics).otherwise(F.col("metrics")),
            "note": F.when(decided, F.lit(note)).otherwise(other_note),
            "updated_at": F.current_timestamp(),
        },
    )
    log.info("%s@%d: %s", name, v, note)
