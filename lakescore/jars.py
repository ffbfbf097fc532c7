"""Resolve the Delta jars once into a project-local folder: `python -m lakescore.jars DEST`.

Runs Maven on jars/pom.xml (delta-spark for Spark 4.2 and its run-time dependencies), then drops
every jar whose artifact pyspark already ships (Parquet, log4j, snappy, ...): two versions of one
library on the class path is how clashes start. Run by `make jars`; idempotent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_VERSIONED = re.compile(r"^(?P<artifact>.+?)-\d[\w.\-]*\.jar$")


def artifact_of(jar_name: str) -> str:
    """`parquet-column-1.16.0.jar` -> `parquet-column`."""
    match = _VERSIONED.match(jar_name)
    return match.group("artifact") if match else jar_name.removesuffix(".jar")


def resolve(dest: Path, pom: Path) -> list[Path]:
    import pyspark

    spark_jars = Path(pyspark.__file__).parent / "jars"
    shipped = {artifact_of(p.name) for p in spark_jars.glob("*.jar")}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={tmp}",
                "-DincludeScope=runtime",
            ],
            check=True,
        )
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*.jar"):
            old.unlink()
        kept = []
        for jar in sorted(Path(tmp).glob("*.jar")):
            # RoaringBitmap's "shims" belongs to the RoaringBitmap version Spark replaces.
            if artifact_of(jar.name) in shipped or jar.name.startswith("shims-"):
                continue
            kept.append(Path(shutil.copy2(jar, dest / jar.name)))
    return kept


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    dest = Path(sys.argv[1]) if len(sys.argv) > 1 else root / ".jars"
    kept = resolve(dest, root / "jars" / "pom.xml")
    print(f"{len(kept)} jars in {dest}: " + ", ".join(p.name for p in kept))


if __name__ == "__main__":
    main()
