"""Training quality and throughput: the issue's targets with the baselines beside them, and
rows/s of Ray Train against a plain single-process torch loop.

    python -m benchmarks.training                 # the full table (a generated week)
    python -m benchmarks.training --days 4 --rows-per-day 5000 --skip shuttle

Quality: each model is trained through the real job entry point (`run_train`) on lake tables:
the generated week of transactions (mlp), river's Shuttle (mlp and autoencoder) and
scikit-learn's breast cancer (mlp); figures are on each table's held-out test split, with the
baselines (training.baselines: IsolationForest always; HistGradientBoostingClassifier and
MLPClassifier beside an mlp, ECOD beside the autoencoder) fitted on the same training split, and
the model's gap to the best of them in AUCPR points. The transactions mlp is trained again with
negative downsampling (`--negative-sample-rates`, default 0.25: every anomaly and a quarter of the
normal training rows, the loss reweighted), on the same whole test split, so the two rows compare.

Throughput: the transactions training split, preprocessed and materialized once, trained for a
few epochs by (a) a plain torch loop over in-memory tensors in this process (one torch thread,
like a one-CPU Ray worker), (b) Ray Train with one worker streaming its shard every epoch
(train.worker_cache_mb=0, the path before the shard cache), (c) with one worker holding its
shard in memory (the default) and (d) with two (DDP, gloo), one CPU and one torch thread each.
Same model, batch size per worker and optimiser; all at train.batch_size, then again at a
larger batch per worker (LARGE_BATCH; not the streamed worker), where 2 workers synchronise
four times less often per row. Rows/s per epoch counts training steps only (not validation or
checkpoints); the first epoch includes warm-up and, cached, the shard's read.
A second table breaks an epoch into stages (training.trainer.StageClock) to name the bottleneck;
docs/scaling.md keeps the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lakescore.config import Settings, load_settings
from training import baselines as B

# Targets from the issue: (table, kind, metric, target, published IsolationForest figure)
TARGETS = [
    ("transactions", "mlp", "aucpr", 0.90, None),
    ("shuttle", "mlp", "aucpr", 0.99, None),
    ("shuttle", "autoencoder", "aucroc", 0.99, "IsolationForest published: AUCROC 0.996, AUCPR 0.976"),
    ("breast_cancer", "mlp", "aucpr", 0.97, None),
]
TRANSACTIONS_MARGIN = 0.30
# Column heads of the baselines in the quality table.
SHORT = {B.ISOLATION_FOREST: "IF", B.HIST_GRADIENT_BOOSTING: "HGB", B.MLP_CLASSIFIER: "MLPC", B.ECOD_DETECTOR: "ECOD"}
THROUGHPUT_EPOCHS = 5
# The throughput runners also train with this batch per worker: 2 workers synchronise once per
# step, and at the default batch those waits cost more than the second core gives on a shared
# 2-core host (docs/scaling.md has the arithmetic).
LARGE_BATCH = 4096


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=7, help="generated days of transactions")
    parser.add_argument("--rows-per-day", type=int, default=40_000)
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help=f"throughput: comma-separated batches per worker (default: train.batch_size, then {LARGE_BATCH})",
    )
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
        # Ray starts its workers at niceness 15, below the plain loop in this process: on a host shared
        # with other work that measures the host's load, not Ray. Same priority for both, unless the
        # caller sets it (RAY_worker_niceness=15 measures Ray's default); read when Ray starts here.
        os.environ.setdefault("RAY_worker_niceness", "0")
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
                batches = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else \
                    [settings.train.batch_size, LARGE_BATCH]
                results["throughput"] = _throughput(spark, settings, batches)
                for batch_size in batches:
                    _print_throughput([r for r in results["throughput"] if r["batch_size"] == batch_size])
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
        "baselines": {name: test[name] for name in B.in_report(test)},
        "best_baseline": run.evaluation["baselines"]["best"],
        "gap_points": run.evaluation["baselines"]["gap_aucpr_points"],
        "epochs": len(history),
        "seconds": time.perf_counter() - started,
        "by_type": run.evaluation["test_by_anomaly_type"] if table == "transactions" else None,
    }


def _print_quality(rows: list[dict]) -> None:
    print("\nQuality on each table's test split (baselines fitted on the same training split; AUCPR per baseline, "
          "- where a run has none; gap: model minus the best baseline, in AUCPR points)")
    shown = [name for name in B.ALL if any(name in r["baselines"] for r in rows)]
    header = f"{'table':<14}{'model':<12}{'AUCPR':>8}{'AUCROC':>8}{'P@thr':>7}{'R@thr':>7}{'F1':>7}{'P@k':>7}" \
             + "".join(f"{SHORT[name] + ' AUCPR':>11}" for name in shown) + f"{'gap pts':>9}" \
             f"  {'target':<22}{'met':<5}{'epochs':>7}{'time':>7}"
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
        cells = "".join(f"{r['baselines'][name]['aucpr']:>11.4f}" if name in r["baselines"] else f"{'-':>11}"
                        for name in shown)
        print(
            f"{r['table']:<14}{r['kind']:<12}{m['aucpr']:>8.4f}{m['aucroc']:>8.4f}{m['precision']:>7.3f}{m['recall']:>7.3f}"
            f"{m['f1']:>7.3f}{m['precision_at_k']:>7.3f}{cells}{r['gap_points']:>+9.2f}  {goal:<22}"
            f"{'yes' if met else 'NO':<5}{r['epochs']:>7}{r['seconds']:>6.0f}s"
        )
    print("  " + "; ".join(f"{SHORT[name]}: {name}" for name in shown))
    for r in rows:
        if r["best_baseline"]:
            print(f"  {r['table']} {r['kind']}: best baseline {r['best_baseline']}, gap {r['gap_points']:+.2f} AUCPR points")
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

# (runner, Ray workers or None for the plain loop, train.worker_cache_mb or None for the setting's
# default, whether it runs at every batch size or only at the first)
RUNNERS = [
    ("plain torch, 1 process", None, None, True),
    ("Ray Train, 1 worker, streamed", 1, 0, False),
    ("Ray Train, 1 worker", 1, None, True),
    ("Ray Train, 2 workers", 2, None, True),
]
# The targets: Ray Train with 1 worker at least this fraction of the plain loop, 2 workers above 1.
ONE_WORKER_TARGET = 0.8


def _throughput(spark, settings: Settings, batch_sizes: list[int]) -> list[dict]:
    """Rows/s per epoch and seconds per stage: a plain torch loop vs Ray Train with 1 worker
    (streamed every epoch, and cached: the default) and 2 workers, same data, model and batch
    size per worker, for each of `batch_sizes`; the training split is prepared once."""
    from benchmarks.library import resolve_training_input
    from training.pipeline import prepare_datasets
    from training.trainer import build_loss, fit_model, make_architecture

    t = settings.train
    inputs = resolve_training_input(spark, settings.with_overrides({"train.table": "transactions"}))
    started = time.perf_counter()
    data = prepare_datasets(settings, inputs)
    prepare_seconds = time.perf_counter() - started
    architecture = make_architecture("mlp", len(data.features), t)
    train_rows = data.counts["train"]["rows"]
    pos_weight = min((train_rows - data.counts["train"]["anomalies"]) / data.counts["train"]["anomalies"], t.max_pos_weight)
    x = np.concatenate([b["x"] for b in data.train_xy.iter_batches(batch_format="numpy", batch_size=None)])
    y = np.concatenate([b["y"] for b in data.train_xy.iter_batches(batch_format="numpy", batch_size=None)])

    results = []
    for batch_size in batch_sizes:
        fixed = settings.with_overrides(
            {"train.epochs": THROUGHPUT_EPOCHS, "train.patience": THROUGHPUT_EPOCHS + 1, "train.batch_size": batch_size}
        )
        # The plain loop runs again after every Ray run (it takes seconds): each Ray run is compared
        # with the plain epochs just before and after it, as the shared host's load drifts.
        plain_runs = [_plain_loop(x, y, architecture, fixed, pos_weight, build_loss)]
        for runner, workers, cache_mb, every_batch in RUNNERS:
            if not every_batch and batch_size != batch_sizes[0]:
                continue
            if workers is None:
                plain = {"runner": runner, "workers": 1, "batch_size": batch_size, "history": plain_runs[0]}
                results.append(plain)
                continue
            overrides = {"ray.num_workers": workers, "ray.cpus_per_worker": 1}
            if cache_mb is not None:
                overrides["train.worker_cache_mb"] = cache_mb
            trained = fit_model(
                data.train_xy,
                data.validation_xy,
                architecture=architecture,
                settings=fixed.with_overrides(overrides),
                run_name=f"bench-throughput-{workers}w-{cache_mb}-{batch_size}-{int(time.time())}",
                pos_weight=pos_weight,
            )
            plain_runs.append(_plain_loop(x, y, architecture, fixed, pos_weight, build_loss))
            adjacent = [h["train_rows_per_s"] for run in plain_runs[-2:] for h in run[1:]]
            results.append({"runner": runner, "workers": workers, "batch_size": batch_size, "history": trained.history,
                            "plain_rows_per_s": statistics.median(adjacent)})
        plain["history"] = [h for run in plain_runs for h in run]  # every plain epoch; the first run's first is warm-up
    for r in results:
        r["rows"], r["prepare_seconds"] = train_rows, prepare_seconds
        r["rows_per_s"] = [h["train_rows_per_s"] for h in r["history"]]
    return results


def _plain_loop(x: np.ndarray, y: np.ndarray, architecture: dict, settings: Settings, pos_weight: float, build_loss) -> list[dict]:
    """The single-process reference: the same model, loss, optimiser and batch size over in-memory
    tensors; one history entry per epoch with rows/s and seconds per stage, as the workers report."""
    from lakescore.models import build_model

    t = settings.train
    torch.manual_seed(t.seed)
    # One thread, like a Ray worker with one CPU (the trainer sets torch's threads to ray.cpus_per_worker).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_model(architecture)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay)
    loss_fn = build_loss("mlp", pos_weight, torch.device("cpu"))
    xs, ys = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    generator = torch.Generator().manual_seed(t.seed)
    history = []
    for _ in range(t.epochs):
        started = time.perf_counter()
        stages = dict.fromkeys(("shuffle", "forward", "backward", "optimizer"), 0.0)
        model.train()
        order = torch.randperm(len(xs), generator=generator)
        for i in range(0, len(xs), t.batch_size):
            marks = [time.perf_counter()]
            index = order[i : i + t.batch_size]
            xb, yb = xs[index], ys[index]
            marks.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            marks.append(time.perf_counter())
            loss.backward()
            marks.append(time.perf_counter())
            optimizer.step()
            marks.append(time.perf_counter())
            for stage, begun, ended in zip(stages, marks, marks[1:]):
                stages[stage] += ended - begun
        seconds = time.perf_counter() - started
        history.append({"train_rows_per_s": len(xs) / seconds, "train_seconds": seconds,
                        **{f"{stage}_seconds": value for stage, value in stages.items()}})
    torch.set_num_threads(threads)
    return history


def _later(values: list[float]) -> float:
    """The median of the epochs after the first (which includes warm-up and, cached, the read)."""
    return statistics.median(values[1:] or values)


def _print_throughput(rows: list[dict]) -> None:
    if not rows:
        return
    print(f"\nTraining throughput on the transactions training split ({rows[0]['rows']:,} rows, batch {rows[0]['batch_size']} "
          f"per worker, one torch thread per process, Ray workers at niceness {os.environ.get('RAY_worker_niceness', 15)}), "
          "rows/s per epoch")
    epochs = THROUGHPUT_EPOCHS
    header = f"{'runner':<32}" + "".join(f"{'epoch ' + str(i):>11}" for i in range(epochs)) \
        + f"{'median 1+':>12}{'plain beside':>14}{'this / plain':>14}"
    print(header)
    print("-" * len(header))
    ratios = {}
    for r in rows:
        median = _later(r["rows_per_s"])
        # The plain row pools all its runs (one before the Ray runs, one after each); its epochs shown are the first run's.
        plain = r.get("plain_rows_per_s", median)
        ratios[r["runner"]] = median / plain
        cells = "".join(f"{v:>11,.0f}" for v in r["rows_per_s"][:epochs])
        print(f"{r['runner']:<32}{cells}{median:>12,.0f}{plain:>14,.0f}{median / plain:>13.2f}x")
    one, two = ratios.get("Ray Train, 1 worker"), ratios.get("Ray Train, 2 workers")
    if one and two:
        print(f"targets: 1 worker / plain = {one:.2f} (>= {ONE_WORKER_TARGET}: {'met' if one >= ONE_WORKER_TARGET else 'NOT met'}); "
              f"2 workers / 1 worker = {two / one:.2f}, each against the plain epochs beside it (> 1: {'met' if two > one else 'NOT met'})")

    print(f"\nSeconds per stage in an epoch (median of epochs 1+; Ray: rank 0's), and per step. Read, features and "
          f"preprocessing: once per run, {rows[0]['prepare_seconds']:.1f}s (prepare_datasets, before any runner).")
    stages = ("read", "to_tensor", "shuffle", "wait", "forward", "backward", "optimizer")
    header = f"{'runner':<32}{'epoch 0 read':>13}{'to_tensor':>10}" + "".join(f"{s:>10}" for s in stages[2:]) \
        + f"{'other':>8}{'total':>8}{'steps':>7}{'ms/step':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        h, first = r["history"], r["history"][0]
        figures = {s: _later([e.get(f"{s}_seconds", 0.0) for e in h]) for s in stages[2:]}
        total = _later([e["train_seconds"] for e in h])
        steps = math.ceil(r["rows"] / r["workers"] / r["batch_size"])
        other = total - sum(figures.values())
        print(f"{r['runner']:<32}{first.get('read_seconds', 0.0):>13.3f}{first.get('to_tensor_seconds', 0.0):>10.3f}"
              + "".join(f"{figures[s]:>10.3f}" for s in stages[2:])
              + f"{other:>8.3f}{total:>8.3f}{steps:>7}{1000 * total / steps:>9.2f}")


if __name__ == "__main__":
    main()
