"""Training quality and throughput: the issue's targets with IsolationForest beside them, and
rows/s of Ray Train against a plain single-process torch loop.

    python -m benchmarks.training                 # the full table (a generated week)
    python -m benchmarks.training --days 4 --rows-per-day 5000 --skip shuttle

Quality: each model is trained through the real job entry point (`run_train`) on lake tables:
the generated week of transactions (mlp), river's Shuttle (mlp and autoencoder) and
scikit-learn's breast cancer (mlp); figures are on each table's held-out test split, with an
IsolationForest fitted on the same training split. The transactions mlp is trained again with
negative downsampling (`--negative-sample-rates`, default 0.25: every anomaly and a quarter of the
normal training rows, the loss reweighted), on the same whole test split, so the two rows compare.

Throughput: the transactions training split, preprocessed and materialized once, trained for a
few epochs by (a) a plain torch loop over in-memory tensors in this process (one torch thread,
like a one-CPU Ray worker), (b) Ray Train with
one worker and (c) with two (DDP, gloo). Same model, batch size and optimiser. Rows/s per epoch
counts training steps only (not validation or checkpoints); the first epoch includes warm-up.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lakescore.config import Settings, load_settings

# Targets from the issue: (table, kind, metric, target, published IsolationForest figure)
TARGETS = [
    ("transactions", "mlp", "aucpr", 0.90, None),
    ("shuttle", "mlp", "aucpr", 0.99, None),
    ("shuttle", "autoencoder", "aucroc", 0.99, "IsolationForest published: AUCROC 0.996, AUCPR 0.976"),
    ("breast_cancer", "mlp", "aucpr", 0.97, None),
]
TRANSACTIONS_MARGIN = 0.30
THROUGHPUT_EPOCHS = 3


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="generated days of transactions")
    parser.add_argument("--rows-per-day", type=int, default=40_000)
    parser.add_argument("--lake", type=Path, default=None, help="reuse this lake root (kept), else a temporary one")
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated: transactions, shuttle, breast_cancer, quality, throughput, generate "
        "(reuse the tables already in --lake)",
    )
    parser.add_argument(
        "--negative-sample-rates",
        default="0.25",
        help="comma-separated train.negative_sample_rate values the transactions mlp is trained again with ('' for none)",
    )
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.negative_sample_rates.split(",") if r.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from benchmarks.library import ray_cluster, run_generate, run_load_benchmarks
    from lakescore.spark import build_spark_session

    root = args.lake or Path(tempfile.mkdtemp(prefix="lakescore-bench-training-"))
    settings = load_settings(
        overrides={
            "lake.root": str(root),
            "generate.days": args.days,
            "generate.rows_per_day": args.rows_per_day,
            "generate.accounts": max(1000, args.rows_per_day // 4),
        },
        environ={},
    )
    spark = build_spark_session(settings, app_name="lakescore-bench-training")
    spark.sparkContext.setLogLevel("ERROR")
    results: dict = {"quality": [], "throughput": []}
    try:
        started = time.perf_counter()
        if "transactions" not in skip and "generate" not in skip:
            run_generate(spark, settings)
        benchmarks = [t for t in ("shuttle", "breast_cancer") if t not in skip and "generate" not in skip]
        if benchmarks:
            run_load_benchmarks(spark, settings, benchmarks)
        print(f"lake {root}: tables written in {time.perf_counter() - started:.0f}s", flush=True)
        with ray_cluster(settings, spark):
            for table, kind, metric, target, published in TARGETS:
                if table in skip or "quality" in skip:
                    continue
                results["quality"].append(_quality(spark, settings, table, kind, metric, target, published))
                if table == "transactions":
                    for rate in rates:
                        results["quality"].append(_quality(spark, settings, table, kind, metric, target, published, rate))
            if results["quality"]:
                _print_quality(results["quality"])
            by_type = next((r["by_type"] for r in results["quality"] if r["table"] == "transactions"), None)
            if by_type:
                _print_by_type(by_type)

            if "throughput" not in skip and "transactions" not in skip:
                results["throughput"] = _throughput(spark, settings)
                _print_throughput(results["throughput"])
    finally:
        spark.stop()
    return results


# --- quality --------------------------------------------------------------------------------


def _quality(
    spark, settings: Settings, table: str, kind: str, metric: str, target: float, published: str | None, rate: float = 1.0
) -> dict:
    from benchmarks.library import run_train

    overrides = {"train.table": table, "train.kind": kind, "train.model_name": f"bench_{table}_{kind}",
                 "train.negative_sample_rate": rate}
    if table == "breast_cancer":
        overrides["train.batch_size"] = "32"  # 340 training rows: one step per epoch would not train
    elif table == "shuttle":
        overrides["train.batch_size"] = "256"
    started = time.perf_counter()
    run, _ = run_train(spark, settings.with_overrides(overrides))
    test = run.evaluation["test"]
    history = run.bundle.manifest.training.history
    return {
        "table": table,
        "kind": kind if rate == 1.0 else f"{kind} neg{rate:g}",
        "trained_rows": run.bundle.manifest.training.trained_rows,
        "error": (test["model"].get("aucpr_error"), test["model"].get("aucroc_error")),
        "metric": metric,
        "target": target,
        "published": published,
        "model": test["model"],
        "baseline": test["isolation_forest"],
        "epochs": len(history),
        "seconds": time.perf_counter() - started,
        "by_type": run.evaluation["test_by_anomaly_type"] if table == "transactions" else None,
    }


def _print_quality(rows: list[dict]) -> None:
    print("\nQuality on each table's test split (IsolationForest fitted on the same training split)")
    header = f"{'table':<14}{'model':<12}{'AUCPR':>8}{'AUCROC':>8}{'P@thr':>7}{'R@thr':>7}{'F1':>7}{'P@k':>7}" \
             f"{'IF AUCPR':>10}{'IF AUCROC':>10}  {'target':<22}{'met':<5}{'epochs':>7}{'time':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        m, b = r["model"], r["baseline"]
        value = m[r["metric"]]
        goal = f"{r['metric']} >= {r['target']}"
        met = value >= r["target"]
        if r["table"] == "transactions":
            goal += f", +{TRANSACTIONS_MARGIN} IF"
            met = met and m["aucpr"] - b["aucpr"] >= TRANSACTIONS_MARGIN
        print(
            f"{r['table']:<14}{r['kind']:<12}{m['aucpr']:>8.4f}{m['aucroc']:>8.4f}{m['precision']:>7.3f}{m['recall']:>7.3f}"
            f"{m['f1']:>7.3f}{m['precision_at_k']:>7.3f}{b['aucpr']:>10.4f}{b['aucroc']:>10.4f}  {goal:<22}"
            f"{'yes' if met else 'NO':<5}{r['epochs']:>7}{r['seconds']:>6.0f}s"
        )
    for r in rows:
        if r["published"]:
            print(f"  {r['table']} {r['kind']}: {r['published']}")
    for r in rows:
        aucpr_error, aucroc_error = r["error"]
        if aucpr_error is not None:
            print(f"  {r['table']} {r['kind']}: trained on {r['trained_rows']:,} rows; binning error bound "
                  f"AUCPR +-{aucpr_error:.2g}, AUCROC +-{aucroc_error:.2g}")


def _print_by_type(by_type: dict) -> None:
    print("\nTransactions test split per anomaly type (recall at the threshold; AUCPR of the type against normal rows)")
    print(f"{'type':<20}{'rows':>6}{'mlp recall':>12}{'mlp AUCPR':>11}{'IF recall':>11}{'IF AUCPR':>10}")
    for name, m in by_type["model"].items():
        b = by_type["isolation_forest"].get(name, {})
        print(
            f"{name:<20}{m['rows']:>6}{m['recall']:>12.3f}{m['aucpr']:>11.4f}"
            f"{b.get('recall', math.nan):>11.3f}{b.get('aucpr', math.nan):>10.4f}"
        )


# --- throughput -----------------------------------------------------------------------------


def _throughput(spark, settings: Settings) -> list[dict]:
    """Rows/s per epoch: a plain torch loop vs Ray Train with 1 and 2 workers, same data and model."""
    from benchmarks.library import resolve_training_input
    from training.pipeline import prepare_datasets
    from training.trainer import build_loss, fit_model, make_architecture

    t = settings.train
    inputs = resolve_training_input(spark, settings.with_overrides({"train.table": "transactions"}))
    data = prepare_datasets(settings, inputs)
    architecture = make_architecture("mlp", len(data.features), t)
    train_rows = data.counts["train"]["rows"]
    pos_weight = min((train_rows - data.counts["train"]["anomalies"]) / data.counts["train"]["anomalies"], t.max_pos_weight)
    fixed = settings.with_overrides({"train.epochs": THROUGHPUT_EPOCHS, "train.patience": THROUGHPUT_EPOCHS + 1})

    results = []
    x = np.concatenate([b["x"] for b in data.train_xy.iter_batches(batch_format="numpy", batch_size=None)])
    y = np.concatenate([b["y"] for b in data.train_xy.iter_batches(batch_format="numpy", batch_size=None)])
    results.append({"runner": "plain torch, 1 process", "rows_per_s": _plain_loop(x, y, architecture, fixed, pos_weight, build_loss)})
    for workers in (1, 2):
        run_settings = fixed.with_overrides({"ray.num_workers": workers})
        trained = fit_model(
            data.train_xy,
            data.validation_xy,
            architecture=architecture,
            settings=run_settings,
            run_name=f"bench-throughput-{workers}w-{int(time.time())}",
            pos_weight=pos_weight,
        )
        results.append({"runner": f"Ray Train, {workers} worker{'s' if workers > 1 else ''}", "rows_per_s": [h["train_rows_per_s"] for h in trained.history]})
    for r in results:
        r["rows"] = train_rows
    return results


def _plain_loop(x: np.ndarray, y: np.ndarray, architecture: dict, settings: Settings, pos_weight: float, build_loss) -> list[float]:
    """The single-process reference: the same model, loss, optimiser and batch size over in-memory tensors."""
    from lakescore.models import build_model

    t = settings.train
    torch.manual_seed(t.seed)
    # One thread, like a Ray worker with one CPU (Ray sets OMP_NUM_THREADS to the worker's CPUs).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model(architecture)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    loss_fn = build_loss("mlp", pos_weight, torch.device("cpu"))
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    generator = torch.Generator().manual_seed(t.seed)
    rates = []
    for _ in range(t.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        for i in range(0, len(xs), t.batch_size):
            index = order[i : i + t.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xs[index]), ys[index]).backward()
            optimizer.step()
        rates.append(len(xs) / (time.perf_counter() - started))
    torch.set_num_threads(threads)
    return rates


def _print_throughput(rows: list[dict]) -> None:
    if not rows:
        return
    print(f"\nTraining throughput on the transactions training split ({rows[0]['rows']:,} rows), rows/s per epoch")
    plain = statistics.median(rows[0]["rows_per_s"][1:] or rows[0]["rows_per_s"])
    epochs = max(len(r["rows_per_s"]) for r in rows)
    header = f"{'runner':<26}" + "".join(f"{'epoch ' + str(i):>12}" for i in range(epochs)) + f"{'median 1+':>12}{'plain / this':>14}"
    print(header)
    print("-" * len(header))
    for r in rows:
        later = r["rows_per_s"][1:] or r["rows_per_s"]
        median = statistics.median(later)
        cells = "".join(f"{v:>12,.0f}" for v in r["rows_per_s"])
        print(f"{r['runner']:<26}{cells}{median:>12,.0f}{plain / median:>13.2f}x")


if __name__ == "__main__":
    main()
