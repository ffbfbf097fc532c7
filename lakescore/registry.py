"""The model registry: bundles under `<lake>/models/<name>/v<version>/`, one row per version in
the `model_registry` Delta table.

Stages: champion (what the nightly job scores with), challenger, archived. The first model of a
name becomes its champion. Promotion is one Delta commit (an UPDATE that archives the old
champion and crowns the new one together), so a reader never sees zero or two champions.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pyspark.sql import Row, SparkSession

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
    """Create the registry table if needed (empty, with its schema); return its qualified name."""
    table = registry_table(settings)
    if not spark.catalog.tableExists(table):
        path = lake.table_path(settings, S.MODEL_REGISTRY)
        if not (path / "_delta_log").is_dir():
            spark.createDataFrame([], S.MODEL_REGISTRY_SCHEMA).write.format("delta").mode("ignore").save(str(path))
        lake.register_table(spark, settings, S.MODEL_REGISTRY, path, "delta")
    return table


def bundle_dir(settings: Settings, name: str, version: int) -> Path:
    return settings.lake.models_dir / check_identifier(name, "model name") / f"v{version}"


def next_version(spark: SparkSession, settings: Settings, name: str) -> int:
    table = ensure_registry(spark, settings)
    row = spark.sql(f"SELECT MAX(version) AS v FROM {table} WHERE name = '{check_identifier(name, 'model name')}'").collect()[0]
    # Also look at the folder: a bundle written by a run whose registry commit failed keeps its number.
    on_disk = [int(p.name[1:]) for p in (settings.lake.models_dir / name).glob("v*") if p.name[1:].isdigit()]
    return max([row["v"] or 0, *on_disk]) + 1


def register_bundle(spark: SparkSession, settings: Settings, bundle: Bundle, path: Path, note: str | None = None) -> ModelEntry:
    """Add a written bundle to the registry: champion if its name has none, else challenger.

    One MERGE commit, insert-only on (name, version): a concurrent registration of the same
    version fails instead of duplicating.
    """
    table = ensure_registry(spark, settings)
    has_champion = spark.sql(
        f"SELECT 1 FROM {table} WHERE name = '{bundle.name}' AND stage = 'champion' LIMIT 1"
    ).count() > 0
    stage = "challenger" if has_champion else "champion"
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
    new.createOrReplaceTempView("_lakescore_new_model")
    spark.sql(
        f"""
        MERGE INTO {table} AS t USING _lakescore_new_model AS n
        ON t.name = n.name AND t.version = n.version
        WHEN NOT MATCHED THEN INSERT *
        """
    )
    entry = ModelEntry(bundle.name, bundle.version, str(path), stage, bundle.kind, bundle.sha256, metrics)
    log.info("registered %s as %s", entry.label, stage)
    return entry


def get_entry(spark: SparkSession, settings: Settings, ref: str) -> ModelEntry:
    """Look up `name` (its champion) or `name@version`; RegistryError if there is none."""
    name, version = parse_model_ref(ref)
    table = ensure_registry(spark, settings)
    where = f"name = '{name}' AND " + (f"version = {version}" if version is not None else "stage = 'champion'")
    rows = spark.sql(f"SELECT * FROM {table} WHERE {where}").collect()
    if not rows:
        known = [f"{r['name']}@{r['version']} ({r['stage']})" for r in spark.sql(f"SELECT name, version, stage FROM {table} ORDER BY name, version").collect()]
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
    where = f"WHERE name = '{check_identifier(name, 'model name')}'" if name else ""
    return spark.sql(f"SELECT * FROM {table} {where} ORDER BY name, version").collect()


def promote(spark: SparkSession, settings: Settings, ref: str, note: str | None = None) -> ModelEntry:
    """Make `name@version` the champion in one Delta commit; the previous champion is archived."""
    name, version = parse_model_ref(ref)
    if version is None:
        raise RegistryError(f"promote needs an explicit version, e.g. {name}@3")
    entry = get_entry(spark, settings, ref)
    table = registry_table(settings)
    note_sql = "NULL" if note is None else "'" + note.replace("'", "''") + "'"
    spark.sql(
        f"""
        UPDATE {table}
        SET stage = CASE WHEN version = {version} THEN 'champion' ELSE 'archived' END,
            note = CASE WHEN version = {version} THEN COALESCE({note_sql}, note) ELSE note END,
            updated_at = current_timestamp()
        WHERE name = '{name}' AND (stage = 'champion' OR version = {version})
        """
    )
    return ModelEntry(entry.name, entry.version, entry.path, "champion", entry.kind, entry.sha256, entry.metrics)


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
    table = registry_table(settings)
    name = check_identifier(challenger.name, "model name")
    v = int(challenger.version)
    pairs = ", ".join(f"'{check_identifier(k, 'metric name')}', CAST('{float(x)!r}' AS DOUBLE)" for k, x in figures.items())
    figures_map = f"map({pairs})" if pairs else "map()"
    note_sql = "'" + note.replace("'", "''") + "'"
    new_stage = "'champion'" if promote else "stage"
    old_champion = "'archived'" if promote else "stage"
    replaced = "'" + f"archived: replaced by {name}@{v}".replace("'", "''") + "'"
    spark.sql(
        f"""
        UPDATE {table}
        SET stage = CASE WHEN version = {v} THEN {new_stage} ELSE {old_champion} END,
            metrics = CASE WHEN version = {v} THEN map_concat(coalesce(metrics, map()), {figures_map}) ELSE metrics END,
            note = CASE WHEN version = {v} THEN {note_sql} WHEN {str(promote).upper()} THEN {replaced} ELSE note END,
            updated_at = current_timestamp()
        WHERE name = '{name}' AND (version = {v} OR stage = 'champion')
        """
    )
    log.info("%s@%d: %s", name, v, note)
