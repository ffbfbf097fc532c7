"""The nightly report: one self-contained HTML page per (source, model, night), for people.

Pure functions from small pandas frames to figures and to the page; no Spark, no I/O. The frames
come from `pipelines.report`, which aggregates `run_metrics` and the published `flagged` rows in
Spark and collects only what a page shows:

    metrics   run_metrics' long rows (RUN_METRICS_SCHEMA) of the model's last nights on the source,
              both roles, plus every run of the report's night (the pass's other model among them)
    reasons   per run_id and feature: flagged rows naming the feature among their reasons (`rows`),
              as their first reason (`first`), and the mean contribution (`mean_contribution`)
    overlap   flagged rows of the night's champion and shadow by record key: both, one only

What a page shows: the model and source versions; flags per night over the last runs; the night's
score distribution against the bundle's reference; PSI per feature across nights as a heat map,
the drifting features named; the top reasons; invalid values per feature; champion against shadow
when both ran. Reasons are feature names and counts: no value of a row, so no sensitive column's
value, ever reaches a page.

Figures are matplotlib `Figure`s drawn with the Agg canvas (no pyplot, no global state), embedded
as base64 PNG; the page is rendered through the Jinja2 template `templates/report.html.j2`
(package data), autoescaped. Nothing is fetched when the page opens: it works offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import importlib.resources
import io
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from lakescore import schemas as S

TEMPLATE = "report.html.j2"
# Rule of thumb of lakescore.drift.psi: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a large one.
PSI_MODERATE = 0.1
PSI_DRIFT = 0.25
# Colour scale of the PSI heat map: 0 to twice the drift line; larger values take the top colour.
PSI_SCALE_MAX = 2 * PSI_DRIFT
# The table under the flags figure lists this many nights, newest first (the figure shows them all).
FLAGS_TABLE_NIGHTS = 10
# The reasons figure shows this many features, most named first.
TOP_REASONS_SHOWN = 15
# Run-level metrics a page reads per night (udfs.metrics.metric_records writes them).
RUN_METRICS = ("rows_read", "rows_scored", "rows_flagged", "flag_rate", "rows_with_invalid", "threshold",
               "scoring_seconds", "duration_seconds")
SCORE_METRICS = ("p50", "p90", "p99", "p99_9", "mean", "min", "max", "psi")
HISTOGRAM_METRIC = "histogram_count"
# The run_id of a run starts with its pass's start time (pipelines.nightly.RUN_ID_TIME), shared by the
# primary and the shadow scored in that pass.
RUN_ID_TIME_SEPARATOR = "-"

_NIGHT = "#1f77b4"  # the report's night, in every figure
_OTHER = "#aec7e8"  # the other nights
_REFERENCE = "#7f7f7f"
_SHADOW = "#ff7f0e"


class ReportError(ValueError):
    """A report cannot be made (no published run of the night); the message says what to do."""


@dataclass(frozen=True)
class Night:
    """The run a page is about, and the run scored beside it in the same pass, if any."""

    source: str
    model: str
    run_date: dt.date
    role: str  # S.PRIMARY, or S.SHADOW when the model only ran as a shadow that night
    run_id: str
    partner_run_id: str | None = None  # the pass's other model (shadow of a primary, or its primary)
    partner_model: str | None = None

    @property
    def champion_run_id(self) -> str:
        return self.run_id if self.role == S.PRIMARY else self.partner_run_id

    @property
    def shadow_run_id(self) -> str | None:
        return self.partner_run_id if self.role == S.PRIMARY else self.run_id


@dataclass(frozen=True)
class Plot:
    """One figure of a page: a PNG as a data URI, with its alternative text."""

    data_uri: str
    alt: str


@dataclass(frozen=True)
class Section:
    """One section of a page: an id (the HTML anchor), a title, sentences, plots, tables."""

    id: str
    title: str
    text: Sequence[str] = ()
    plots: Sequence[Plot] = ()
    # (caption, column headers, rows of cells already formatted as text)
    tables: Sequence[tuple[str, Sequence[str], Sequence[Sequence[str]]]] = ()


@dataclass(frozen=True)
class NightReport:
    """Everything a page holds, ready for the template."""

    title: str
    subtitle: str
    sections: Sequence[Section]
    generated_at: str
    notes: Sequence[str] = field(default_factory=tuple)


# --- the frames ------------------------------------------------------------------------------------


def choose_night(metrics: pd.DataFrame, source: str, model: str, run_date: dt.date) -> Night:
    """The run of `model` on `run_date` a page is about: its primary run, else its shadow run;
    with the run of the other role scored in the same pass, if there is one. ReportError when the
    model has no complete run that night, naming the nights it has."""
    complete = _complete_runs(metrics)
    night = complete[complete[S.RUN_DATE] == run_date]
    mine = night[night[S.MODEL_NAME] == model]
    if mine.empty:
        dates = sorted(complete.loc[complete[S.MODEL_NAME] == model, S.RUN_DATE].unique())
        shown = ", ".join(str(d) for d in dates[-10:]) or "none"
        raise ReportError(
            f"no published run of model {model} on {source} for {run_date} (its published nights up to then: {shown}); "
            f"score the night first (`lakescore score --run-date {run_date}`) or ask for one of those dates"
        )
    role = S.PRIMARY if (mine[S.SCORING_ROLE] == S.PRIMARY).any() else S.SHADOW
    run_id = mine.loc[mine[S.SCORING_ROLE] == role, S.RUN_ID].iloc[0]
    other = S.SHADOW if role == S.PRIMARY else S.PRIMARY
    partners = night[(night[S.SCORING_ROLE] == other) & night[S.RUN_ID].map(lambda r: same_pass(r, run_id))]
    if partners.empty:
        return Night(source, model, run_date, role, run_id)
    partner = partners.iloc[0]
    return Night(source, model, run_date, role, run_id, partner[S.RUN_ID], partner[S.MODEL_NAME])


def same_pass(run_id: str, other: str) -> bool:
    """Whether two runs were scored in one pass (a primary and its shadow): their run_ids start
    with the same start time."""
    return run_id.split(RUN_ID_TIME_SEPARATOR, 1)[0] == other.split(RUN_ID_TIME_SEPARATOR, 1)[0]


def runs_table(metrics: pd.DataFrame, model: str, role: str, last: dt.date, runs: int) -> pd.DataFrame:
    """One row per complete run of the slice (model, role) up to `last`, the last `runs` of them,
    oldest first: run_date, run_id, model_version, the RUN_METRICS, `score_psi`, the score
    quantiles, `source_version` and `model_sha256`. Missing values are NaN."""
    complete = _complete_runs(metrics)
    mine = complete[
        (complete[S.MODEL_NAME] == model) & (complete[S.SCORING_ROLE] == role) & (complete[S.RUN_DATE] <= last)
    ]
    mine = mine.sort_values(S.RUN_DATE).tail(runs)
    rows = metrics[metrics[S.RUN_ID].isin(mine[S.RUN_ID])]
    wide = pd.DataFrame({S.RUN_ID: mine[S.RUN_ID].to_list(), S.RUN_DATE: mine[S.RUN_DATE].to_list(),
                         S.MODEL_VERSION: mine[S.MODEL_VERSION].to_list()})
    for scope, metric, column in (
        *(("run", m, m) for m in RUN_METRICS),
        *(("score", m, "score_psi" if m == "psi" else m) for m in SCORE_METRICS),
        ("source", "source_version", "source_version"),
    ):
        values = rows[(rows[S.SCOPE] == scope) & (rows[S.METRIC] == metric)].set_index(S.RUN_ID)[S.VALUE]
        wide[column] = wide[S.RUN_ID].map(values[~values.index.duplicated()]).astype("float64")
    sha = rows[(rows[S.SCOPE] == "model") & (rows[S.METRIC] == "model_sha256")].set_index(S.RUN_ID)[S.FEATURE]
    wide["model_sha256"] = wide[S.RUN_ID].map(sha[~sha.index.duplicated()])
    return wide.reset_index(drop=True)


def psi_matrix(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """PSI per feature (rows, in the order the runs recorded them) and night (columns: the run
    dates of `runs`, oldest first); NaN where a night has no PSI for a feature."""
    rows = metrics[(metrics[S.SCOPE] == "feature") & (metrics[S.METRIC] == "psi") & metrics[S.RUN_ID].isin(runs[S.RUN_ID])]
    dates = dict(zip(runs[S.RUN_ID], runs[S.RUN_DATE]))
    features = list(dict.fromkeys(rows[S.FEATURE]))
    matrix = pd.DataFrame(np.nan, index=pd.Index(features, name=S.FEATURE), columns=list(runs[S.RUN_DATE]), dtype="float64")
    for run_id, feature, value in zip(rows[S.RUN_ID], rows[S.FEATURE], rows[S.VALUE]):
        matrix.loc[feature, dates[run_id]] = np.nan if value is None else float(value)
    return matrix


def drifting_features(psi_of_night: pd.Series, threshold: float = PSI_DRIFT) -> list[tuple[str, float]]:
    """(feature, PSI) of the features whose PSI on the night is at least `threshold`, largest first."""
    values = pd.to_numeric(psi_of_night, errors="coerce").dropna()
    values = values[values >= threshold].sort_values(ascending=False, kind="stable")
    return [(str(k), float(v)) for k, v in values.items()]


def score_bins(metrics: pd.DataFrame, run_id: str) -> pd.DataFrame:
    """The run's score histogram over the reference's bins, in bin order: label (`[low, high)`),
    low, high, count, fraction (NaN without rows)."""
    rows = metrics[(metrics[S.RUN_ID] == run_id) & (metrics[S.SCOPE] == "score") & (metrics[S.METRIC] == HISTOGRAM_METRIC)]
    rows = rows.sort_values(S.FEATURE)  # `03:[0.0125,0.0311)` sorts in bin order
    parsed = [_bin_edges(label) for label in rows[S.FEATURE]]
    counts = pd.to_numeric(rows[S.VALUE], errors="coerce").fillna(0.0).to_numpy()
    total = counts.sum()
    return pd.DataFrame(
        {
            "label": [f"[{low:.3g}, {high:.3g})" for low, high in parsed],
            "low": [low for low, _ in parsed],
            "high": [high for _, high in parsed],
            "count": counts,
            "fraction": counts / total if total > 0 else np.full(len(counts), np.nan),
        }
    )


def invalid_counts(metrics: pd.DataFrame, run_id: str) -> pd.Series:
    """Invalid values (null, NaN, infinite, unknown category; imputed) per feature in the run,
    in the order it recorded them; a missing count is NaN."""
    rows = metrics[(metrics[S.RUN_ID] == run_id) & (metrics[S.SCOPE] == "feature") & (metrics[S.METRIC] == "invalid_values")]
    return pd.Series(pd.to_numeric(rows[S.VALUE], errors="coerce").to_numpy(dtype="float64"), index=list(rows[S.FEATURE]),
                     name="invalid_values")


def top_reasons(reasons: pd.DataFrame, run_id: str, limit: int = TOP_REASONS_SHOWN) -> pd.DataFrame:
    """The run's reasons, the features most often named first: feature, rows, first, mean_contribution."""
    mine = reasons[reasons[S.RUN_ID] == run_id] if len(reasons) else reasons
    columns = ["feature", "rows", "first", "mean_contribution"]
    if mine.empty:
        return pd.DataFrame({c: pd.Series(dtype="object" if c == "feature" else "float64") for c in columns})
    return (
        mine[columns]
        .sort_values(["rows", "first", "feature"], ascending=[False, False, True], kind="stable")
        .head(limit)
        .reset_index(drop=True)
    )


