"""Typed configuration: defaults, then a TOML file, then environment variables, then flags.

One `Settings` object is loaded once in a job's `main()` and passed down; nothing reads the
environment later. Every value is validated with a message that says what to fix: each section's
rules sit in its `validated()` method, next to its fields, and a setting that chooses among values
the code defines (model kinds, threshold policies, formats) takes its choices from those constants.

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

from lakescore import schemas as S

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PREFIX = "LAKESCORE_"
# score.read_path: the scoring read paths (pipelines.nightly.choose_read).
READ_PATHS = ("auto", "udf", "files")


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

    def validated(self) -> "LakeSettings":
        """This section checked, with `root` made absolute (against the working directory)."""
        check_identifier(self.database, "lake.database")
        root = (self.root if self.root.is_absolute() else Path.cwd() / self.root).resolve()
        _check_writable(root)
        return dataclasses.replace(self, root=root)

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


LOG4J_LEVELS = ("OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "ALL")


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
    # The JVM's log level for Spark and Delta in a session lakescore launches (lakescore/log4j2.properties);
    # --verbose sets INFO.
    log_level: str = "WARN"

    def validated(self) -> "SparkSettings":
        _require_positive(self, "spark", "arrow_batch_size", "shuffle_partitions")
        _require_choice("spark.log_level", self.log_level.upper(), LOG4J_LEVELS)
        return self


@dataclass(frozen=True)
class RaySettings:
    # None: start Ray in-process with this machine's cores; "auto" or "ray://host:10001" joins one;
    # "spark": start Ray on the job's Spark cluster (ray.util.spark.setup_ray_cluster) for the job.
    address: str | None = None
    # address = "spark": Ray worker nodes (each holds one Spark task slot while the job runs; keep
    # slots free for the job's own Spark reads and writes) and CPUs of the head node in the driver.
    spark_worker_nodes: int = 1
    spark_head_cpus: int = 1
    # address = "spark" only: Ray 2.60's setup_ray_cluster cannot start with token authentication
    # (cluster_configs/README.md says why), so Ray on Spark runs without it, trusting the Spark
    # nodes' network, and only when this says so. Standing clusters (KubeRay, launcher) use tokens.
    spark_unauthenticated: bool = False
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    # Shared storage for checkpoints on a multi-node cluster; default: under the lake root.
    storage_path: Path | None = None
    # Worker-group restarts Ray Train allows (each resumes from the last epoch's checkpoint).
    max_failures: int = 2

    def validated(self) -> "RaySettings":
        _require_positive(self, "ray", "num_workers", "cpus_per_worker")
        if self.address == "spark" and (self.spark_worker_nodes < 1 or self.spark_head_cpus < 0):
            raise ConfigError(
                f"ray.spark_worker_nodes={self.spark_worker_nodes} must be at least 1 and "
                f"ray.spark_head_cpus={self.spark_head_cpus} at least 0 for ray.address = 'spark'"
            )
        if self.address == "spark" and not self.spark_unauthenticated:
            raise ConfigError(
                "ray.address = 'spark' starts Ray on the Spark cluster WITHOUT authentication: Ray 2.60's "
                "setup_ray_cluster checks its own head node without a token, so it cannot run with "
                "RAY_AUTH_MODE=token (cluster_configs/README.md, \"Ray on Spark\"). Set "
                "ray.spark_unauthenticated=true to accept that on a private Spark network, or use a "
                "standing Ray cluster with token authentication (ray.address=auto on KubeRay or the launcher)"
            )
        if self.max_failures < -1:
            raise ConfigError(f"ray.max_failures={self.max_failures} must be >= -1 (-1: unlimited)")
        return self


@dataclass(frozen=True)
class GenerateSettings:
    table: str = S.TRANSACTIONS
    days: int = 7
    rows_per_day: int = 40_000
    accounts: int = 10_000
    anomaly_rate: float = 0.005
    seed: int = 7
    start_date: dt.date = dt.date(2026, 11, 21)
    format: str = S.DELTA
    # Each day is generated by ceil(rows_per_day / rows_per_task) independent tasks (at least
    # files_per_day), each writing its own file: the generator's parallelism. Both are part of
    # what the rows are: regenerating a day reproduces it with the same values.
    rows_per_task: int = 500_000
    files_per_day: int = 1
    # arrow: each task writes its Parquet file with pyarrow and the driver commits them to Delta
    # with delta-rs in one version (the lake must be a path both reach: local, or a shared mount);
    # spark: Spark's own writer (always for format=parquet).
    writer: str = "arrow"

    def validated(self) -> "GenerateSettings":
        check_table_name(self.table, "generate.table")
        _require_choice("generate.format", self.format, S.TABLE_FORMATS)
        _require_choice("generate.writer", self.writer, ("arrow", "spark"))
        _require_positive(self, "generate", "days", "rows_per_day", "accounts", "rows_per_task", "files_per_day")
        if not 0.0 <= self.anomaly_rate < 0.5:
            raise ConfigError(
                f"generate.anomaly_rate={self.anomaly_rate} must be in [0, 0.5): "
                "anomalies are the rare class (the default is 0.005)"
            )
        return self


@dataclass(frozen=True)
class TrainSettings:
    table: str = S.TRANSACTIONS
    model_name: str = S.TRANSACTIONS
    kind: str = S.MLP
    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 20
    batch_size: int = 1024
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    dropout: float = 0.1
    seed: int = 7
    patience: int = 5
    threshold_policy: str = S.TARGET_PRECISION
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
    # Negative downsampling of the training split (1.0 = off): every anomaly is kept, each normal
    # row with this probability (decided by a hash of its features and the seed, so a rerun keeps
    # the same rows), and the mlp loss weighs kept normals 1/rate, so the objective, the pos_weight
    # cap and the reported train_loss are those of the whole split. The preprocessing is fitted,
    # and validation and test are scored, on the whole splits: their metrics need no correction.
    # The autoencoder (normal rows only) then trains on that share of them, unweighted.
    negative_sample_rate: float = 1.0
    # Scaling is computed within these quantiles of the training split (heavy tails)...
    clip_low_quantile: float = 0.001
    clip_high_quantile: float = 0.999
    # ...and features are clipped this many quantile ranges beyond them: bounded, but an anomaly
    # far beyond the bulk keeps its distance (0 clips at the quantiles, flattening the tail).
    clip_margin: float = 0.5
    # Rows each worker shuffles locally between epochs (Ray Data local shuffle buffer; 0 = off).
    # Used only when the shard is streamed (it does not fit worker_cache_mb).
    shuffle_buffer_rows: int = 20_000
    # Each worker pulls its shard of the preprocessed training split once into one tensor, and
    # shuffles all of it each epoch, when twice the shard (it and its shuffled copy) fits in this
    # many MiB; otherwise it streams the shard every epoch through Ray Data (0: always stream).
    worker_cache_mb: int = 1024
    # When the shards are held and the training and validation splits together are at most this
    # many MiB, every worker reads both whole and keeps its own slice, instead of taking shards
    # from Ray Data's split coordinators (an actor per split and run, slower to start than reading
    # a small table twice). 0: always take Ray Data's shards.
    whole_read_mb: int = 64
    # Evaluation: precision among the k highest scores of the test window.
    precision_at_k: int = 100
    # Bound on rows taken into one process: the IsolationForest baseline's fit sample and the
    # reference histograms for drift.
    sample_rows: int = 100_000
    # Evaluation scores validation and test in the training process itself when the window has at
    # most this many rows (a Ray Data actor pool's start costs more than scoring them); above it,
    # in a pool, never holding a score per row either way. 0: always in a pool.
    evaluate_in_process_rows: int = 200_000
    # The table's feature spec (TOML, lakescore/specs.py); None: the builtin spec whose columns the
    # table has, else a spec suggested from a sample of the table (printed, so it can be saved).
    spec: Path | None = None

    def validated(self) -> "TrainSettings":
        _check_source(self.table, "train.table")
        if self.spec is not None and not Path(self.spec).is_file():
            raise ConfigError(
                f"train.spec={self.spec} is no file; give the path of a feature spec (.toml), or leave train.spec "
                "unset to use the builtin spec of the table or one suggested from its rows"
            )
        check_identifier(self.model_name, "train.model_name")
        _require_choice("train.kind", self.kind, S.MODEL_KINDS)
        _require_choice("train.threshold_policy", self.threshold_policy, S.THRESHOLD_POLICIES)
        _require_positive(self, "train", "epochs", "batch_size", "patience", "precision_at_k", "sample_rows", "max_pos_weight")
        _require_layer_sizes("train.hidden", self.hidden, "64,32")
        _require_layer_sizes("train.autoencoder_hidden", self.autoencoder_hidden, "32,4")
        policy, value = self.threshold_policy, self.threshold_value
        if policy in (S.TARGET_PRECISION, S.ALERT_RATE) and not 0.0 < value <= 1.0:
            raise ConfigError(f"train.threshold_value={value} must be in (0, 1] for the {policy} policy")
        if not 0.0 <= self.clip_low_quantile < self.clip_high_quantile <= 1.0:
            raise ConfigError(
                f"train.clip_low_quantile={self.clip_low_quantile} and clip_high_quantile={self.clip_high_quantile} "
                "must satisfy 0 <= low < high <= 1, e.g. 0.001 and 0.999"
            )
        if not (math.isfinite(self.clip_margin) and self.clip_margin >= 0):
            raise ConfigError(f"train.clip_margin={self.clip_margin} must be a finite number >= 0 (0 clips at the quantiles)")
        if not (math.isfinite(self.negative_sample_rate) and 0.0 < self.negative_sample_rate <= 1.0):
            raise ConfigError(
                f"train.negative_sample_rate={self.negative_sample_rate} must be in (0, 1]: the share of normal "
                "training rows kept, e.g. 0.1 (every anomaly is kept); 1 keeps every row"
            )
        if self.shuffle_buffer_rows < 0:
            raise ConfigError(f"train.shuffle_buffer_rows={self.shuffle_buffer_rows} must be >= 0 (0: no local shuffle)")
        if self.worker_cache_mb < 0:
            raise ConfigError(f"train.worker_cache_mb={self.worker_cache_mb} must be >= 0 (0: stream every epoch)")
        if self.whole_read_mb < 0:
            raise ConfigError(f"train.whole_read_mb={self.whole_read_mb} must be >= 0 (0: always take Ray Data's shards)")
        if self.evaluate_in_process_rows < 0:
            raise ConfigError(
                f"train.evaluate_in_process_rows={self.evaluate_in_process_rows} must be >= 0 (0: always evaluate in "
                "a Ray Data actor pool)"
            )
        self._check_held_out_splits()
        return self

    def _check_held_out_splits(self) -> None:
        """The training window and the validation/test hold-outs, dated or stratified."""
        if self.first_date and self.last_date and self.first_date > self.last_date:
            raise ConfigError(f"train.first_date={self.first_date} is after train.last_date={self.last_date}")
        if self.validation_days < 1 or self.test_days < 1:
            raise ConfigError("train.validation_days and train.test_days must be at least 1")
        for name in ("validation_fraction", "test_fraction"):
            fraction = getattr(self, name)
            if not 0.0 < fraction < 0.5:
                raise ConfigError(f"train.{name}={fraction} must be in (0, 0.5)")


@dataclass(frozen=True)
class ScoreSettings:
    table: str = S.TRANSACTIONS
    model: str = S.TRANSACTIONS
    # Source columns copied into `flagged` besides the keys, score and reasons.
    allow_columns: tuple[str, ...] = (S.ACCOUNT_ID, S.EVENT_TS, S.AMOUNT, S.MERCHANT_CATEGORY, S.COUNTRY)
    # Of the copied columns (keys or allowed), these, besides the feature spec's `sensitive`, are
    # replaced by a salted sha256 ("hash") or left out ("drop"); a reason never shows their value.
    sensitive_columns: tuple[str, ...] = ()
    sensitive_action: str = S.SENSITIVE_HASH
    top_reasons: int = 3
    # Key columns copied into `flagged` (and its record_key); empty: the feature spec's `keys`, or for a
    # bundle without a spec whichever of transaction_id, account_id, event_ts, event_date, record_id the source has.
    key_columns: tuple[str, ...] = ()
    # Partition column a run filters on (--run-date / --from --to); a source without it is scored
    # whole. None: the model's feature spec's date_column (event_date for a bundle without a spec).
    date_column: str | None = None
    # The secret key of the keyed hash (HMAC-SHA256) that replaces sensitive values: from
    # $LAKESCORE_HASH_KEY, or read from hash_key_file. Required whenever a copied column is
    # sensitive (a run refuses to start without it), so that hashes of guessable ids cannot be
    # recomputed; keep it across nights, so that hashes join from night to night. Kept out of the
    # settings' repr, so that a logged or printed Settings never shows it.
    hash_key: str = field(default="", repr=False)
    hash_key_file: Path | None = None
    # Row floors a date partition must reach before a run writes anything (a run below them
    # fails, exit 3; `--allow-empty` lifts both for a night that is legitimately empty):
    # at least this many rows (1: a missing or empty partition fails)...
    min_rows: int = 1
    # ...and at least this fraction of the median rows_read of the slice's last complete runs
    # (0: no relative floor), over this many trailing runs.
    min_fraction_of_median: float = 0.0
    median_window: int = 7
    # Flagged rows of a run that never published (killed, or the loser of a race on its slice)
    # are invisible; the next run of the slice deletes them once they are this old. Longer than
    # any run takes, so that it never deletes the rows of a run still going.
    orphan_grace_hours: float = 24.0
    # How a run reads the source's rows: "files" (Spark lists and schedules the partition's files,
    # Python reads them with pyarrow and scores, only flagged rows return to the JVM), "udf"
    # (Spark scans, an Arrow UDF scores: every source Spark can read), or "auto": "files" where
    # it is exact (see pipelines.nightly.choose_read; the reason is logged when it is not).
    read_path: str = "auto"
    # With the files path: one Spark task reads about this many bytes of Parquet (whole row
    # groups; a file is split only between its row groups).
    read_task_bytes: int = 128 * 1024 * 1024

    def validated(self) -> "ScoreSettings":
        _check_source(self.table, "score.table")
        # Any column name (`Temp C`): scoring quotes every one it names (udfs.flagged.quoted).
        for column in self.allow_columns + self.sensitive_columns + self.key_columns:
            if not isinstance(column, str) or not column.strip():
                raise ConfigError(
                    f"an empty column name in score.allow_columns/sensitive_columns/key_columns ({column!r}); "
                    "remove it or name the column"
                )
        if self.date_column is not None:
            check_identifier(self.date_column, "score.date_column")
        _require_choice("score.sensitive_action", self.sensitive_action, S.SENSITIVE_ACTIONS)
        _require_choice("score.read_path", self.read_path, READ_PATHS)
        _require_positive(self, "score", "top_reasons", "median_window", "read_task_bytes")
        if self.min_rows < 0:
            raise ConfigError(f"score.min_rows={self.min_rows} is negative; use 0 for no absolute floor")
        if not (self.min_fraction_of_median >= 0.0 and math.isfinite(self.min_fraction_of_median)):
            raise ConfigError(
                f"score.min_fraction_of_median={self.min_fraction_of_median} is not a fraction >= 0; "
                "e.g. 0.5 fails a night with under half the usual rows, 0 turns the check off"
            )
        if not (self.orphan_grace_hours >= 0.0 and math.isfinite(self.orphan_grace_hours)):
            raise ConfigError(
                f"score.orphan_grace_hours={self.orphan_grace_hours} is not a number of hours >= 0; make it longer "
                "than the longest run (default 24)"
            )
        if self.hash_key_file is not None and not self.hash_key:
            key = _read_secret(self.hash_key_file, "score.hash_key_file", "the hash key", "LAKESCORE_HASH_KEY")
            return dataclasses.replace(self, hash_key=key)
        return self


@dataclass(frozen=True)
class RetrainSettings:
    # The challenger must beat the champion's holdout AUCPR by at least this much...
    min_aucpr_gain: float = 0.005
    # ...without its precision at threshold falling more than this below the champion's.
    precision_tolerance: float = 0.0
    # `retrain --reproduce`: largest metric difference still reported as a match (DDP with
    # streamed shards is reproducible to float rounding, not bit for bit).
    reproduce_tolerance: float = 0.01

    def validated(self) -> "RetrainSettings":
        # Nothing to refuse: a negative gain or tolerance is a (lenient or strict) policy, not an error.
        return self


SQL_AUTH_MODES = ("none", "password")


@dataclass(frozen=True)
class SqlSettings:
    """`lakescore serve-sql`: the Thrift JDBC/ODBC endpoint analysts query (lakescore/sql_server.py)."""

    # Loopback by default: only this machine's users reach it.
    host: str = "127.0.0.1"
    port: int = 10000
    # "none", or "password": the shared secret below, checked in the JVM (hive.server2.authentication=CUSTOM).
    # "none" off loopback is refused at start (lakescore.sql_server.check_authentication) unless
    # allowed below or HiveServer2's own LDAP/Kerberos is configured through spark.conf (README).
    auth: str = "none"
    user: str = "analyst"
    # From $LAKESCORE_SQL_PASSWORD, or read from password_file; never logged.
    password: str = field(default="", repr=False)
    password_file: Path | None = None
    # auth = "none" on a host other than loopback lets anyone who reaches the port read the lake.
    allow_unauthenticated_remote: bool = False

    def validated(self) -> "SqlSettings":
        _require_choice("sql.auth", self.auth, SQL_AUTH_MODES)
        if not 0 < self.port < 65536:
            raise ConfigError(f"sql.port={self.port} is not a TCP port; use 1..65535 (default 10000)")
        settings = self
        if self.password_file is not None and not self.password:
            password = _read_secret(self.password_file, "sql.password_file", "the password", "LAKESCORE_SQL_PASSWORD")
            settings = dataclasses.replace(self, password=password)
        if settings.auth == "password" and not settings.password:
            raise ConfigError(
                "sql.auth='password' needs a password: set LAKESCORE_SQL_PASSWORD or sql.password_file "
                "(a file readable by the server's user only)"
            )
        return settings


@dataclass(frozen=True)
class ReportSettings:
    # After a run publishes, write the night's HTML report to <lake.root>/reports/<source>/<model>/<date>.html
    # (pipelines/report.py); a report that fails logs a warning and never fails the published night.
    enabled: bool = True
    # Nights of the model's slice a report shows: flags per night, PSI per feature across nights.
    runs: int = 30

    def validated(self) -> "ReportSettings":
        _require_positive(self, "report", "runs")
        return self


# catalog.url's scheme: the one database a shared metastore may be on (its JDBC driver is in jars/lock.toml).
POSTGRESQL_URL_PREFIX = "jdbc:postgresql://"


@dataclass(frozen=True)
class CatalogSettings:
    """Where the Hive metastore (the catalog of the lake's tables) keeps its data (lakescore/metastore.py)."""

    # JDBC URL of a PostgreSQL database holding a Hive metastore schema (`lakescore metastore
    # init` creates it), e.g. jdbc:postgresql://db.internal:5432/metastore. Empty: the embedded
    # Derby database under the lake root, which admits one process at a time.
    url: str = ""
    user: str = "hive"
    # From $LAKESCORE_CATALOG_PASSWORD or password_file, never from a flag (flags show in `ps`);
    # kept out of repr and logs, and handed to the JVM after it starts, never on its command line.
    password: str = field(default="", repr=False)
    password_file: Path | None = None

    def validated(self) -> "CatalogSettings":
        if not self.url:
            return self
        if not self.url.startswith(POSTGRESQL_URL_PREFIX) or len(self.url) == len(POSTGRESQL_URL_PREFIX):
            raise ConfigError(
                f"catalog.url={self.url!r} is not a PostgreSQL JDBC URL; use "
                f"{POSTGRESQL_URL_PREFIX}HOST:PORT/DATABASE, or leave it empty for the embedded Derby metastore"
            )
        if not self.user:
            raise ConfigError("catalog.user is empty; name the PostgreSQL role the metastore logs in as")
        if self.password_file is not None and not self.password:
            password = _read_secret(
                self.password_file, "catalog.password_file", "the metastore password", "LAKESCORE_CATALOG_PASSWORD"
            )
            return dataclasses.replace(self, password=password)
        return self


@dataclass(frozen=True)
class Settings:
    lake: LakeSettings = field(default_factory=LakeSettings)
    spark: SparkSettings = field(default_factory=SparkSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    report: ReportSettings = field(default_factory=ReportSettings)
    sql: SqlSettings = field(default_factory=SqlSettings)
    catalog: CatalogSettings = field(default_factory=CatalogSettings)

    def validated(self) -> "Settings":
        """Every section checked, in order (ConfigError on the first bad value), and normalised."""
        return dataclasses.replace(self, **{f.name: getattr(self, f.name).validated() for f in dataclasses.fields(self)})

    def table(self, name: str) -> str:
        """Qualify `name` with the lake's database unless it already names one."""
        check_table_name(name)
        return name if "." in name else f"{self.lake.database}.{name}"

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """A copy with `section.key` overrides applied and validated."""
        return _apply(self, overrides, source="override").validated()


def _read_secret(path: Path, setting: str, what: str, variable: str) -> str:
    """The secret a `*_file` setting names, stripped; a ConfigError naming the setting if unreadable."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"{setting} {path} cannot be read ({exc.strerror}); point it at the file holding {what}, or set {variable}"
        ) from None


def _require_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of: {', '.join(allowed)}")


def _require_positive(section_settings: Any, section: str, *keys: str) -> None:
    for key in keys:
        value = getattr(section_settings, key)
        if value <= 0:
            raise ConfigError(f"{section}.{key}={value} must be a positive number")


def _require_layer_sizes(name: str, sizes: tuple[int, ...], example: str) -> None:
    if not sizes or any(h <= 0 for h in sizes):
        raise ConfigError(f"{name}={sizes} must list positive layer sizes, e.g. {example}")


def _check_source(value: str, name: str) -> None:
    """A catalog table name, or a path (a Delta table or a Parquet snapshot) that resolve_source checks."""
    if isinstance(value, str) and ("/" in value or value.startswith("file:")):
        return
    check_table_name(value, name)


# Passwords that come from the environment or a file only, never from a flag.
_PASSWORDS = {"catalog.password": "LAKESCORE_CATALOG_PASSWORD", "sql.password": "LAKESCORE_SQL_PASSWORD"}


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
        settings = _apply(settings, _read_toml(Path(path)), source=str(path))
    settings = _apply(settings, _from_environment(environ), source="environment")
    for secret in _PASSWORDS.keys() & (overrides or {}).keys():
        raise ConfigError(
            f"{secret} cannot be given on the command line, where `ps` shows it to every user; "
            f"set {_PASSWORDS[secret]} or {secret}_file"
        )
    settings = _apply(settings, overrides or {}, source="command line")
    return settings.validated()


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML settings file as `{"section.key": value}`."""
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
    return flat


def _from_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """`LAKESCORE_<SECTION>_<KEY>` variables of known sections as `{"section.key": value}`."""
    values = {}
    sections = {f.name for f in dataclasses.fields(Settings)}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        section, _, key = name[len(ENV_PREFIX):].lower().partition("_")
        if section in sections and key:
            values[f"{section}.{key}"] = value
    # The hash key's own name, as deployments' secret stores spell it.
    if ENV_PREFIX + "HASH_KEY" in environ:
        values["score.hash_key"] = environ[ENV_PREFIX + "HASH_KEY"]
    return values


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


def _check_writable(root: Path) -> None:
    probe = root
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(
            f"lake root {str(root)!r} is not writable (checked {str(probe)!r}); "
            "set lake.root or LAKESCORE_LAKE_ROOT to a folder you can write"
        )
