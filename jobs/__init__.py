"""Entry points: one spark-submit script per job, plus the `lakescore` CLI (jobs/cli.py)."""
