"""Typed configuration: defaults, then a TOML file, then environment variables, then flags.

One `Settings` object is loaded once in a job's `main()` and passed down; nothing reads the
environment later. Every value is validated with a message that says what to fix.

Sources, later ones win:
  1. the defaults below;
  2. a TOML file: `--config PATH`, else `$LAKESCORE_CONFIG`, else `./lakescore.toml` if it exists;
  3. environment variables `LAKESCORE_<SECTION>_<KEY>`, e.g. `LAKESCORE_LAKE_ROOT=/data/lake`;
  4. flags, as `section.key=value` overrides (`lakescore --set train.epochs=5 train`).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import datetime as dt
import math
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PREFIX = "LAKESCORE_"


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message says which and how to fix it."""


def check_identifier(value: str, what: str) -> str:
    """Return `value` if it is a plain SQL identifier, else raise ConfigError naming `what`."""
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise ConfigError(
            f"{what} {value!r} is not a plain SQL identifier; use letters, digits and underscores, "
            "starting with a letter or underscore (it is spliced into SQL statements)"
        )
    return value


def check_table_name(value: str, what: str = "table name") -> str:
    """Accept `table` or `database.table`, each part a plain identifier."""
    parts = value.split(".") if isinstance(value, str) else [value]
    if len(parts) > 2:
        raise ConfigError(f"{what} {value!r} has more than one dot; use `table` or `database.table`")
    for part in parts:
        check_identifier(part, what)
    return value


@dataclass(frozen=True)
class LakeSettings:
    # Absolute after loading; the embedded metastore and warehouse live under it.
    root: Path = Path("lake")
    database: str = "lakescore"

    @property
    def metastore_dir(self) -> Path:
        return self.root / "_metastore"

    @property
    def warehouse_dir(self) -> Path:
        return self.root / "_warehouse"

    @property
    def tables_dir(self) -> Path:
        return self.root / "tables"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "_checkpoints"


@dataclass(frozen=True)
class SparkSettings:
    # None: take spark-submit's --master, else local[*]. Set it only to force a master.
    master: str | None = None
    app_name: str = "lakescore"
    # Rows per Arrow batch handed to the scoring UDF (and per Parquet reader batch): bounds
    # executor Python memory per task.
    arrow_batch_size: int = 10_000
    # Small on one machine; a cluster job should raise it (or rely on AQE) via --conf.
    shuffle_partitions: int = 8
    # Folder of the Delta jars resolved by `make jars`; ignored if spark.jars is already set.
    jars_dir: Path = Path(__file__).resolve().parent.parent / ".jars"
    # Extra `spark.*` settings; spark-submit --conf and spark-defaults.conf still win.
    conf: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RaySettings:
    # None: start Ray in-process with this machine's cores; "auto" or "ray://host:10001" joins one;
    # "spark": start Ray on the job's Spark cluster (ray.util.spark.setup_ray_cluster) for the job.
    address: str | None = None
    # address = "spark": Ray worker nodes (each holds one Spark task slot while the job runs; keep
    # slots free for the job's own Spark reads and writes) and CPUs of the head node in the driver.
    spark_worker_nodes: int = 1
    spark_head_cpus: int = 1
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Shared storage for checkpoints on a multi-node cluster; default: under the lake root.
    storage_path: Path | None = None
    # Worker-group restarts Ray Train allows (each resumes from the last epoch's checkpoint).
    max_failures: int = 2


@dataclass(frozen=True)
class GenerateSettings:
    table: str = "transactions"
    days: int = 7
    rows_per_day: int = 40_000
    accounts: int = 10_000
    anomaly_rate: float = 0.005
    seed: int = 7
    start_date: dt.date = dt.date(2026, 11, 21)
    format: str = "delta"
    # Output files per day partition; raise on a cluster so each task writes a sensible file size.
    files_per_day: int = 1


