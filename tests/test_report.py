"""The nightly report: the pure sections and figures on tiny frames, then one page a nightly run
wrote itself, opened in headless Chromium, and checked for the clear values of sensitive columns.

The end-to-end page comes from one night of a small Parquet source of this module's own (a path,
400 rows) scored with a test-fixture bundle and a shadow beside it: drifted amounts, missing
values, and a sensitive `card_holder` column whose clear values are e-mail addresses (never
base64: a leak would show in the page's bytes, figures included). Several nights, NaN and None
values, a night without flags: the tests on tiny frames.
"""

from __future__ import annotations

import base64
import datetime as dt
import html.parser
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakescore import report as R
from lakescore import schemas as S
from lakescore.report import Night, ReportError

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
SOURCE = "lakescore.tiny"
SECTIONS = ("summary", "flags", "scores", "drift", "reasons", "invalid")
PLOTTED = ("flags", "scores", "drift", "reasons", "invalid")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A figure drawn is tens of kilobytes; an empty canvas or a broken URI is far below this.
MIN_PLOT_DATA_URI = 5_000


# --- tiny frames -------------------------------------------------------------------------------------


def run_rows(run_id, day, *, model="m", version=1, role=S.PRIMARY, rows=1000, flagged=10, psi=None, invalid=None,
             bins=(500, 300, 150, 50), complete=True):
    """run_metrics' long rows of one run, as udfs.metrics.metric_records writes them."""
    out = []

    def add(scope, feature, metric, value):
        out.append({S.RUN_ID: run_id, S.RUN_DATE: day, S.MODEL_NAME: model, S.MODEL_VERSION: version,
                    S.SCORING_ROLE: role, S.SCOPE: scope, S.FEATURE: feature, S.METRIC: metric, S.VALUE: value})

    for metric, value in {"rows_read": rows, "rows_scored": rows, "rows_flagged": flagged,
                          "flag_rate": flagged / rows if rows else None, "rows_with_invalid": 3, "threshold": 0.8,
                          "scoring_seconds": 1.0, "duration_seconds": 2.0}.items():
        add("run", None, metric, value)
    add("source", SOURCE, "source_version", 4)
    add("model", "ab" * 32, "model_sha256", version)
    for feature, value in (psi if psi is not None else {"amount": 0.01, "hour": None}).items():
        add("feature", feature, "psi", value)
    for feature, value in (invalid if invalid is not None else {"amount": 2, "hour": 0}).items():
        add("feature", feature, "invalid_values", value)
    for metric, value in {"p50": 0.1, "p90": 0.5, "p99": 0.9, "p99_9": None, "mean": 0.2, "min": 0.0, "max": 1.0,
                          "psi": float("nan")}.items():
        add("score", None, metric, value)
    edges = np.linspace(0.0, 1.0, len(bins) + 1)
    for i, count in enumerate(bins):
        add("score", f"{i:02d}:[{edges[i]:.6g},{edges[i + 1]:.6g})", "histogram_count", count)
    if complete:
        add("run", None, S.RUN_COMPLETE_METRIC, 1.0)
    return out


DAYS = [dt.date(2026, 11, 1) + dt.timedelta(days=i) for i in range(5)]


@pytest.fixture(scope="module")
def five_nights() -> pd.DataFrame:
    """Five nights of model m; on the last, a shadow of the same pass and a stale shadow of an earlier pass."""
    rows = []
    for i, day in enumerate(DAYS):
        rows += run_rows(f"2026110{i + 1}T010000Z-prim{i}", day, flagged=10 + i,
                         psi={"amount": 0.05 * i, "hour": None if i < 4 else 0.4, "country": 0.15})
    rows += run_rows("20261105T010000Z-shad", DAYS[-1], version=2, role=S.SHADOW, flagged=7)
    rows += run_rows("20261105T000000Z-old", DAYS[-1], model="other", version=1, role=S.SHADOW, flagged=99)
    rows += run_rows("20261106T010000Z-unpublished", DAYS[-1] + dt.timedelta(days=1), complete=False)
    return pd.DataFrame(rows)


REASONS = pd.DataFrame({
    S.RUN_ID: ["20261105T010000Z-prim4"] * 3 + ["20261105T010000Z-shad"],
    "feature": ["hour", "amount", "country"] + ["amount"],
    "rows": [5, 12, 5, 7], "first": [1, 9, 4, 7], "mean_contribution": [0.1, 0.5, None, 0.4],
})


