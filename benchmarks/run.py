"""Run every benchmark in turn and print their tables: `make bench` (or python -m benchmarks.run).

Sizes are set so the whole run fits a 2-core machine in well under half an hour; each module
also runs alone with its own --help for other sizes.
"""

from __future__ import annotations

import importlib
import sys

MODULES = ["benchmarks.generate", "benchmarks.training", "benchmarks.scoring"]


def main() -> int:
    failed = []
    for name in MODULES:
        print(f"\n===== {name}", flush=True)
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            print(f"skipped: {exc}")
            failed.append(name)
            continue
        try:
            module.main([])
        except Exception as exc:  # one failing benchmark must not hide the others' tables
            print(f"FAILED: {type(exc).__name__}: {exc}")
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