@dataclass(frozen=True)
class TrainSettings:
    table: str = "transactions"
    model_name: str = "transactions"
    kind: str = "mlp"
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    dropout: float = 0.1
    seed: int = 7
    patience: int = 5
    threshold_policy: str = "target_precision"
    threshold_value: float = 0.9
    # Dated tables: the last `validation_days` then `test_days` are held out, in time order.
    validation_days: int = 1
    test_days: int = 1
    # Undated tables: stratified fractions.
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    # Dated tables: the training window (None: from the first / up to the last date of the table).
    first_date: dt.date | None = None
    last_date: dt.date | None = None
    # Encoder widths of the autoencoder; the last one is the bottleneck (keep it below the feature count).
    autoencoder_hidden: tuple[int, ...] = (32, 4)
    # mlp: the positive class is weighted negatives/positives in the training split, capped here.
    max_pos_weight: float = 50.0
    # Scaling is computed within these quantiles of the training split (heavy tails)...
    clip_low_quantile: float = 0.001
    clip_high_quantile: float = 0.999
    # ...and features are clipped this many quantile ranges beyond them: bounded, but an anomaly
    # far beyond the bulk keeps its distance (0 clips at the quantiles, flattening the tail).
    clip_margin: float = 0.5
    # Rows each worker shuffles locally between epochs (Ray Data local shuffle buffer; 0 = off).
    shuffle_buffer_rows: int = 20_000
    # Evaluation: precision among the k highest scores of the test window.
    precision_at_k: int = 100
    # Bound on rows taken into one process: the IsolationForest baseline's fit sample and the
    # reference histograms for drift.
    sample_rows: int = 100_000


@dataclass(frozen=True)
class ScoreSettings:
    table: str = "transactions"
    model: str = "transactions"
    # Source columns copied into `flagged` besides the keys, score and reasons.
    allow_columns: tuple[str, ...] = ("amount", "merchant_category", "country")
    # Of the copied columns (keys or allowed), these are replaced by a salted sha256 ("hash") or left out ("drop").
    sensitive_columns: tuple[str, ...] = ()
    sensitive_action: str = "hash"
    top_reasons: int = 3
    # Key columns copied into `flagged`; empty: whichever of transaction_id, account_id,
    # event_ts, event_date, record_id the source has.
    key_columns: tuple[str, ...] = ()
    # Partition column a run filters on (--run-date / --from --to); a source without it is scored whole.
    date_column: str = "event_date"
    # Prefix hashed with sensitive values; set one per deployment (e.g. LAKESCORE_SCORE_HASH_SALT)
    # so that hashes of guessable ids cannot be looked up, and keep it so hashes join across nights.
    hash_salt: str = ""


@dataclass(frozen=True)
class RetrainSettings:
    # The challenger must beat the champion's holdout AUCPR by at least this much...
    min_aucpr_gain: float = 0.005
    # ...without its precision at threshold falling more than this below the champion's.
    precision_tolerance: float = 0.0
    # `retrain --reproduce`: largest metric difference still reported as a match (DDP with
    # streamed shards is reproducible to float rounding, not bit for bit).
    reproduce_tolerance: float = 0.01


@dataclass(frozen=True)
class Settings:
    lake: LakeSettings = field(default_factory=LakeSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)

    def table(self, name: str) -> str:
        """Qualify `name` with the lake's database unless it already names one."""
        check_table_name(name)
        return name if "." in name else f"{self.lake.database}.{name}"

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with `section.key` overrides applied and validated."""
        return _validate(_apply(self, overrides, source="override"))


_CHOICES = {
    ("generate", "format"): ("delta", "parquet"),
    ("train", "kind"): ("mlp", "autoencoder"),
    ("train", "threshold_policy"): ("target_precision", "alert_rate", "fixed"),
    ("score", "sensitive_action"): ("hash", "drop"),
}


def load_settings(
    config_file: str | os.PathLike | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from defaults, a TOML file, the environment and overrides, then validate.

    Args:
        config_file: TOML file; None looks at $LAKESCORE_CONFIG, then ./lakescore.toml.
        overrides: `{"section.key": value}`, applied last (command-line flags).
        environ: the environment to read (default os.environ); tests pass their own.

    Raises:
        ConfigError: an unknown section or key, a value of the wrong type, or an invalid value.
    """
    environ = os.environ if environ is None else environ
    settings = Settings()

    path = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if path is None and Path("lakescore.toml").is_file():
        path = "lakescore.toml"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; pass an existing TOML file")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        flat = {}
        for section, values in data.items():
            if not isinstance(values, dict):
                raise ConfigError(f"{path}: top-level key {section!r} must be a [section] table")
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        settings = _apply(settings, flat, source=str(path))

    env_values = {}
    sections = {f.name for f in dataclasses.fields(Settings)}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX):].lower()
        section, _, key = rest.partition("_")
        if section in sections and key:
            env_values[f"{section}.{key}"] = value
    settings = _apply(settings, env_values, source="environment")
    settings = _apply(settings, overrides or {}, source="command line")
    return _validate(settings)


