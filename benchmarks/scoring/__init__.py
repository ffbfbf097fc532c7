"""Scoring throughput and executor memory, side by side on one generated table and one model.

    python -m benchmarks.scoring --rows 2000000 --memory-rows 2000000,20000000
    python -m benchmarks.scoring --rows 200000 --repeat 1 --warmup 1 --runs 1 --memory-rows 200000,400000   # a quick check

Rows/s of the nightly job's scoring stage (a) against a no-op pandas UDF (b: Spark's transfer
floor), its variants, UDFs that run only the model (m, f), `predict_batch_udf` (c) and one
process with pyarrow (d): `workloads`. Each Spark workload runs in Spark applications of its own
(--warmup runs, then --runs measured runs; --repeat applications per workload, taking turns),
with the CPU seconds of each stage (machine, JVM, Python workers, JIT compilers) read by
`probes`. Then the peak memory of the Python workers and the JVM over the day and copies of it
(`memory`). Targets: (a) >= 0.9 x (b), (a) > (c), memory flat with the rows. `report` prints
the tables; the measured figures, with dates and commands, are in docs/measurements.md.
"""

from benchmarks.scoring.cli import main

__all__ = ["main"]