def _complete_runs(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run that published its `run_complete` metric: run_id, run_date, model, version, role."""
    done = metrics[metrics[S.METRIC] == S.RUN_COMPLETE_METRIC]
    return done[[S.RUN_ID, S.RUN_DATE, S.MODEL_NAME, S.MODEL_VERSION, S.SCORING_ROLE]].drop_duplicates(S.RUN_ID)


def _bin_edges(label: str) -> tuple[float, float]:
    """(low, high) of a histogram_count label `NN:[low,high)` (udfs.metrics.histogram_bin_label)."""
    low, high = label.split(":", 1)[1].strip("[)").split(",")
    return float(low), float(high)


# --- the figures ------------------------------------------------------------------------------------


def flags_figure(runs: pd.DataFrame, night: dt.date) -> Figure:
    """Rows flagged per night (bars, the report's night dark) and the flag rate (line, right axis)."""
    fig, ax = _figure(9.0, 3.6)
    labels = [d.strftime("%m-%d") for d in runs[S.RUN_DATE]]
    x = np.arange(len(runs))
    flagged = runs["rows_flagged"].fillna(0.0).to_numpy()
    colours = [_NIGHT if d == night else _OTHER for d in runs[S.RUN_DATE]]
    ax.bar(x, flagged, color=colours, width=0.7, label="rows flagged")
    pad = max(0.0, (7 - len(x)) / 2)  # a few nights: bars of the usual width, centred
    ax.set_xlim(-0.5 - pad, len(x) - 0.5 + pad)
    ax.set_ylabel("rows flagged")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"run date ({_year_span(runs[S.RUN_DATE])})")
    ax.set_xticks(x, labels, rotation=90 if len(x) > 12 else 0)
    ax.set_ylim(0, max(1.0, flagged.max() * 1.15) if len(flagged) else 1.0)
    rate = ax.twinx()
    rate.plot(x, runs["flag_rate"].to_numpy(dtype="float64") * 100.0, color="#d62728", marker="o", label="flag rate")
    rate.set_ylabel("flag rate (% of rows scored)")
    rate.set_ylim(bottom=0)
    ax.set_title(f"Rows flagged per night, last {len(runs)} run{'s' if len(runs) != 1 else ''} (dark: {night})")
    handles = ax.get_legend_handles_labels()[0] + rate.get_legend_handles_labels()[0]
    ax.legend(handles, ["rows flagged", "flag rate (%)"], loc="upper left", fontsize=8)
    return fig


def score_figure(bins: pd.DataFrame, reference_fractions: Sequence[float] | None, night: dt.date, score_psi: float | None) -> Figure:
    """The night's share of rows per score bin beside the training reference's, same bins."""
    fig, ax = _figure(9.0, 3.6)
    x = np.arange(len(bins))
    with_reference = reference_fractions is not None and len(reference_fractions) == len(bins)
    width = 0.4 if with_reference else 0.8
    ax.bar(x - (width / 2 if with_reference else 0), bins["fraction"].fillna(0.0) * 100.0, width, color=_NIGHT, label=str(night))
    if with_reference:
        ax.bar(x + width / 2, np.asarray(reference_fractions, dtype="float64") * 100.0, width, color=_REFERENCE,
               label="training reference")
    ax.set_xticks(x, bins["label"], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("model score (bins of the bundle's reference histogram)")
    ax.set_ylabel("share of rows (%)")
    psi_text = "n/a" if _missing(score_psi) else f"{score_psi:.3f}"
    ax.set_title(f"Score distribution on {night} against the training reference (score PSI {psi_text})")
    ax.legend(fontsize=8)
    return fig


def psi_heatmap(matrix: pd.DataFrame, night: dt.date, drifting: Sequence[str]) -> Figure:
    """PSI per feature (rows) and night (columns); the drifting features' names in red and bold,
    nights without a value in grey."""
    height = 2.0 + 0.26 * max(len(matrix.index), 3)
    fig, ax = _figure(9.0, height)
    values = np.ma.masked_invalid(matrix.to_numpy(dtype="float64"))
    from matplotlib import colormaps

    cmap = colormaps["YlOrRd"].with_extremes(bad="#dddddd")  # nights without a value: grey
    image = ax.imshow(values, aspect="auto", cmap=cmap, vmin=0.0, vmax=PSI_SCALE_MAX, interpolation="nearest")
    columns = list(matrix.columns)
    ax.set_xticks(np.arange(len(columns)), [d.strftime("%m-%d") for d in columns], rotation=90 if len(columns) > 12 else 0)
    ax.set_yticks(np.arange(len(matrix.index)), list(matrix.index), fontsize=8)
    for label in ax.get_yticklabels():
        if label.get_text() in drifting:
            label.set_color("#d62728")
            label.set_fontweight("bold")
    if night in columns:
        i = columns.index(night)
        ax.axvline(i - 0.5, color="black", linewidth=0.8)
        ax.axvline(i + 0.5, color="black", linewidth=0.8)
    ax.set_xlabel(f"run date ({_year_span(columns)}); framed: {night}")
    ax.set_ylabel("feature")
    colourbar = fig.colorbar(image, ax=ax, extend="max", fraction=0.04, pad=0.02)
    colourbar.set_label("PSI")
    colourbar.ax.axhline(PSI_DRIFT, color="black", linewidth=0.8)
    ax.set_title(f"Feature drift per night (PSI; >= {PSI_DRIFT} drifting, names in red)")
    return fig


def reasons_figure(reasons: pd.DataFrame, night: dt.date) -> Figure:
    """Flagged rows naming each feature among their top reasons, split into first reason and other."""
    shown = reasons.iloc[::-1]  # most named at the top
    fig, ax = _figure(9.0, 1.4 + 0.3 * max(len(shown), 1))
    y = np.arange(len(shown))
    first = shown["first"].fillna(0.0).to_numpy()
    rest = shown["rows"].fillna(0.0).to_numpy() - first
    ax.barh(y, first, color=_NIGHT, label="first reason")
    ax.barh(y, rest, left=first, color=_OTHER, label="second or later reason")
    ax.set_yticks(y, list(shown["feature"]), fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("flagged rows naming the feature")
    ax.set_ylabel("feature")
    ax.set_title(f"Top reasons: the features behind the rows flagged on {night}")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def invalid_figure(invalid: pd.Series, rows_scored: float | None, night: dt.date) -> Figure:
    """Invalid values per feature on the night (bars), as counts."""
    shown = invalid.iloc[::-1]
    fig, ax = _figure(9.0, 1.4 + 0.26 * max(len(shown), 1))
    y = np.arange(len(shown))
    ax.barh(y, shown.fillna(0.0).to_numpy(), color=_NIGHT)
    ax.set_yticks(y, list(shown.index), fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("invalid values (null, NaN, infinite or unknown; imputed before scoring)")
    ax.set_ylabel("feature")
    ax.set_xlim(0, max(1.0, float(np.nanmax(shown.to_numpy())) * 1.15) if len(shown) and shown.notna().any() else 1.0)
    scored = "" if _missing(rows_scored) else f" of {int(rows_scored):,} rows scored"
    ax.set_title(f"Invalid values per feature on {night}{scored}")
    return fig


def shadow_figure(overlap: Mapping[str, int], champion: str, shadow: str, night: dt.date) -> Figure:
    """Rows flagged by both models, by the champion only and by the shadow only."""
    fig, ax = _figure(9.0, 2.6)
    names = ["both", f"champion only ({champion})", f"shadow only ({shadow})"]
    counts = [overlap.get("both", 0), overlap.get("champion_only", 0), overlap.get("shadow_only", 0)]
    y = np.arange(3)[::-1]
    bars = ax.barh(y, counts, color=["#2ca02c", _NIGHT, _SHADOW])
    ax.bar_label(bars, [f"{c:,}" for c in counts], padding=3, fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlabel("flagged rows")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0, max(1, max(counts)) * 1.2)
    ax.set_title(f"Champion against shadow on {night}: which rows each flagged")
    return fig


def figure_data_uri(fig: Figure, dpi: int = 100) -> str:
    """The figure as a `data:image/png;base64,...` URI (Agg canvas; no file, no pyplot)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _year_span(dates: Sequence[dt.date]) -> str:
    years = sorted({d.year for d in dates})
    return "no nights" if not years else str(years[0]) if len(years) == 1 else f"{years[0]}-{years[-1]}"


# --- the page --------------------------------------------------------------------------------------


def build_report(
    night: Night,
    metrics: pd.DataFrame,
    reasons: pd.DataFrame,
    *,
    runs: int,
    reference: Mapping[str, Any] | None,
    overlap: Mapping[str, int] | None = None,
    generated_at: dt.datetime | None = None,
) -> NightReport:
    """Every section of the page of `night`, from the frames (see the module docstring).

    `reference`: the subject bundle's reference.json (its `score` histogram is drawn beside the
    night's), or None when the bundle cannot be read (the page says so). `overlap`: counts of
    {"both", "champion_only", "shadow_only"} when a shadow ran beside the champion."""
    history = runs_table(metrics, night.model, night.role, night.run_date, runs)
    this = history[history[S.RUN_ID] == night.run_id].iloc[0]
    notes = []
    sections = [_summary_section(night, metrics, this)]
    sections.append(_flags_section(history, night))
    sections.append(_scores_section(metrics, night, this, reference, notes))
    sections.append(_drift_section(metrics, history, night))
    sections.append(_reasons_section(reasons, night, this))
    sections.append(_invalid_section(metrics, night, this))
    if night.partner_run_id is not None:
        sections.append(_shadow_section(metrics, night, overlap or {}))
    generated = (generated_at or dt.datetime.now(dt.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    role = "" if night.role == S.PRIMARY else " (as a shadow)"
    return NightReport(
        title=f"{night.source} · {night.model}{role} · {night.run_date}",
        subtitle=f"lakescore nightly report of run {night.run_id}",
        sections=tuple(sections),
        generated_at=generated,
        notes=tuple(notes),
    )


def render_report(report: NightReport) -> str:
    """The page as HTML, through the package's Jinja2 template (autoescaped)."""
    import jinja2

    source = importlib.resources.files("lakescore").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(source).render(report=report, psi_moderate=PSI_MODERATE, psi_drift=PSI_DRIFT)


def _summary_section(night: Night, metrics: pd.DataFrame, this: pd.Series) -> Section:
    rows = [
        ("source", night.source),
        ("source version (Delta)", _integer(this["source_version"])),
        ("model", f"{night.model} v{int(this[S.MODEL_VERSION])} ({night.role})"),
        ("model sha256", str(this["model_sha256"] or "n/a")),
        ("threshold", _number(this["threshold"])),
        ("run", night.run_id),
        ("rows read / scored", f"{_integer(this['rows_read'])} / {_integer(this['rows_scored'])}"),
        ("rows flagged", f"{_integer(this['rows_flagged'])} ({_percent(this['flag_rate'])})"),
        ("rows with an invalid value", _integer(this["rows_with_invalid"])),
        ("run took", _seconds(this["duration_seconds"])),
    ]
    if night.partner_run_id is not None:
        rows.append(("scored beside it", f"{night.partner_model} (run {night.partner_run_id})"))
    return Section(
        id="summary",
        title="The run",
        text=(f"Model {night.model} scored {night.source} for {night.run_date}.",),
        tables=(("Model and source versions", ("", "value"), [list(r) for r in rows]),),
    )


def _flags_section(history: pd.DataFrame, night: Night) -> Section:
    table = [
        [str(r[S.RUN_DATE]), f"v{int(r[S.MODEL_VERSION])}", _integer(r["rows_scored"]), _integer(r["rows_flagged"]),
         _percent(r["flag_rate"]), _number(r["score_psi"])]
        for _, r in history.iloc[::-1].head(FLAGS_TABLE_NIGHTS).iterrows()
    ]
    return Section(
        id="flags",
        title="Flags per night",
        text=(f"The last {_nights(len(history))} with a published run of {night.model} ({night.role}) on this source, "
              f"up to {night.run_date}.",),
        plots=(Plot(figure_data_uri(flags_figure(history, night.run_date)), "rows flagged and flag rate per night"),),
        tables=((f"The last {_nights(min(len(history), FLAGS_TABLE_NIGHTS))}, newest first", ("run date", "model", "rows scored", "rows flagged", "flag rate", "score PSI"), table),),
    )


def _scores_section(metrics: pd.DataFrame, night: Night, this: pd.Series, reference: Mapping[str, Any] | None, notes: list) -> Section:
    bins = score_bins(metrics, night.run_id)
    fractions = None
    text = []
    if reference is None or "score" not in reference:
        text.append("The bundle's reference could not be read: the night's distribution is shown alone.")
        notes.append("score reference unavailable")
    else:
        fractions = reference["score"]["fractions"]
        if len(fractions) != len(bins):
            text.append("The bundle's reference histogram has other bins than the run's: the night is shown alone.")
            fractions = None
    quantiles = [[m, _number(this[m])] for m in ("p50", "p90", "p99", "p99_9", "mean", "min", "max")]
    return Section(
        id="scores",
        title="Score distribution",
        text=(f"Share of the night's rows per score bin, beside the training data's (threshold {_number(this['threshold'])}).", *text),
        plots=(Plot(figure_data_uri(score_figure(bins, fractions, night.run_date, _float(this["score_psi"]))),
                    "score distribution against the reference"),),
        tables=(("Score quantiles of the night", ("statistic", "score"), quantiles),),
    )


def _drift_section(metrics: pd.DataFrame, history: pd.DataFrame, night: Night) -> Section:
    matrix = psi_matrix(metrics, history)
    of_night = matrix[night.run_date] if night.run_date in matrix.columns else pd.Series(dtype="float64")
    drifting = drifting_features(of_night)
    moderate = [(f, v) for f, v in drifting_features(of_night, PSI_MODERATE) if v < PSI_DRIFT]
    if drifting:
        named = ", ".join(f"{f} (PSI {v:.2f})" for f, v in drifting)
        text = [f"Drifting on {night.run_date} (PSI >= {PSI_DRIFT}): {named}."]
    else:
        text = [f"No feature drifts on {night.run_date} (every PSI below {PSI_DRIFT})."]
    if moderate:
        text.append(f"Moderate shift (PSI {PSI_MODERATE}-{PSI_DRIFT}): " + ", ".join(f"{f} ({v:.2f})" for f, v in moderate) + ".")
    plots = ()
    if len(matrix.index):
        plots = (Plot(figure_data_uri(psi_heatmap(matrix, night.run_date, [f for f, _ in drifting])), "PSI per feature and night"),)
    else:
        text.append("The runs recorded no PSI (the bundle has no feature reference).")
    return Section(
        id="drift",
        title="Feature drift",
        text=tuple(text),
        plots=plots,
        tables=(("Drifting features", ("feature", "PSI"), [[f, f"{v:.3f}"] for f, v in drifting]),) if drifting else (),
    )


def _reasons_section(reasons: pd.DataFrame, night: Night, this: pd.Series) -> Section:
    top = top_reasons(reasons, night.run_id)
    if top.empty:
        return Section(id="reasons", title="Top reasons", text=(f"No row was flagged on {night.run_date}: no reasons to show.",))
    table = [[r["feature"], _integer(r["rows"]), _integer(r["first"]), _number(r["mean_contribution"])] for _, r in top.iterrows()]
    return Section(
        id="reasons",
        title="Top reasons",
        text=(f"Features that most often explain the {_integer(this['rows_flagged'])} flagged rows (feature names and counts only).",),
        plots=(Plot(figure_data_uri(reasons_figure(top, night.run_date)), "features named as reasons"),),
        tables=(("Reasons", ("feature", "flagged rows naming it", "as first reason", "mean contribution"), table),),
    )


def _invalid_section(metrics: pd.DataFrame, night: Night, this: pd.Series) -> Section:
    invalid = invalid_counts(metrics, night.run_id)
    scored = _float(this["rows_scored"])
    table = [[f, _integer(v), _percent(v / scored if scored else None)] for f, v in invalid.items() if not _missing(v) and v > 0]
    text = f"{_integer(this['rows_with_invalid'])} rows had at least one invalid value; each was imputed before scoring."
    plots = (Plot(figure_data_uri(invalid_figure(invalid, scored, night.run_date)), "invalid values per feature"),) if len(invalid) else ()
    return Section(
        id="invalid",
        title="Invalid values",
        text=(text,),
        plots=plots,
        tables=(("Features with invalid values", ("feature", "invalid values", "share of rows"), table),) if table else (),
    )


def _shadow_section(metrics: pd.DataFrame, night: Night, overlap: Mapping[str, int]) -> Section:
    champion_id, shadow_id = night.champion_run_id, night.shadow_run_id
    wide = {}
    for run_id in (champion_id, shadow_id):
        complete = _complete_runs(metrics)
        row = complete[complete[S.RUN_ID] == run_id].iloc[0]
        wide[run_id] = runs_table(metrics, row[S.MODEL_NAME], row[S.SCORING_ROLE], night.run_date, 1).iloc[-1]
    champion, shadow = wide[champion_id], wide[shadow_id]
    label = {run_id: f"{w_name} v{int(wide[run_id][S.MODEL_VERSION])}" for run_id, w_name in
             ((champion_id, night.model if night.role == S.PRIMARY else night.partner_model),
              (shadow_id, night.partner_model if night.role == S.PRIMARY else night.model))}
    rows = [
        ["model", label[champion_id], label[shadow_id]],
        ["threshold", _number(champion["threshold"]), _number(shadow["threshold"])],
        ["rows flagged", _integer(champion["rows_flagged"]), _integer(shadow["rows_flagged"])],
        ["flag rate", _percent(champion["flag_rate"]), _percent(shadow["flag_rate"])],
        *[[m, _number(champion[m]), _number(shadow[m])] for m in ("p50", "p90", "p99", "p99_9")],
        ["score PSI", _number(champion["score_psi"]), _number(shadow["score_psi"])],
    ]
    return Section(
        id="shadow",
        title="Champion against shadow",
        text=(f"The champion {label[champion_id]} and the shadow {label[shadow_id]} scored the same rows in one pass.",),
        plots=(Plot(figure_data_uri(shadow_figure(overlap, label[champion_id], label[shadow_id], night.run_date)),
                    "rows flagged by champion and shadow"),),
        tables=(
            ("Side by side", ("", "champion", "shadow"), rows),
            ("Flagged rows by record key", ("flagged by", "rows"), [
                ["both", _integer(overlap.get("both", 0))],
                ["champion only", _integer(overlap.get("champion_only", 0))],
                ["shadow only", _integer(overlap.get("shadow_only", 0))],
            ]),
        ),
    )


# --- formatting: missing values read "n/a", never "nan" ---------------------------------------------


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _float(value: Any) -> float | None:
    return None if _missing(value) else float(value)


def _integer(value: Any) -> str:
    return "n/a" if _missing(value) else f"{int(round(float(value))):,}"


def _number(value: Any) -> str:
    return "n/a" if _missing(value) else f"{float(value):.4g}"


def _percent(value: Any) -> str:
    return "n/a" if _missing(value) else f"{100.0 * float(value):.2f}%"


def _nights(count: int) -> str:
    return "night" if count == 1 else f"{count} nights"


def _seconds(value: Any) -> str:
    return "n/a" if _missing(value) else f"{float(value):.1f} s"