class Page(html.parser.HTMLParser):
    """A report page read back: per section id its text, its images' attributes and its table cells."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.body: dict[str, str] = {}
        self._current: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.body = attrs
        if tag == "section":
            self._current = attrs.get("id")
            self.sections[self._current] = {"text": "", "images": [], "cells": []}
        elif tag == "img" and self._current:
            self.sections[self._current]["images"].append(attrs)

    def handle_endtag(self, tag):
        if tag == "section":
            self._current = None

    def handle_data(self, data):
        if self._current and data.strip():
            self.sections[self._current]["text"] += " " + data.strip()
            self.sections[self._current]["cells"].append(data.strip())


def png_of(uri: str) -> bytes:
    assert uri.startswith("data:image/png;base64,")
    return base64.b64decode(uri.split(",", 1)[1])


# --- the pure functions -------------------------------------------------------------------------------


def test_the_night_is_the_models_primary_run_with_the_shadow_of_the_same_pass(five_nights):
    night = R.choose_night(five_nights, SOURCE, "m", DAYS[-1])
    assert night == Night(SOURCE, "m", DAYS[-1], S.PRIMARY, "20261105T010000Z-prim4", "20261105T010000Z-shad", "m")
    assert (night.champion_run_id, night.shadow_run_id) == ("20261105T010000Z-prim4", "20261105T010000Z-shad")
    # A model that ran only as a shadow that night: its page is of the shadow run, compared with no primary of its pass.
    other = R.choose_night(five_nights, SOURCE, "other", DAYS[-1])
    assert (other.role, other.run_id, other.partner_run_id) == (S.SHADOW, "20261105T000000Z-old", None)


def test_a_night_without_a_published_run_is_refused_naming_the_nights_there_are(five_nights):
    with pytest.raises(ReportError, match=r"no published run of model m on lakescore.tiny for 2026-11-06 .*"
                                          r"2026-11-01, 2026-11-02, 2026-11-03, 2026-11-04, 2026-11-05\); score the night first"):
        R.choose_night(five_nights, SOURCE, "m", dt.date(2026, 11, 6))  # its run never published run_complete


def test_the_runs_table_keeps_the_last_runs_oldest_first_with_missing_values_as_nan(five_nights):
    runs = R.runs_table(five_nights, "m", S.PRIMARY, DAYS[-1], runs=3)
    assert list(runs[S.RUN_DATE]) == DAYS[2:]
    assert list(runs["rows_flagged"]) == [12.0, 13.0, 14.0]
    assert runs["flag_rate"].tolist() == pytest.approx([0.012, 0.013, 0.014])
    assert runs["p99_9"].isna().all() and runs["score_psi"].isna().all()  # None and NaN both read as missing
    assert list(runs["source_version"]) == [4.0] * 3 and set(runs["model_sha256"]) == {"ab" * 32}


def test_psi_per_feature_and_night_names_the_drifting_features(five_nights):
    runs = R.runs_table(five_nights, "m", S.PRIMARY, DAYS[-1], runs=30)
    matrix = R.psi_matrix(five_nights, runs)
    assert list(matrix.index) == ["amount", "hour", "country"] and list(matrix.columns) == DAYS
    assert matrix.loc["amount"].tolist() == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert matrix.loc["hour"].iloc[:4].isna().all() and matrix.loc["hour", DAYS[-1]] == 0.4
    assert R.drifting_features(matrix[DAYS[-1]]) == [("hour", 0.4)]
    assert R.drifting_features(matrix[DAYS[0]]) == []
    assert R.drifting_features(pd.Series({"a": None, "b": float("nan"), "c": 0.25})) == [("c", 0.25)]


def test_score_bins_read_the_edges_from_the_labels_and_a_night_without_rows_has_no_fractions():
    metrics = pd.DataFrame(run_rows("r1", DAYS[0], bins=(0, 0, 0)) + run_rows("r2", DAYS[1], bins=(1, 3)))
    empty = R.score_bins(metrics, "r1")
    assert list(empty["low"]) == pytest.approx([0.0, 1 / 3, 2 / 3]) and empty["fraction"].isna().all()
    two = R.score_bins(metrics, "r2")
    assert list(two["label"]) == ["[0, 0.5)", "[0.5, 1)"] and list(two["fraction"]) == [0.25, 0.75]


def test_every_figure_is_a_png_with_a_title_and_labelled_axes(five_nights):
    night = R.choose_night(five_nights, SOURCE, "m", DAYS[-1])
    runs = R.runs_table(five_nights, "m", S.PRIMARY, DAYS[-1], runs=30)
    matrix = R.psi_matrix(five_nights, runs)
    figures = [
        R.flags_figure(runs, DAYS[-1]),
        R.score_figure(R.score_bins(five_nights, night.run_id), [0.4, 0.3, 0.2, 0.1], DAYS[-1], None),
        R.psi_heatmap(matrix, DAYS[-1], ["hour"]),
        R.reasons_figure(R.top_reasons(REASONS, night.run_id), DAYS[-1]),
        R.invalid_figure(R.invalid_counts(five_nights, night.run_id), 1000.0, DAYS[-1]),
        R.shadow_figure({"both": 5, "champion_only": 9}, "m v1", "m v2", DAYS[-1]),
    ]
    for fig in figures:
        ax = fig.axes[0]
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel() or ax.get_yticklabels(), ax.get_title()
        assert str(DAYS[-1]) in ax.get_title() or "drift" in ax.get_title()
        png = png_of(R.figure_data_uri(fig))
        assert png.startswith(PNG_MAGIC) and len(png) > 5_000
    assert figures[0].axes[1].get_ylabel() == "flag rate (% of rows scored)"  # the flags figure's right axis
    assert figures[2].axes[1].get_ylabel() == "PSI"  # the heat map's colour bar
    assert [t.get_text() for t in figures[2].axes[0].get_yticklabels() if t.get_color() == "#d62728"] == ["hour"]


def test_a_single_night_with_zero_flags_gives_every_section_without_a_reasons_plot():
    metrics = pd.DataFrame(run_rows("20261101T010000Z-only", DAYS[0], flagged=0, psi={}, invalid={"amount": None}))
    night = R.choose_night(metrics, SOURCE, "m", DAYS[0])
    page = Page(R.render_report(R.build_report(night, metrics, pd.DataFrame(columns=REASONS.columns), runs=30, reference=None)))
    assert tuple(page.sections) == SECTIONS  # no shadow ran: no shadow section
    assert "No row was flagged on 2026-11-01" in page.sections["reasons"]["text"] and not page.sections["reasons"]["images"]
    assert "recorded no PSI" in page.sections["drift"]["text"] and not page.sections["drift"]["images"]
    assert "could not be read" in page.sections["scores"]["text"]
    assert "0 (0.00%)" in page.sections["summary"]["cells"]  # rows flagged and flag rate
    assert "nan" not in " ".join(s["text"] for s in page.sections.values()).lower()
    for section in ("flags", "scores", "invalid"):
        (image,) = page.sections[section]["images"]
        assert png_of(image["src"]).startswith(PNG_MAGIC) and image["alt"]


def test_the_page_of_a_night_with_a_shadow_holds_every_section_and_names_values_by_feature_only(five_nights):
    night = R.choose_night(five_nights, SOURCE, "m", DAYS[-1])
    reference = {"score": {"edges": [0, 0.25, 0.5, 0.75, 1.0], "fractions": [0.6, 0.25, 0.1, 0.05]}}
    text = R.render_report(R.build_report(night, five_nights, REASONS, runs=30, reference=reference,
                                          overlap={"both": 5, "champion_only": 9, "shadow_only": 2}))
    page = Page(text)
    assert tuple(page.sections) == (*SECTIONS, "shadow")
    for section in (*PLOTTED, "shadow"):
        assert all(len(i["src"]) > MIN_PLOT_DATA_URI for i in page.sections[section]["images"]), section
        assert len(page.sections[section]["images"]) == 1
    assert "Drifting on 2026-11-05 (PSI >= 0.25): hour (PSI 0.40)" in page.sections["drift"]["text"]
    assert "Moderate shift (PSI 0.1-0.25): amount (0.20), country (0.15)" in page.sections["drift"]["text"]
    reasons = page.sections["reasons"]["cells"]
    assert reasons[reasons.index("amount"):reasons.index("amount") + 4] == ["amount", "12", "9", "0.5"]
    shadow = page.sections["shadow"]["cells"]
    assert shadow[shadow.index("champion only") + 1] == "9" and shadow[shadow.index("shadow only") + 1] == "2"
    assert shadow[shadow.index("rows flagged") + 1: shadow.index("rows flagged") + 3] == ["14", "7"]
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing fetched: it works offline


# --- a page written by a nightly run, in a real browser ----------------------------------------------------


MODEL, SHADOW = "reporttest", "reporttest_ch"
NIGHT = dt.date(2026, 10, 2)
ROWS = 400
HOLDER = "card_holder"  # a sensitive column of this source (settings), besides the spec's account_id
ACCOUNT_BASE = 4_812_300_000  # account ids long enough that none occurs in the page by chance


def holder_address(i: int) -> str:
    return f"holder-{i:05d}@clear.example.org"


@pytest.fixture(scope="module")
def nightly_report(spark, settings, tmp_path_factory):
    """One night scored by run_nightly with a shadow beside the primary and the report on; returns
    (settings, source name, path of the page the run wrote, the night's summaries).

    Kept cheap: the source is Parquet written by pandas (no Spark write), the primary a bundle
    directory (no registry commit); only the shadow, which a run finds by name, is registered."""
    from lakescore import registry
    from lakescore.features import TRANSACTIONS_V1
    from lakescore.feedback import source_name
    from pipelines.nightly import run_nightly
    from pipelines.report import report_path
    from scoring_bundles import build_test_bundle
    from transactions_rows import raw_transactions

    raw, _ = raw_transactions(ROWS, seed=10)
    ids = np.arange(ROWS)
    raw[S.TRANSACTION_ID] = ids
    raw[S.ACCOUNT_ID] = ACCOUNT_BASE + ids
    raw[HOLDER] = [holder_address(i) for i in ids]
    raw[S.EVENT_DATE] = str(NIGHT)  # a partition folder event_date=2026-10-02, which Spark reads as a date
    raw[S.AMOUNT] = raw[S.AMOUNT] * 6.0  # the night drifts: amounts six times the training's...
    raw.loc[raw.index % 20 == 0, S.AMOUNT] = np.nan  # ...and some missing
    table = tmp_path_factory.mktemp("report_source") / "cards"
    raw.to_parquet(table, partition_cols=[S.EVENT_DATE], index=False)

    train, labels = raw_transactions(1500, seed=1)
    models = tmp_path_factory.mktemp("report_models")
    primary = models / MODEL
    build_test_bundle(primary, train, labels, TRANSACTIONS_V1, name=MODEL, epochs=30)
    shadow = build_test_bundle(registry.bundle_dir(settings, SHADOW, 1), train, labels, TRANSACTIONS_V1, name=SHADOW,
                               seed=1, epochs=30)
    registry.register_bundle(spark, settings, shadow, registry.bundle_dir(settings, SHADOW, 1))
    with_report = settings.with_overrides({
        "score.allow_columns": f"{S.ACCOUNT_ID},{S.AMOUNT},{HOLDER}", "score.sensitive_columns": HOLDER,
        "report.enabled": "true",
    })
    summaries = run_nightly(spark, with_report, NIGHT, source=str(table), bundle_path=primary, shadow=f"{SHADOW}@1")
    source = source_name(settings, str(table))
    return with_report, source, report_path(with_report, source, MODEL, NIGHT), summaries


@pytest.mark.slow
def test_a_published_night_writes_its_report_under_the_lake_with_the_runs_figures(nightly_report):
    settings, source, path, (champion, shadow) = nightly_report
    assert path.is_file() and path.is_relative_to(settings.lake.root / "reports")
    assert path.name == f"{NIGHT}.html" and path.parent.name == MODEL
    assert not list(path.parent.glob(".*.tmp"))  # written through a temporary file, renamed
    page = Page(path.read_text())
    assert tuple(page.sections) == (*SECTIONS, "shadow")
    summary = page.sections["summary"]["cells"]
    assert summary[summary.index("run") + 1] == champion.run_id
    assert summary[summary.index("source") + 1] == source
    assert summary[summary.index("scored beside it") + 1] == f"{SHADOW} (run {shadow.run_id})"
    assert summary[summary.index("model") + 1] == f"{MODEL} v1 (primary)"
    assert f"{champion.rows_flagged:,} (" in summary[summary.index("rows flagged") + 1]
    flags = page.sections["flags"]["cells"]
    assert flags[flags.index(str(NIGHT)):flags.index(str(NIGHT)) + 4] == [str(NIGHT), "v1", f"{ROWS}", f"{champion.rows_flagged}"]
    assert re.search(r"Drifting on 2026-10-02 \(PSI >= 0.25\): [^.]*log_amount \(PSI", page.sections["drift"]["text"])
    invalid = page.sections["invalid"]["cells"]
    assert invalid[invalid.index("log_amount") + 1] == str(ROWS // 20)
    overlap = page.sections["shadow"]["cells"]
    both, champion_only, shadow_only = (int(overlap[overlap.index(k) + 1].replace(",", ""))
                                        for k in ("both", "champion only", "shadow only"))
    assert (both + champion_only, both + shadow_only) == (champion.rows_flagged, shadow.rows_flagged)


@pytest.mark.slow
def test_the_report_renders_in_chromium_with_every_section_and_plot(nightly_report, tmp_path):
    from browser import WINDOW, find_chromium, render
    from PIL import Image

    _, _, path, _ = nightly_report
    screenshot = ARTIFACTS / f"report-{MODEL}-{NIGHT}.png"
    dom = Page(render(find_chromium(), path, screenshot, tmp_path / "profile"))
    assert tuple(dom.sections) == (*SECTIONS, "shadow")
    for name, section in dom.sections.items():
        assert len(section["text"].strip()) > 20, name
    images = {name: s["images"] for name, s in dom.sections.items()}
    assert {name for name, i in images.items() if i} == {*PLOTTED, "shadow"}
    for name, shown in images.items():
        for image in shown:
            assert len(image["src"]) > MIN_PLOT_DATA_URI, name
            assert int(image["data-rendered-width"]) >= 600, name  # the browser decoded the PNG (its natural width)
    assert dom.body["data-plots-rendered"] == str(len(PLOTTED) + 1)
    with Image.open(screenshot) as shot:
        assert shot.size == WINDOW
        pixels = np.asarray(shot.convert("L"))
    assert (pixels < 200).mean() > 0.02  # text and plots drawn, not a blank window


@pytest.mark.slow
def test_the_report_never_shows_the_clear_value_of_a_sensitive_column(spark, nightly_report):
    settings, _, path, (champion, _) = nightly_report
    text = path.read_text()
    # The clear values were there to leak: the night's flagged rows came from rows holding them,
    # and flagged itself holds their keyed hashes.
    flagged = (
        spark.table(settings.table(S.FLAGGED))
        .where(f"{S.RUN_ID} = '{champion.run_id}'")
        .select(S.RECORD_KEY, f"{S.RECORD}.{HOLDER}")
        .collect()
    )
    assert len(flagged) == champion.rows_flagged > 0
    assert all(re.fullmatch(r"[0-9a-f]{64}", r[HOLDER]) for r in flagged)
    at_risk = [holder_address(int(r[S.RECORD_KEY])) for r in flagged]
    assert not [h for h in at_risk if h in text]
    assert "@clear.example.org" not in text and "holder-" not in text  # no holder at all, flagged or not
    # Account ids are digits, which base64 also holds: look for them outside the figures' data URIs.
    outside_figures = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not [a for a in range(ACCOUNT_BASE, ACCOUNT_BASE + ROWS) if str(a) in outside_figures]


@pytest.mark.slow
def test_a_report_that_fails_logs_the_command_that_retries_it_and_does_not_raise(spark, nightly_report, caplog):
    from types import SimpleNamespace

    from pipelines.report import write_night_report

    settings, source, _, (champion, _) = nightly_report
    bundle = SimpleNamespace(name=MODEL, version=1)
    plan = SimpleNamespace(source_name=source, bundle=bundle, bundles=(bundle,))  # what the hook reads of a RunPlan
    later = NIGHT + dt.timedelta(days=1)  # a night without a run: the report cannot be made
    assert write_night_report(spark, settings, plan, later) is None
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "pipelines.report"]
    assert f"no published run of model {MODEL}" in warning.getMessage()
    assert f"`lakescore report --run-date {later} --model {MODEL} --table {source}`" in warning.getMessage()