def _apply(settings: Settings, values: Mapping[str, Any], source: str) -> Settings:
    by_section: dict[str, dict[str, Any]] = {}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        if not hasattr(settings, section) or not dataclasses.is_dataclass(getattr(settings, section)):
            known = ", ".join(f.name for f in dataclasses.fields(Settings))
            raise ConfigError(f"{source}: unknown section {section!r} in {dotted!r}; sections are: {known}")
        by_section.setdefault(section, {})[key] = value
    updated = {}
    for section, items in by_section.items():
        current = getattr(settings, section)
        hints = typing.get_type_hints(type(current))
        changes = {}
        for key, value in items.items():
            if key not in hints:
                known = ", ".join(f.name for f in dataclasses.fields(current))
                raise ConfigError(f"{source}: unknown setting {section}.{key}; {section} has: {known}")
            changes[key] = _coerce(value, hints[key], f"{section}.{key}", source)
        updated[section] = dataclasses.replace(current, **changes)
    return dataclasses.replace(settings, **updated)


def _coerce(value: Any, hint: Any, name: str, source: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), name, source)
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if hint is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            return int(str(value).replace("_", ""))
        if hint is float:
            return float(value)
        if hint is str:
            if not isinstance(value, (str, int, float)):
                raise ValueError("expected a string")
            return str(value)
        if hint is Path:
            return Path(str(value)).expanduser()
        if hint is dt.date:
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        if origin is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [i.strip() if isinstance(i, str) else i for i in items if i != ""]
            return tuple(_coerce(i, args[0], name, source) for i in items)
        if origin in (collections.abc.Mapping, dict):
            if isinstance(value, str):
                pairs = [p for p in value.split(",") if p.strip()]
                value = dict(p.split("=", 1) for p in pairs)
            return {str(k): str(v) for k, v in dict(value).items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name}={value!r} is not a valid {_type_name(hint)} ({exc})") from None
    raise ConfigError(f"{source}: {name} has an unsupported type {hint!r}")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _validate(settings: Settings) -> Settings:
    lake = settings.lake
    root = lake.root if lake.root.is_absolute() else (Path.cwd() / lake.root)
    root = root.resolve()
    check_identifier(lake.database, "lake.database")
    _check_writable(root)
    settings = dataclasses.replace(settings, lake=dataclasses.replace(lake, root=root))

    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(settings, section), key)
        if value not in allowed:
            raise ConfigError(f"{section}.{key}={value!r} is not one of: {', '.join(allowed)}")

    for name in ("generate.table", "train.table", "score.table"):
        section, key = name.split(".")
        value = getattr(getattr(settings, section), key)
        # Training and scoring also read a path (a Delta table or a Parquet snapshot); resolve_source checks it.
        if name in ("train.table", "score.table") and isinstance(value, str) and ("/" in value or value.startswith("file:")):
            continue
        check_table_name(value, name)
    check_identifier(settings.train.model_name, "train.model_name")
    for column in settings.score.allow_columns + settings.score.sensitive_columns + settings.score.key_columns:
        check_identifier(column, "a column in score.allow_columns/sensitive_columns/key_columns")
    check_identifier(settings.score.date_column, "score.date_column")

    positive = {
        "generate.days": settings.generate.days,
        "generate.rows_per_day": settings.generate.rows_per_day,
        "generate.accounts": settings.generate.accounts,
        "generate.files_per_day": settings.generate.files_per_day,
        "train.epochs": settings.train.epochs,
        "train.batch_size": settings.train.batch_size,
        "train.patience": settings.train.patience,
        "train.precision_at_k": settings.train.precision_at_k,
        "train.sample_rows": settings.train.sample_rows,
        "train.max_pos_weight": settings.train.max_pos_weight,
        "ray.cpus_per_worker": settings.ray.cpus_per_worker,
        "ray.num_workers": settings.ray.num_workers,
        "spark.arrow_batch_size": settings.spark.arrow_batch_size,
        "spark.shuffle_partitions": settings.spark.shuffle_partitions,
        "score.top_reasons": settings.score.top_reasons,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name}={value} must be a positive number")
    if not 0.0 <= settings.generate.anomaly_rate < 0.5:
        raise ConfigError(
            f"generate.anomaly_rate={settings.generate.anomaly_rate} must be in [0, 0.5): "
            "anomalies are the rare class (the default is 0.005)"
        )
    if not settings.train.hidden or any(h <= 0 for h in settings.train.hidden):
        raise ConfigError(f"train.hidden={settings.train.hidden} must list positive layer sizes, e.g. 64,32")
    policy, value = settings.train.threshold_policy, settings.train.threshold_value
    if policy in ("target_precision", "alert_rate") and not 0.0 < value <= 1.0:
        raise ConfigError(f"train.threshold_value={value} must be in (0, 1] for the {policy} policy")
    t = settings.train
    if not t.autoencoder_hidden or any(h <= 0 for h in t.autoencoder_hidden):
        raise ConfigError(f"train.autoencoder_hidden={t.autoencoder_hidden} must list positive layer sizes, e.g. 32,4")
    if not 0.0 <= t.clip_low_quantile < t.clip_high_quantile <= 1.0:
        raise ConfigError(
            f"train.clip_low_quantile={t.clip_low_quantile} and clip_high_quantile={t.clip_high_quantile} must "
            "satisfy 0 <= low < high <= 1, e.g. 0.001 and 0.999"
        )
    if not (math.isfinite(t.clip_margin) and t.clip_margin >= 0):
        raise ConfigError(f"train.clip_margin={t.clip_margin} must be a finite number >= 0 (0 clips at the quantiles)")
    if settings.ray.address == "spark" and (settings.ray.spark_worker_nodes < 1 or settings.ray.spark_head_cpus < 0):
        raise ConfigError(
            f"ray.spark_worker_nodes={settings.ray.spark_worker_nodes} must be at least 1 and "
            f"ray.spark_head_cpus={settings.ray.spark_head_cpus} at least 0 for ray.address = 'spark'"
        )
    if t.first_date and t.last_date and t.first_date > t.last_date:
        raise ConfigError(f"train.first_date={t.first_date} is after train.last_date={t.last_date}")
    if t.validation_days < 1 or t.test_days < 1:
        raise ConfigError("train.validation_days and train.test_days must be at least 1")
    if t.shuffle_buffer_rows < 0 or settings.ray.max_failures < -1:
        raise ConfigError("train.shuffle_buffer_rows must be >= 0 and ray.max_failures >= -1 (-1: unlimited)")
    for name in ("validation_fraction", "test_fraction"):
        fraction = getattr(settings.train, name)
        if not 0.0 < fraction < 0.5:
            raise ConfigError(f"train.{name}={fraction} must be in (0, 0.5)")
    return settings


def _check_writable(root: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"lake root {str(root)!r} is not writable (checked {str(probe)!r}); "
            "set lake.root or LAKESCORE_LAKE_ROOT to a folder you can write"
        )
