"""Feature specs: a source table described in TOML, compiled into a `FeatureSet`.

A spec names the source's key columns, its label (optional: without one the model is trained
unsupervised), its date (partition) and event-time columns (optional), the raw columns that are
sensitive, and each feature with its kind and transform:

    name = "sensors_v1"
    version = 1
    keys = ["reading_id"]
    label = "fault"                 # optional
    date_column = "day"             # optional
    event_time = "ts"               # optional
    sensitive = ["operator"]

    [[features]]
    name = "Temp C"                 # the model's feature name (any text)
    kind = "numeric"                # numeric | boolean | categorical | timestamp
    column = "Temp C"               # or columns = [a, b] for the two-column transforms
    transform = "log1p"

Transforms by kind (`FeatureSpec`): numeric `none`, `log1p` (of max(v, 0)), `cyclic` (sin and cos
of v on a circle of `period`), `ratio` and `log1p_ratio` (a / max(b / denominator_divide_by,
denominator_floor), the latter log1p of max(a, 0) over that), `log1p_difference` (log1p(max(a, 0))
- log1p(max(b, 0)), i.e. log((1 + a) / (1 + b))); boolean `none` (0/1); categorical `one_hot`
(the `vocabulary` given, or the `top_n` most frequent values of the training split, ties broken
by value; plus an "(other)" slot for values outside it unless `other = false`, in which case they
are missing like nulls); timestamp `hour`, `weekday` (Monday = 0), `hour_cyclic` and
`weekday_cyclic` (sin and cos), in UTC (a timestamp without time zone is read as UTC).

Every feature is clipped at quantiles learned on the training split by the bundle's
preprocessing (`train.clip_low_quantile`/`train.clip_high_quantile`), so a spec has no clip of its
own. Nulls, NaN and values of the wrong type become NaN and are imputed there too.

`SourceSpec.fit` learns what the spec leaves to data (the categorical vocabularies) and returns a
`FittedSpec`; `FittedSpec.feature_set()` is the `FeatureSet` training and scoring compute with.
Both travel in the bundle's manifest (`lakescore.manifest.FeatureSetSpec`), so scoring needs
nothing else. Errors are `SpecError`s that name the TOML key (`features[3].transform`) and the fix.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from lakescore.features import (
    BOOLEAN,
    NUMERIC,
    STRING,
    TIMESTAMP,
    FeatureSet,
    RawColumns,
    _circle,
    spark_type_kind,
)

# Feature kinds.
NUMERIC_KIND = "numeric"
BOOLEAN_KIND = "boolean"
CATEGORICAL_KIND = "categorical"
TIMESTAMP_KIND = "timestamp"
KINDS = (NUMERIC_KIND, BOOLEAN_KIND, CATEGORICAL_KIND, TIMESTAMP_KIND)

# Transforms per kind; the first is the default.
ONE_COLUMN = ("none", "log1p", "cyclic")
TWO_COLUMNS = ("ratio", "log1p_ratio", "log1p_difference")
TRANSFORMS = {
    NUMERIC_KIND: ONE_COLUMN + TWO_COLUMNS,
    BOOLEAN_KIND: ("none",),
    CATEGORICAL_KIND: ("one_hot",),
    TIMESTAMP_KIND: ("hour", "weekday", "hour_cyclic", "weekday_cyclic"),
}
# The raw input kind (FeatureSet.inputs) each feature kind reads its columns as.
_INPUT_KIND = {NUMERIC_KIND: NUMERIC, BOOLEAN_KIND: BOOLEAN, CATEGORICAL_KIND: STRING, TIMESTAMP_KIND: TIMESTAMP}
OTHER = "(other)"
DEFAULT_TOP_N = 20
DEFAULT_OUTPUT = "{name}={value}"

_SPEC_KEYS = ("name", "version", "description", "keys", "label", "date_column", "event_time", "sensitive", "features")
_FEATURE_KEYS = ("name", "kind", "column", "columns", "transform", "period", "denominator_divide_by",
                 "denominator_floor", "vocabulary", "top_n", "other", "output")
_SPEC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INTEGER_TYPES = ("tinyint", "smallint", "int", "bigint")
_TIME_TYPES = ("timestamp", "timestamp_ntz", "date")


class SpecError(ValueError):
    """A feature spec that cannot be used; the message names the TOML key and the fix."""


def _fail(where: str, key: str, problem: str, fix: str) -> SpecError:
    return SpecError(f"{where}: `{key}` {problem}; {fix}")


# --- the spec -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """One feature (one TOML `[[features]]` table); see the module docstring for the transforms."""

    name: str
    kind: str
    columns: tuple[str, ...]
    transform: str
    period: float | None = None  # numeric cyclic: the circle's length (24 for hours)
    denominator_divide_by: float | None = None  # ratio: b / this (3600: seconds -> hours)
    denominator_floor: float | None = None  # ratio: max(b / divide_by, this), keeps small b from exploding
    vocabulary: tuple[str, ...] | None = None  # categorical: given, so nothing is learned
    top_n: int | None = None  # categorical without vocabulary: learned on the training split
    other: bool = True  # categorical: an "(other)" slot for unseen values; false: they are missing
    output: str | None = None  # categorical output name template, "{name}" and "{value}"

    @property
    def learns(self) -> bool:
        """Whether fitting needs data (a categorical without a given vocabulary)."""
        return self.kind == CATEGORICAL_KIND and self.vocabulary is None

    def output_names(self, vocabulary: Sequence[str] = ()) -> tuple[str, ...]:
        """The model feature names this feature produces (a categorical's from its vocabulary)."""
        if self.kind == CATEGORICAL_KIND:
            template = (self.output or DEFAULT_OUTPUT).replace("{name}", self.name)
            values = list(vocabulary) + ([OTHER] if self.other else [])
            return tuple(template.replace("{value}", v) for v in values)
        if self.transform in ("cyclic", "hour_cyclic", "weekday_cyclic"):
            return (f"{self.name}_sin", f"{self.name}_cos")
        return (self.name,)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if len(self.columns) == 1:
            out["column"] = self.columns[0]
        else:
            out["columns"] = list(self.columns)
        out["transform"] = self.transform
        for key in ("period", "denominator_divide_by", "denominator_floor", "top_n", "output"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.vocabulary is not None:
            out["vocabulary"] = list(self.vocabulary)
        if self.kind == CATEGORICAL_KIND and not self.other:
            out["other"] = False
        return out


@dataclass(frozen=True)
class SourceSpec:
    """A source table as a spec describes it: keys, label, dates, sensitive columns and features."""

    name: str  # the feature set's name in the bundle, e.g. "transactions_v1"
    version: int
    keys: tuple[str, ...]
    features: tuple[FeatureSpec, ...]
    label: str | None = None  # None: unsupervised
    date_column: str | None = None  # the date (partition) column
    event_time: str | None = None
    sensitive: tuple[str, ...] = ()
    description: str | None = None

    @property
    def inputs(self) -> dict[str, str]:
        """Raw column -> input kind (NUMERIC, BOOLEAN, STRING, TIMESTAMP), in order of first use."""
        out: dict[str, str] = {}
        for f in self.features:
            for c in f.columns:
                out.setdefault(c, _INPUT_KIND[f.kind])
        return out

    def columns(self) -> tuple[str, ...]:
        """Every column the spec names: keys, label, date, event time, sensitive, feature inputs."""
        named = [*self.keys, self.label, self.date_column, self.event_time, *self.sensitive, *self.inputs]
        return tuple(dict.fromkeys(c for c in named if c is not None))

    # --- checks against a table -------------------------------------------------------------

    def check_schema(self, types: Mapping[str, str], where: str) -> None:
        """Raise SpecError unless the table has every column the spec names, of a fitting type.

        Args:
            types: column -> Spark simpleString type (`double`, `timestamp_ntz`, `decimal(10,2)`...).
            where: the table's name, for the message.
        """
        problems: list[str] = []
        listed = ", ".join(list(types)[:40]) + (f", ... ({len(types)} columns)" if len(types) > 40 else "")

        def need(key: str, column: str | None, allowed: Callable[[str], bool], wanted: str, fix: str) -> None:
            if column is None:
                return
            if column not in types:
                close = difflib.get_close_matches(column, list(types), n=1) or [
                    c for c in types if c.lower() == column.lower()
                ]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(
                    f"`{key}` names column {column!r}, which {where} does not have{hint}; "
                    f"fix the name (the table has: {listed})"
                )
            elif not allowed(types[column]):
                problems.append(f"`{key}` needs {wanted}, but {column!r} is {types[column]}; {fix}")

        def kind_is(*kinds: str) -> Callable[[str], bool]:
            return lambda t: spark_type_kind(t) in kinds

        exact = lambda t: t in _INTEGER_TYPES or t == "string" or t.startswith("decimal") or t in ("date",)  # noqa: E731
        for i, key in enumerate(self.keys):
            need(f"keys[{i}]", key, exact, "an exact type (string, integer, decimal or date)",
                 "a float is no key: pick another column or cast it in a view")
        need("label", self.label, kind_is(BOOLEAN, NUMERIC), "a boolean or 0/1 number",
             "name the boolean label column, or drop `label` to train without one")
        need("date_column", self.date_column, lambda t: t in ("date", "timestamp", "timestamp_ntz"),
             "a date or timestamp", "name the date (partition) column, or drop `date_column`")
        need("event_time", self.event_time, lambda t: t in ("timestamp", "timestamp_ntz"),
             "a timestamp", "name a timestamp column, or drop `event_time`")
        for i, column in enumerate(self.sensitive):
            need(f"sensitive[{i}]", column, lambda t: True, "", "")
        fixes = {
            NUMERIC_KIND: "a number; for text use kind = \"categorical\", for true/false kind = \"boolean\"",
            BOOLEAN_KIND: "a boolean; for a 0/1 number use kind = \"numeric\"",
            CATEGORICAL_KIND: "a string column; a float or integer is kind = \"numeric\" (or cast it to string in a view)",
            TIMESTAMP_KIND: "a timestamp or date; for a number such as an hour use kind = \"numeric\" with transform = \"cyclic\"",
        }
        for i, f in enumerate(self.features):
            key = f"features[{i}].column" if len(f.columns) == 1 else f"features[{i}].columns"
            for column in f.columns:
                need(key, column, kind_is(_INPUT_KIND[f.kind]), f"{f.kind} input", f"kind {f.kind!r} takes {fixes[f.kind]}")
        if problems:
            raise SpecError(f"spec {self.name} does not fit {where}: " + "; ".join(problems))

    def check_sample(self, sample: pd.DataFrame, where: str) -> None:
        """Raise SpecError for what only data shows: a label that is not two-valued boolean/0-1,
        keys that are not unique (or null) in `sample`."""
        if self.label is not None and self.label in sample:
            values = pd.unique(sample[self.label].dropna())
            if len(values) > 2 or not all(_is_binary(v) for v in values):
                shown = ", ".join(repr(v) for v in sorted(values, key=str)[:5])
                raise _fail(
                    where, "label", f"names {self.label!r}, which holds {len(values)} distinct values ({shown})",
                    "a label must be true/false or 0/1: name such a column, or drop `label` to train without one",
                )
        if self.keys and all(k in sample for k in self.keys):
            keys = sample[list(self.keys)]
            nulls = int(keys.isna().any(axis=1).sum())
            duplicated = int(keys.duplicated().sum())
            if nulls or duplicated:
                raise _fail(
                    where, "keys", f"{list(self.keys)} are not unique in a sample of {len(sample)} rows "
                    f"({duplicated} duplicated, {nulls} with a null key)",
                    "name the column(s) that identify one row, e.g. add the date column to `keys`",
                )

    # --- learning ----------------------------------------------------------------------------

    def fit(self, train_sample: pd.DataFrame | None = None) -> "FittedSpec":
        """Learn the categorical vocabularies the spec leaves to data from the training split.

        The `top_n` most frequent non-null text values, ties broken by value, so the same rows give
        the same vocabulary whatever their order. A spec whose vocabularies are all given needs no
        data (`train_sample` may be None).
        """
        counts: dict[str, dict[str, int]] = {}
        for f in self.features:
            column = f.columns[0]
            if f.learns and train_sample is not None and column in train_sample:
                values = train_sample[column]
                counts[column] = values[values.map(lambda v: isinstance(v, str))].value_counts().to_dict()
        return self.fit_counts(counts, 0 if train_sample is None else len(train_sample))

    def fit_counts(self, counts: Mapping[str, Mapping[str, int]], rows: int) -> "FittedSpec":
        """`fit` from value counts of the learned columns ({column: {text value: rows}}) over `rows`
        training rows, counted wherever the rows are (training.pipeline.fit_spec counts them per
        Ray Data block). Only the counts of each column's top values matter."""
        learned: dict[str, tuple[str, ...]] = {}
        for i, f in enumerate(self.features):
            if f.kind != CATEGORICAL_KIND:
                continue
            if f.vocabulary is not None:
                learned[f.name] = f.vocabulary
                continue
            column = f.columns[0]
            if column not in counts:
                raise _fail(
                    f"spec {self.name}", f"features[{i}]",
                    f"learns its vocabulary from column {column!r}, which the training rows lack",
                    "pass the training split with that column to fit(), or list `vocabulary` in the spec",
                )
            ranked = sorted(counts[column].items(), key=lambda kv: (-kv[1], kv[0]))
            learned[f.name] = tuple(v for v, _ in ranked[: f.top_n or DEFAULT_TOP_N])
            if not learned[f.name] and not f.other:
                raise _fail(
                    f"spec {self.name}", f"features[{i}]", f"learned no values from {rows} training rows",
                    "check the column's data, list `vocabulary`, or keep `other = true`",
                )
        return FittedSpec(self, learned)

    # --- serialising -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.description is not None:
            out["description"] = self.description
        out["keys"] = list(self.keys)
        for key in ("label", "date_column", "event_time"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["sensitive"] = list(self.sensitive)
        out["features"] = [f.to_json() for f in self.features]
        return out

    @classmethod
    def from_json(cls, data: Any, where: str = "spec") -> "SourceSpec":
        return _parse(data, where)

    def to_toml(self) -> str:
        """The spec as TOML that `parse_spec` reads back to an equal spec."""
        return _render(self, {})


def _is_binary(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return True
    try:
        return float(value) in (0.0, 1.0)
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class FittedSpec:
    """A spec with what training learned from data: the categorical vocabularies."""

    spec: SourceSpec
    vocabularies: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # feature name -> values

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(n for f in self.spec.features for n in f.output_names(self.vocabularies.get(f.name, ())))

    def feature_set(self) -> FeatureSet:
        """The FeatureSet this spec computes (built once per fitted spec)."""
        return _compiled_feature_set(self)

    def to_json(self) -> dict[str, Any]:
        """{"spec": ..., "learned": {"vocabularies": ...}}: the manifest's `feature_set` keys."""
        return {"spec": self.spec.to_json(), "learned": {"vocabularies": {k: list(v) for k, v in self.vocabularies.items()}}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = "manifest") -> "FittedSpec":
        spec = SourceSpec.from_json(data.get("spec"), where)
        learned = data.get("learned") or {}
        vocabularies = learned.get("vocabularies", {}) if isinstance(learned, dict) else None
        if not isinstance(vocabularies, dict) or not all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in vocabularies.values()
        ):
            raise _fail(where, "learned.vocabularies", "is not an object of feature -> list of strings",
                        "re-export the model with this lakescore")
        missing = [f.name for f in spec.features if f.kind == CATEGORICAL_KIND and f.name not in vocabularies]
        if missing:
            raise _fail(where, "learned.vocabularies", f"lacks {missing}", "re-export the model with this lakescore")
        return cls(spec, {k: tuple(v) for k, v in vocabularies.items()})

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_json(), sort_keys=True))


# --- parsing ----------------------------------------------------------------------------------


def load_spec(path: str | Path) -> SourceSpec:
    """Read and check a spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"feature spec {str(path)!r} does not exist; give the path of a .toml spec or a builtin name "
                        f"({', '.join(builtin_specs())})")
    return parse_spec(path.read_text(encoding="utf-8"), str(path))


def parse_spec(text: str, where: str = "spec") -> SourceSpec:
    """Parse and check spec TOML; `where` (a file name) starts every error message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{where} is not valid TOML ({exc}); fix the syntax") from None
    return _parse(data, where)


def builtin_specs() -> tuple[str, ...]:
    """Names of the specs shipped in the package (lakescore/specs/*.toml)."""
    folder = importlib.resources.files("lakescore").joinpath("specs")
    return tuple(sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml")))


@functools.lru_cache(maxsize=None)
def builtin_spec(name: str) -> SourceSpec:
    """A spec shipped in the package by name, e.g. "transactions_v1"."""
    resource = importlib.resources.files("lakescore").joinpath("specs", f"{name}.toml")
    if not resource.is_file():
        raise SpecError(f"there is no builtin feature spec {name!r} (builtin: {', '.join(builtin_specs())}); "
                        "give a spec file's path instead")
    return parse_spec(resource.read_text(encoding="utf-8"), f"lakescore/specs/{name}.toml")


def _parse(data: Any, where: str) -> SourceSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{where}: a spec is a TOML table (JSON object), not {type(data).__name__}; re-export or fix it")
    _no_unknown(data, _SPEC_KEYS, "", where)
    name = _get(data, "name", "", where, str, "a name such as \"sensors_v1\"")
    if not _SPEC_NAME.match(name):
        raise _fail(where, "name", f"is {name!r}", "use letters, digits and underscores, starting with a letter (e.g. sensors_v1)")
    version = _get(data, "version", "", where, int, "an integer version such as 1")
    if isinstance(version, bool) or version < 1:
        raise _fail(where, "version", f"is {version!r}", "give an integer >= 1")
    keys = _names(data, "keys", where, default=[])
    sensitive = _names(data, "sensitive", where, default=[])
    single = {k: _get(data, k, "", where, str, "a column name", required=False) for k in ("label", "date_column", "event_time")}
    description = _get(data, "description", "", where, str, "text", required=False)
    raw_features = data.get("features")
    if not isinstance(raw_features, list) or not raw_features or not all(isinstance(f, dict) for f in raw_features):
        raise _fail(where, "features", "is missing or not a list of tables",
                    "add at least one [[features]] table with name, kind and column")
    features = tuple(_parse_feature(f, i, where) for i, f in enumerate(raw_features))
    spec = SourceSpec(name=name, version=version, keys=tuple(keys), features=features, sensitive=tuple(sensitive),
                      description=description, **single)
    _check_consistent(spec, where)
    return spec


def _parse_feature(data: dict, i: int, where: str) -> FeatureSpec:
    path = f"features[{i}]"
    if "clip" in data:
        raise _fail(where, f"{path}.clip", "is not a spec setting",
                    "remove it: every feature is already clipped at quantiles learned on the training split "
                    "(settings train.clip_low_quantile / train.clip_high_quantile)")
    _no_unknown(data, _FEATURE_KEYS, path, where)
    name = _get(data, "name", path, where, str, "the feature's name")
    kind = _get(data, "kind", path, where, str, f"one of {', '.join(KINDS)}")
    if kind not in KINDS:
        raise _fail(where, f"{path}.kind", f"is {kind!r}", f"use one of: {', '.join(KINDS)}")
    if ("column" in data) == ("columns" in data):
        raise _fail(where, path, "needs exactly one of `column` and `columns`",
                    "give `column = \"...\"` (or `columns = [a, b]` for a two-column transform)")
    if "column" in data:
        columns = (_get(data, "column", path, where, str, "a column name"),)
    else:
        columns = tuple(_names(data, "columns", where, path=path))
    transforms = TRANSFORMS[kind]
    transform = _get(data, "transform", path, where, str, "a transform name", required=False) or transforms[0]
    if transform not in transforms:
        raise _fail(where, f"{path}.transform", f"is {transform!r}, which a {kind} feature does not have",
                    f"use one of: {', '.join(transforms)}")
    wanted = 2 if transform in TWO_COLUMNS else 1
    if len(columns) != wanted:
        raise _fail(where, f"{path}.{'column' if 'column' in data else 'columns'}",
                    f"names {len(columns)} column(s), transform {transform!r} takes {wanted}",
                    "give `columns = [numerator, denominator]`" if wanted == 2 else "give one `column`")
    options = {k: data[k] for k in _FEATURE_KEYS[5:] if k in data}
    allowed = {
        "cyclic": ("period",),
        "ratio": ("denominator_divide_by", "denominator_floor"),
        "log1p_ratio": ("denominator_divide_by", "denominator_floor"),
        "one_hot": ("vocabulary", "top_n", "other", "output"),
    }.get(transform, ())
    for key in options:
        if key not in allowed:
            raise _fail(where, f"{path}.{key}", f"does not apply to a {kind} feature with transform {transform!r}",
                        f"remove it (this transform takes: {', '.join(allowed) or 'no options'})")
    numbers = {}
    for key in ("period", "denominator_divide_by", "denominator_floor"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (
                    value == 0 and key != "denominator_floor"):
                raise _fail(where, f"{path}.{key}", f"is {value!r}", "give a finite positive number")
            numbers[key] = float(value)
    if transform == "cyclic" and "period" not in numbers:
        raise _fail(where, f"{path}.period", "is missing", "give the circle's length, e.g. period = 24 for an hour of day")
    vocabulary = None
    if "vocabulary" in options:
        vocabulary = options["vocabulary"]
        if not isinstance(vocabulary, list) or not all(isinstance(v, str) for v in vocabulary) or len(set(vocabulary)) != len(vocabulary):
            raise _fail(where, f"{path}.vocabulary", "is not a list of distinct strings", "list each value once, as text")
        vocabulary = tuple(vocabulary)
    top_n = options.get("top_n")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
        raise _fail(where, f"{path}.top_n", f"is {top_n!r}", "give a positive integer")
    if top_n is not None and vocabulary is not None:
        raise _fail(where, f"{path}.top_n", "is given with `vocabulary`", "give either the vocabulary or top_n to learn it")
    other = options.get("other", True)
    if not isinstance(other, bool):
        raise _fail(where, f"{path}.other", f"is {other!r}", "give true or false")
    output = options.get("output")
    if output is not None and (not isinstance(output, str) or "{value}" not in output):
        raise _fail(where, f"{path}.output", f"is {output!r}", "give a name template holding {value}, e.g. \"{name}={value}\"")
    return FeatureSpec(name=name, kind=kind, columns=columns, transform=transform, vocabulary=vocabulary, top_n=top_n,
                       other=other, output=output, **numbers)


def _check_consistent(spec: SourceSpec, where: str) -> None:
    names = [f.name for f in spec.features]
    for i, f in enumerate(spec.features):
        if names.index(f.name) != i:
            raise _fail(where, f"features[{i}].name", f"repeats {f.name!r}", "give every feature its own name")
        if spec.label is not None and spec.label in f.columns:
            raise _fail(where, f"features[{i}]", f"reads the label column {spec.label!r}",
                        "remove the feature: a model must not see its label")
    kinds: dict[str, tuple[int, str]] = {}
    for i, f in enumerate(spec.features):
        for c in f.columns:
            first = kinds.setdefault(c, (i, _INPUT_KIND[f.kind]))
            if first[1] != _INPUT_KIND[f.kind] or (f.kind == CATEGORICAL_KIND and first[0] != i):
                raise _fail(where, f"features[{i}]", f"reads column {c!r} as {f.kind}, as features[{first[0]}] does "
                            "differently (or as another categorical)",
                            "read each column as one kind, and one-hot a column once")
    outputs: dict[str, int] = {}
    for i, f in enumerate(spec.features):
        for out in f.output_names(f.vocabulary or ()):
            if outputs.setdefault(out, i) != i:
                raise _fail(where, f"features[{i}].name", f"gives output {out!r}, as features[{outputs[out]}] does",
                            "rename one of them")


def _no_unknown(data: dict, known: tuple[str, ...], path: str, where: str) -> None:
    extra = [k for k in data if k not in known]
    if extra:
        key = f"{path}.{extra[0]}" if path else extra[0]
        close = difflib.get_close_matches(extra[0], known, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise _fail(where, key, "is not a spec key", f"{hint}known keys here: {', '.join(known)}")


def _get(data: dict, key: str, path: str, where: str, kind: type, wanted: str, required: bool = True) -> Any:
    full = f"{path}.{key}" if path else key
    if key not in data:
        if required:
            raise _fail(where, full, "is missing", f"give {wanted}")
        return None
    value = data[key]
    if not isinstance(value, kind) or (kind is str and not value) or (kind is int and isinstance(value, bool)):
        raise _fail(where, full, f"is {value!r}", f"give {wanted}")
    return value


def _names(data: dict, key: str, where: str, *, path: str = "", default: list | None = None) -> list[str]:
    full = f"{path}.{key}" if path else key
    if key not in data and default is not None:
        return list(default)
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value) or len(set(value)) != len(value):
        raise _fail(where, full, f"is {value!r}", "give a list of distinct column names, e.g. [\"id\"]")
    return value


# --- compiling to a FeatureSet ------------------------------------------------------------------


class _Reads:
    """One batch's raw columns as the steps read them. Only what more than one step needs (`keep`,
    known at compile time) is held for the batch: holding every intermediate array made the
    transactions features slower than the function they replaced (more memory to fault in and
    stream through on every batch; see docs/measurements.md, "Scoring worker and UDF")."""

    def __init__(self, raw: RawColumns, keep: frozenset[tuple[str, str]]):
        self.raw = raw
        self.keep = keep
        self.held: dict[tuple[str, str], np.ndarray] = {}

    def _get(self, key: tuple[str, str], compute: Callable[[], np.ndarray]) -> np.ndarray:
        if key in self.held:
            return self.held[key]
        value = compute()
        if key in self.keep:
            self.held[key] = value
        return value

    def numbers(self, column: str) -> np.ndarray:
        return self._get(("numbers", column), lambda: self.raw.numbers(column))

    def positive(self, column: str) -> np.ndarray:
        """max(v, 0); NaN stays NaN."""
        return self._get(("positive", column), lambda: np.maximum(self.numbers(column), 0.0))

    def log1p(self, column: str) -> np.ndarray:
        """log(1 + max(v, 0)), as `lakescore.features._log1p_of_positive` computes it."""
        return self._get(("log1p", column), lambda: np.log1p(self.positive(column)))


# What each read needs in turn: log1p reads positive, which reads numbers.
_READ_CHAIN = {"numbers": ("numbers",), "positive": ("positive", "numbers"), "log1p": ("log1p", "positive", "numbers")}


def _reads_of(f: FeatureSpec) -> list[tuple[str, str]]:
    """The `_Reads` calls a numeric or boolean feature's step makes."""
    if f.kind == BOOLEAN_KIND or f.transform in ("none", "cyclic"):
        return [("numbers", f.columns[0])]
    if f.transform == "log1p":
        return [("log1p", f.columns[0])]
    if f.transform == "log1p_difference":
        return [("log1p", c) for c in f.columns]
    if f.transform == "log1p_ratio":
        return [("positive", f.columns[0]), ("numbers", f.columns[1])]
    if f.transform == "ratio":
        return [("numbers", c) for c in f.columns]
    return []


def _shared_reads(spec: SourceSpec) -> frozenset[tuple[str, str]]:
    """The reads more than one step needs, directly or through another read that is not held."""
    requests: dict[tuple[str, str], int] = {}
    for f in spec.features:
        for key in _reads_of(f):
            requests[key] = requests.get(key, 0) + 1
    keep = {k for k, n in requests.items() if n > 1}
    while True:
        demand = {k: 1 for k in requests}
        for read, column in requests:
            for step in _READ_CHAIN[read][1:]:
                demand[(step, column)] = demand.get((step, column), 0) + 1
                if (step, column) in keep:
                    break
        more = {k for k, n in demand.items() if n > 1} - keep
        if not more:
            return frozenset(keep)
        keep |= more


_Step = Callable[[_Reads], Mapping[str, np.ndarray]]
_US_PER_HOUR = 3_600_000_000.0
_US_PER_DAY = 86_400_000_000.0


def _numeric_step(f: FeatureSpec) -> _Step:
    name, first = f.name, f.columns[0]
    if f.transform == "none":
        return lambda r: {name: r.numbers(first)}
    if f.transform == "log1p":
        return lambda r: {name: r.log1p(first)}
    if f.transform == "cyclic":
        period, (sin, cos) = f.period, f.output_names()

        def cyclic(r: _Reads) -> Mapping[str, np.ndarray]:
            s, c = _circle(r.numbers(first), period)
            return {sin: s, cos: c}

        return cyclic
    second = f.columns[1]
    if f.transform == "log1p_difference":
        return lambda r: {name: r.log1p(first) - r.log1p(second)}
    divide_by, floor, log = f.denominator_divide_by, f.denominator_floor, f.transform == "log1p_ratio"

    def ratio(r: _Reads) -> Mapping[str, np.ndarray]:
        numerator, denominator = (r.positive(first) if log else r.numbers(first)), r.numbers(second)
        if divide_by is not None:
            denominator = denominator / divide_by
        if floor is not None:
            denominator = np.maximum(denominator, floor)
        value = numerator / denominator
        return {name: np.log1p(value) if log else value}

    return ratio


def _categorical_step(f: FeatureSpec, vocabulary: tuple[str, ...]) -> _Step:
    column, names, other, n = f.columns[0], f.output_names(vocabulary), f.other, len(vocabulary)
    slots = np.arange(n)[:, None]

    def one_hot(r: _Reads) -> Mapping[str, np.ndarray]:
        # One hashing pass to codes (-1: null or not in the vocabulary), then one integer compare
        # per value: comparing the strings once per value cost more than the model in the UDF.
        codes = r.raw.codes(column, vocabulary)
        hot = (codes == slots).astype(np.float32)
        if other:
            missing = r.raw.missing(column)
            hot = np.vstack([hot, ((codes < 0) & ~missing).astype(np.float32)[None, :]])
            hot[:, missing] = np.nan
        else:
            # Outside the vocabulary or null: NaN in every slot, so it is imputed, not read as "none".
            hot[:, codes < 0] = np.nan
        return dict(zip(names, hot))

    return one_hot


def _timestamp_step(f: FeatureSpec) -> _Step:
    column, transform, names = f.columns[0], f.transform, f.output_names()

    def time_of(r: _Reads) -> Mapping[str, np.ndarray]:
        us = r.raw.timestamps(column)
        if transform in ("hour", "hour_cyclic"):
            hours = np.mod(us, _US_PER_DAY) / _US_PER_HOUR  # fractional hour of the day, UTC
            if transform == "hour":
                return {names[0]: np.floor(hours)}
            s, c = _circle(hours, 24.0)
            return {names[0]: s, names[1]: c}
        weekday = np.mod(np.floor(us / _US_PER_DAY) + 3.0, 7.0)  # 1970-01-01 was a Thursday; Monday = 0
        if transform == "weekday":
            return {names[0]: weekday}
        s, c = _circle(weekday, 7.0)
        return {names[0]: s, names[1]: c}

    return time_of


class _SpecFunction:
    """The feature function of a fitted spec: one step per feature, built once at compile time.

    Pickles as the fitted spec's JSON (Ray and Spark ship feature sets to workers)."""

    def __init__(self, fitted: FittedSpec):
        self.fitted = fitted
        self.keep = _shared_reads(fitted.spec)
        self.steps: list[_Step] = []
        for f in fitted.spec.features:
            if f.kind == NUMERIC_KIND:
                self.steps.append(_numeric_step(f))
            elif f.kind == BOOLEAN_KIND:
                self.steps.append(lambda r, name=f.name, column=f.columns[0]: {name: r.numbers(column)})
            elif f.kind == CATEGORICAL_KIND:
                self.steps.append(_categorical_step(f, tuple(fitted.vocabularies[f.name])))
            else:
                self.steps.append(_timestamp_step(f))

    def __call__(self, raw: RawColumns) -> dict[str, np.ndarray]:
        reads = _Reads(raw, self.keep)
        out: dict[str, np.ndarray] = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            for step in self.steps:
                out.update(step(reads))
        return out

    def __reduce__(self):
        return (_function_from_json, (self.fitted.to_json(),))


def _function_from_json(data: Mapping[str, Any]) -> _SpecFunction:
    return _SpecFunction(FittedSpec.from_json(data))


@functools.lru_cache(maxsize=64)
def _compiled_feature_set(fitted: FittedSpec) -> FeatureSet:
    missing = [f.name for f in fitted.spec.features if f.kind == CATEGORICAL_KIND and f.name not in fitted.vocabularies]
    if missing:
        raise SpecError(f"spec {fitted.spec.name}: features {missing} have no vocabulary yet; fit the spec on the training split first")
    categories = {
        f.columns[0]: tuple(fitted.vocabularies[f.name])
        for f in fitted.spec.features
        # With an "(other)" slot the function must tell null from unseen, which codes cannot.
        if f.kind == CATEGORICAL_KIND and not f.other
    }
    return FeatureSet(
        name=fitted.spec.name,
        inputs=fitted.spec.inputs,
        features=fitted.features,
        _fn=_SpecFunction(fitted),
        categories=categories,
        fitted=fitted,
    )


# --- drafting a spec from a table ---------------------------------------------------------------

LABEL_NAMES = ("is_anomaly", "anomaly", "label", "fault", "is_fault", "is_fraud", "fraud", "target", "outlier",
               "is_outlier", "class", "y")
_SENSITIVE_HINTS = ("email", "phone", "name", "address", "ssn", "iban", "card_number", "passport", "birth", "ip_address")
MAX_CATEGORIES = 50  # more distinct strings than this are left out of a suggestion
SKEW_FOR_LOG = 2.0  # a non-negative column skewed beyond this is suggested on a log scale


@dataclass(frozen=True)
class Suggestion:
    """A drafted spec and why each part was guessed (`notes`: TOML key or feature name -> reason)."""

    spec: SourceSpec
    notes: Mapping[str, str]
    left_out: tuple[str, ...] = ()  # "column: why" for columns that are no feature


def _plain(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def suggest_spec(
    types: Mapping[str, str], sample: pd.DataFrame, *, name: str, partition_columns: Sequence[str] = ()
) -> Suggestion:
    """Draft a spec from a table's schema and a sample of its rows (pure: no Spark).

    Keys: the first string/integer column unique and non-null in the sample (id-like names first).
    Label: a column named like one (`LABEL_NAMES`) with two values. Date column: a `date` column
    (a partition column first). Event time: a timestamp column. Features: booleans; numbers (log1p
    when non-negative and skewed); strings of at most MAX_CATEGORIES values as categoricals; hour
    and weekday of timestamps. The result is a draft for a person to read and edit.
    """
    if not _SPEC_NAME.match(name):
        raise SpecError(f"spec name {name!r} is not usable; use letters, digits and underscores, e.g. sensors_v1")
    rows = len(sample)
    notes: dict[str, str] = {}
    left_out: list[str] = []
    columns = [c for c in types if c in sample.columns]
    for c in types:
        if c not in sample.columns:
            left_out.append(f"{c}: not in the sample")

    def distinct(c: str) -> int:
        return int(sample[c].dropna().nunique())

    label = None
    for c in columns:
        if _plain(c) in LABEL_NAMES and spark_type_kind(types[c]) in (BOOLEAN, NUMERIC) and distinct(c) == 2 and all(
                _is_binary(v) for v in pd.unique(sample[c].dropna())):
            label = c
            notes["label"] = f"{distinct(c)} distinct values, named like a label"
            break
    if label is None:
        notes["label"] = "no two-valued column named like a label: unsupervised; add `label = \"...\"` if there is one"

    keys: list[str] = []
    candidates = [c for c in columns if c != label and (types[c] in _INTEGER_TYPES or types[c] == "string")]
    candidates.sort(key=lambda c: 0 if re.search(r"(^|_)(id|key|uuid)$", _plain(c)) else 1)
    for c in candidates:
        if rows and sample[c].notna().all() and sample[c].is_unique:
            keys = [c]
            notes["keys"] = f"unique in the sample of {rows} rows"
            break
    if not keys:
        notes["keys"] = f"no string or integer column is unique in the sample of {rows} rows: name the key column(s)"

    dates = [c for c in columns if types[c] == "date"]
    dates.sort(key=lambda c: 0 if c in partition_columns else 1)
    date_column = dates[0] if dates else None
    if date_column:
        notes["date_column"] = "a partition column of type date" if date_column in partition_columns else "a column of type date"
    times = [c for c in columns if types[c] in ("timestamp", "timestamp_ntz")]
    event_time = times[0] if times else None
    if event_time:
        notes["event_time"] = f"the first column of type {types[event_time]}"
    sensitive = [c for c in columns if any(h in _plain(c) for h in _SENSITIVE_HINTS)]
    if sensitive:
        notes["sensitive"] = "named like personal data"

    features: list[FeatureSpec] = []
    for c in columns:
        if c in keys or c == label or c == date_column:
            continue
        kind, values = spark_type_kind(types[c]), sample[c].dropna()
        if values.empty:
            left_out.append(f"{c}: null in every sampled row")
        elif kind == BOOLEAN:
            features.append(FeatureSpec(c, BOOLEAN_KIND, (c,), "none"))
            notes[c] = "true/false"
        elif kind == NUMERIC:
            numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            numbers = numbers[np.isfinite(numbers)]
            if numbers.nunique() <= 1:
                left_out.append(f"{c}: one value in the sample, nothing to learn from")
                continue
            skew = float(numbers.skew()) if len(numbers) > 2 else 0.0
            skew = 0.0 if not math.isfinite(skew) else skew
            log = numbers.min() >= 0 and skew > SKEW_FOR_LOG
            features.append(FeatureSpec(c, NUMERIC_KIND, (c,), "log1p" if log else "none"))
            notes[c] = f"skew {skew:.1f}: log1p" if log else f"skew {skew:.1f}: as it is"
        elif kind == STRING:
            n = int(values.nunique())
            if n > MAX_CATEGORIES:
                left_out.append(f"{c}: {n} distinct values in {rows} rows, too many for a categorical "
                                "(add one with top_n if it matters)")
                continue
            features.append(FeatureSpec(c, CATEGORICAL_KIND, (c,), "one_hot", top_n=min(n, DEFAULT_TOP_N)))
            notes[c] = f"{n} distinct values" + (f", the {DEFAULT_TOP_N} most frequent kept" if n > DEFAULT_TOP_N else "")
        elif types[c] in _TIME_TYPES:
            if types[c] != "date":
                features.append(FeatureSpec(f"{c} hour", TIMESTAMP_KIND, (c,), "hour_cyclic"))
                notes[f"{c} hour"] = "time of day (UTC) on a circle"
            features.append(FeatureSpec(f"{c} weekday", TIMESTAMP_KIND, (c,), "weekday_cyclic"))
            notes[f"{c} weekday"] = "day of the week on a circle"
        else:
            left_out.append(f"{c}: type {types[c]} is no feature kind")
    if not features:
        raise SpecError(f"no column of {name} makes a feature ({'; '.join(left_out) or 'only keys and label'}); "
                        "write the spec by hand")
    spec = SourceSpec(name=name, version=1, keys=tuple(keys), features=tuple(features), label=label,
                      date_column=date_column, event_time=event_time, sensitive=tuple(sensitive))
    _check_consistent(spec, "suggestion")
    return Suggestion(spec, notes, tuple(left_out))


def render_suggestion(spec: SourceSpec, notes: Mapping[str, str], left_out: Sequence[str] = ()) -> str:
    """The spec as commented TOML: each guess says why, columns left out are listed at the end."""
    return _render(spec, notes, left_out, draft=True)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"{type(value).__name__} has no TOML form here")


def _render(spec: SourceSpec, notes: Mapping[str, str], left_out: Sequence[str] = (), draft: bool = False) -> str:
    lines: list[str] = []
    if draft:
        lines += ["# Feature spec drafted from a sample of the table: read every guess, edit, then train with it.",
                  "# Every feature is clipped at training-split quantiles and imputed by the bundle's preprocessing.", ""]

    def entry(key: str, value: Any) -> None:
        if key in notes:
            lines.append(f"# {key}: {notes[key]}")
        if value is None:
            if key in notes:
                lines.append(f"# {key} = ")
            return
        lines.append(f"{key} = {_toml_value(value)}")

    data = spec.to_json()
    for key in ("name", "version", "description", "keys", "label", "date_column", "event_time", "sensitive"):
        entry(key, data.get(key))
    for f in data["features"]:
        lines.append("")
        if f["name"] in notes:
            lines.append(f"# {notes[f['name']]}")
        lines.append("[[features]]")
        for key, value in f.items():
            lines.append(f"{key} = {_toml_value(value)}")
    if left_out:
        lines += ["", "# Columns left out:"] + [f"#   {line}" for line in left_out]
    return "\n".join(lines) + "\n"


def spec_name_for(table: str) -> str:
    """A spec name for a table (`lakescore.sensors` or a path): `sensors_v1`."""
    stem = re.sub(r"[^a-z0-9]+", "_", table.rstrip("/").split("/")[-1].split(".")[-1].lower()).strip("_")
    return f"{stem if stem[:1].isalpha() else 't_' + stem}_v1"
