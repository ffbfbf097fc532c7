"""A class-data-sharing archive of what a Spark driver loads, made once per checkout for the suite's JVMs.

Every job a test runs in a subprocess starts a JVM that loads about 19,000 classes (Spark, Hive,
Derby, Jackson) from jars before it does any work; mapped from an archive, they load without
parsing or verifying (docs/measurements.md, "Test suite"). The archive depends on the JDK and on the
exact jars of the class path, so its name carries a digest of both: a new pyspark or JDK makes a
new one. Delta's classes come from `spark.jars` through Spark's own class loader and stay outside it.

Run as a script, this module is the small job whose classes the archive records.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# A JVM whose class path differs from the archive's (a job given an extra driver class path) runs
# without it; these keep the JVM from printing that on every start.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def archive_flags(jars_dir: Path, base_flags: str) -> str:
    """JVM flags for SPARK_SUBMIT_OPTS: `base_flags` plus the archive's, made first if missing.

    Returns `base_flags` alone when the archive cannot be made (the JVM still runs, only slower).
    """
    import pyspark

    spark_jars = sorted(Path(pyspark.__file__).parent.joinpath("jars").glob("*.jar"))
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
    digest = hashlib.sha256("\n".join([java, base_flags, *(f"{p.name} {p.stat().st_size}" for p in spark_jars)]).encode())
    archive = jars_dir / "cds" / f"spark-driver-{digest.hexdigest()[:16]}.jsa"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(f".{os.getpid()}.partial")
        with tempfile.TemporaryDirectory() as lake_root:
            made = subprocess.run(
                [sys.executable, __file__, lake_root],
                env={**os.environ, "SPARK_SUBMIT_OPTS": f"{base_flags} -XX:ArchiveClassesAtExit={partial} {QUIET}"},
                capture_output=True, text=True, timeout=600,
            )
        if made.returncode != 0 or not partial.exists():
            print(f"tests: no class-data-sharing archive ({made.stderr[-500:]}); JVMs start without it", file=sys.stderr)
            partial.unlink(missing_ok=True)
            return base_flags
        partial.replace(archive)
    return f"{base_flags} -XX:SharedArchiveFile={archive} {QUIET}"


def _record(lake_root: str) -> None:
    """What a test's job does first: a session on the Derby catalog, a query, a Delta write and read."""
    from lakescore.config import load_settings
    from lakescore.spark import build_spark_session

    settings = load_settings(
        overrides={"lake.root": lake_root, "spark.master": "local[2]", "spark.shuffle_partitions": "2"}, environ={}
    )
    spark = build_spark_session(settings, app_name="lakescore-class-archive")
    spark.sql("CREATE DATABASE IF NOT EXISTS lakescore")
    spark.range(1000).selectExpr("id % 7 AS k", "id").groupBy("k").count().collect()
    table = f"{lake_root}/t"
    spark.range(100).write.format("delta").mode("overwrite").save(table)
    spark.read.format("delta").load(table).count()
    spark.stop()


if __name__ == "__main__":
    _record(sys.argv[1])
