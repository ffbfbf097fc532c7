"""Synthetic card transactions with labelled anomalies, generated in numpy by Spark's tasks.

`build_transactions(spark, ...)` is a DataFrame of independent tasks, one per (day, bucket of
accounts): accounts are dealt to `buckets` buckets by id, and each task generates one day of one
bucket in numpy (`mapInArrow`), from a random generator seeded by (seed, day, bucket), and hands
Arrow batches to Spark, which writes them. Nothing is built on the driver and no task waits for
another (no shuffle): a cluster runs as many at once as it has cores. The same settings always
give the same rows, whatever the partitioning or executor count; a day regenerates identically
whatever else is generated with it.

An account's profile comes from a keyed hash of its id, so it is the same on every day: a home
country, a typical amount and spread, an active-hours centre, a favourite merchant category, and
how often the card is present. Accounts are skewed: a few are very active.

History per account (the previous payment, the payments in the last hour and day) is computed in
the task, which holds all of the account's payments of that day. What came before the day is a
carried summary drawn from the account's activity rate: how many payments it made the day before
(Poisson), the time of the last of them, and where. The 24-hour count of a payment adds the part
of yesterday's payments that fall in its window (spread evenly over yesterday); an account with
no payment in the last week has no previous payment (a null, as in a real source).

Anomalies, at `anomaly_rate` of the rows in total, one quarter of the rows of each kind:
- card_testing: a burst of 5-11 tiny online payments within minutes, mostly from a new device;
- account_takeover: a new device at an unusual hour buying goods that resell well, for several
  times the usual amount, often from another country;
- amount_spike: the account's usual kind of purchase for many times its usual amount;
- impossible_travel: a payment far away minutes after one at home.
A quarter of each kind are "hard": closer to normal behaviour (a 3.5-5x spike instead of 6-20x,
a takeover at a normal hour from home for 1.5-2.7x the usual amount, an 800-2,000 km jump about
two hours later), so that models differ. Normal behaviour has look-alikes too: 3% of
account-days are spent legitimately travelling, 3% from a new device.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
import zlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession

from lakescore import schemas as S

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "MX", "BR", "JP", "AU")
_EPOCH = dt.date(2000, 1, 1)
_EPOCH_DAYS_SINCE_1970 = (_EPOCH - dt.date(1970, 1, 1)).days
_DAY = 86_400
_CARD_TESTING_BURST_MEAN = 8.0  # rows per card-testing burst (5..11)
# Generated rows per task, by default: about 0.3 s of numpy and 40 MB of arrays per task.
ROWS_PER_TASK = 500_000
# Rows per Arrow batch handed to Spark.
_BATCH_ROWS = 65_536

# Codes: index into S.ANOMALY_TYPES plus one (0: a normal payment).
_NORMAL, _CARD_TESTING, _TAKEOVER, _SPIKE, _TRAVEL = 0, 1, 2, 3, 4
_CATEGORY_FACTOR = {"travel": 4.0, "electronics": 3.0, "fuel": 1.2, "digital_goods": 0.4}
_CATEGORY = {name: i for i, name in enumerate(S.MERCHANT_CATEGORIES)}


@dataclass(frozen=True)
class _Generation:
    """The parameters every task reads, fixed for one `build_transactions` call."""

    seed: int
    rows_per_day: int
    accounts: int
    anomaly_rate: float
    start_date: dt.date
    days: int
    buckets: int

    @classmethod
    def of(cls, days, rows_per_day, accounts, anomaly_rate, seed, start_date, rows_per_task, min_buckets) -> "_Generation":
        """The generation of `build_transactions`' arguments; refuses a start before `_EPOCH`."""
        if start_date < _EPOCH:
            raise ValueError(f"start_date {start_date} is before {_EPOCH}; pick a later start date")
        buckets = buckets_per_day(rows_per_day, accounts, rows_per_task, min_buckets)
        return cls(seed, rows_per_day, accounts, anomaly_rate, start_date, days, buckets)

    @property
    def first_day(self) -> int:
        """`start_date` as days since `_EPOCH`: row ids count from there."""
        return (self.start_date - _EPOCH).days


def buckets_per_day(rows_per_day: int, accounts: int, rows_per_task: int = ROWS_PER_TASK, min_buckets: int = 1) -> int:
    """How many tasks generate one day: enough for `rows_per_task` rows each, at least
    `min_buckets`, at most one per account."""
    return max(1, min(accounts, max(min_buckets, math.ceil(rows_per_day / rows_per_task))))


def build_transactions(
    spark: SparkSession,
    *,
    days: int,
    rows_per_day: int,
    accounts: int,
    anomaly_rate: float,
    seed: int,
    start_date: dt.date,
    rows_per_task: int = ROWS_PER_TASK,
    min_buckets: int = 1,
) -> DataFrame:
    """Return the synthetic transactions of `days` days from `start_date` (schema: TRANSACTIONS_SCHEMA).

    Args:
        days, rows_per_day: base rows; card-testing bursts and travel pairs add ~0.4% more.
        accounts: number of distinct accounts (activity is skewed across them).
        anomaly_rate: fraction of rows that are anomalies (default config: 0.005).
        seed: the same seed (and the same other arguments) gives identical rows.
        start_date: first `event_date`.
        rows_per_task, min_buckets: each day is generated by `buckets_per_day(...)` tasks, each
            writing its own file(s); part of what the rows are (accounts are dealt to buckets), so
            regenerating a day reproduces it only with the same values.

    Lazy: nothing runs until the result is written or collected. Row order: by task, then
    account and time within a task.
    """
    gen = _Generation.of(days, rows_per_day, accounts, anomaly_rate, seed, start_date, rows_per_task, min_buckets)
    tasks = days * gen.buckets
    schema = arrow_schema()

    def generate(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column(0).to_numpy():
                day, bucket = gen.first_day + int(task) // gen.buckets, int(task) % gen.buckets
                yield from _task_batches(gen, day, bucket, schema)

    return spark.range(0, tasks, numPartitions=tasks).mapInArrow(generate, S.TRANSACTIONS_SCHEMA)


def write_transaction_files(
    spark: SparkSession,
    path: str,
    *,
    days: int,
    rows_per_day: int,
    accounts: int,
    anomaly_rate: float,
    seed: int,
    start_date: dt.date,
    rows_per_task: int = ROWS_PER_TASK,
    min_buckets: int = 1,
) -> list:
    """Generate the rows `build_transactions` would and write each task's rows as one Parquet file
    under `path`, in its `event_date=` folder, from the task itself (pyarrow): Spark schedules the
    tasks, and only a record per file (`lake.WRITTEN_FILE_SCHEMA`) comes back to the driver, which
    commits them (`lake.commit_written_files`). Returns those records, one per task."""
    from lakescore import lake

    gen = _Generation.of(days, rows_per_day, accounts, anomaly_rate, seed, start_date, rows_per_task, min_buckets)
    tasks = days * gen.buckets
    schema = arrow_schema()
    # One name for the whole write: its files are told apart from an earlier write's by it.
    write_id = uuid.uuid4().hex

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for task in batch.column(0).to_numpy():
                day, bucket = gen.first_day + int(task) // gen.buckets, int(task) % gen.buckets
                table = _task_table(gen, day, bucket, schema)
                date = (_EPOCH + dt.timedelta(days=day)).isoformat()
                name = f"part-{int(task):05d}-{write_id}-{uuid.uuid4().hex[:8]}"
                record = lake.write_partition_file(table, path, S.EVENT_DATE, date, name)
                yield pa.RecordBatch.from_pylist([record])

    return spark.range(0, tasks, numPartitions=tasks).mapInArrow(write, lake.WRITTEN_FILE_SCHEMA).collect()


# --- keyed hashes: the same value for an account (or account-day) in every task ---------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def _hash_uniform(seed: int, tag: str, *keys: np.ndarray) -> np.ndarray:
    """A uniform in (0, 1) per element of `keys`, from a keyed 64-bit hash: independent per tag."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(np.shape(keys[0]), np.uint64(seed & (2**64 - 1)) ^ np.uint64(zlib.crc32(tag.encode())), np.uint64))
        for key in keys:
            h = _mix(h ^ (np.asarray(key).astype(np.uint64) * _GOLDEN))
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _hash_normal(seed: int, tag: str, *keys: np.ndarray) -> np.ndarray:
    """A standard normal per element by Box-Muller over two keyed uniforms."""
    u1, u2 = _hash_uniform(seed, tag + ":1", *keys), _hash_uniform(seed, tag + ":2", *keys)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


def _pick(n: int, u: np.ndarray) -> np.ndarray:
    """floor(u * n), an index into n values."""
    return np.minimum((u * n).astype(np.int64), n - 1)


# --- one task: a day of one bucket of accounts ------------------------------------------------


def _task_batches(gen: _Generation, day: int, bucket: int, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    table = _task_table(gen, day, bucket, schema)
    yield from table.to_batches(max_chunksize=_BATCH_ROWS)


def _task_table(gen: _Generation, day: int, bucket: int, schema: pa.Schema) -> pa.Table:
    """The rows of (day, bucket), ordered by account and time."""
    rng = np.random.default_rng([gen.seed, day, bucket])
    nb = gen.buckets
    base_rows = gen.rows_per_day // nb + int(bucket < gen.rows_per_day % nb)
    bucket_accounts = (gen.accounts - bucket + nb - 1) // nb

    base = _base_rows(gen, rng, day, bucket, base_rows, bucket_accounts)
    rows = _expand(base, rng)
    accounts = bucket + nb * np.arange(bucket_accounts)
    account_days = _account_days(gen.seed, accounts, day)
    profile = {name: values[rows["j"]] for name, values in _profiles(gen.seed, accounts).items()}
    _normal_payments(rng, rows, profile, {name: values[rows["j"]] for name, values in account_days.items()})
    _labels(rows)
    _anomalous_purchases(rng, rows, profile)
    _anomalous_places_and_times(rng, rows, profile)
    _missing_locations(rng, rows)
    rows["ts_rel"] = np.minimum(rows["hour"] * 3600 + rows["second"], _DAY - 1)
    # By account, then time; ties keep the generated order, which is by transaction id.
    order = np.argsort(rows["j"] * (1 << 18) + rows["ts_rel"], kind="stable")
    rows = {name: values[order] for name, values in rows.items()}
    profile = {name: values[order] for name, values in profile.items()}
    carried = _carried_summary(gen, rng, accounts, _account_days(gen.seed, accounts, day - 1), account_days["new"], base_rows)
    _history(rows, carried)
    return _to_arrow(gen, day, rows, profile, schema)


def _base_rows(gen: _Generation, rng: np.random.Generator, day: int, bucket: int, m: int, n_accounts: int) -> dict:
    """One entry per base payment: its id, anomaly kind, hardness, account and event timing."""
    k = bucket + gen.buckets * np.arange(m, dtype=np.int64)  # index within the day
    rid = day * gen.rows_per_day + k
    quarter = gen.anomaly_rate / 4.0
    # Seed rows per kind so that each kind ends up with ~a quarter of the anomalous rows.
    cuts = np.cumsum([quarter / _CARD_TESTING_BURST_MEAN, quarter, quarter, quarter])
    kind = np.searchsorted(cuts, rng.random(m), side="right") + 1  # 1..4 a kind, 5 normal
    kind[kind == 5] = _NORMAL
    hard = rng.random(m) < 0.25
    # Skewed activity: low account ids of the bucket are much busier.
    j = np.minimum((rng.random(m) ** 1.3 * n_accounts).astype(np.int64), n_accounts - 1)
    n_sub = np.where(kind == _CARD_TESTING, rng.integers(5, 12, m), np.where(kind == _TRAVEL, 2, 1))
    return {
        "rid": rid,
        "kind": kind.astype(np.int8),
        "hard": hard,
        "j": j,  # the account's index in the bucket
        "account": bucket + gen.buckets * j,
        "n_sub": n_sub,
        "hour_z": rng.standard_normal(m),  # the event's hour, shared by a burst's or pair's rows
        "second": (rng.random(m) * 3600).astype(np.int64),
        "night": rng.random(m),
    }


def _expand(base: dict, rng: np.random.Generator) -> dict:
    """Explode each base row into its output rows, numbered by `sub`: a card-testing row becomes a
    burst of 5-11 rows, an impossible-travel row a pair (home, then away)."""
    n_sub = base.pop("n_sub")
    index = np.repeat(np.arange(len(n_sub)), n_sub)
    starts = np.cumsum(n_sub) - n_sub
    rows = {name: values[index] for name, values in base.items()}
    rows["sub"] = np.arange(len(index)) - starts[index]
    rows["transaction_id"] = rows["rid"] * 16 + rows["sub"]
    return rows


def _profiles(seed: int, account: np.ndarray) -> dict:
    """The account's profile, all from a keyed hash of the account id."""
    return {
        "mu": 3.3 + 0.6 * _hash_normal(seed, "acct_mu", account),
        "sigma": 0.3 + 0.25 * _hash_uniform(seed, "acct_sigma", account),
        "home_country": _pick(len(COUNTRIES), _hash_uniform(seed, "acct_country", account) ** 2.0),
        "hour_centre": 9.0 + 11.0 * _hash_uniform(seed, "acct_hour", account),
        "fav_category": _pick(4, _hash_uniform(seed, "acct_fav", account)),
        "present_rate": 0.35 + 0.6 * _hash_uniform(seed, "acct_present", account),
    }


def _account_days(seed: int, accounts: np.ndarray, day: int) -> dict:
    """Per account, for one day: legitimate travel (3% of account-days: every payment is made
    abroad, in one place), where, and a new account (2%: no payment before today)."""
    days = np.full(len(accounts), day)
    return {
        "travelling": _hash_uniform(seed, "travelling", accounts, days) < 0.03,
        "away": _pick(len(COUNTRIES), _hash_uniform(seed, "away", accounts, days)),
        "away_km": 300.0 + 5000.0 * _hash_uniform(seed, "away_km", accounts, days),
        "new": _hash_uniform(seed, "new_account", accounts, days) < 0.02,
    }


def _normal_payments(rng: np.random.Generator, rows: dict, profile: dict, account_day: dict) -> None:
    """Add a normal payment for the account: what, how much, where, when within the hour."""
    n = len(rows["rid"])
    rows["hour"] = np.mod(np.round(profile["hour_centre"] + 3.2 * rows.pop("hour_z")).astype(np.int64), 24)
    category = np.where(rng.random(n) < 0.45, profile["fav_category"], _pick(len(S.MERCHANT_CATEGORIES), rng.random(n)))
    factor = np.ones(len(S.MERCHANT_CATEGORIES))
    for name, value in _CATEGORY_FACTOR.items():
        factor[_CATEGORY[name]] = value
    rows["category"] = category
    rows["amount"] = np.exp(profile["mu"] + profile["sigma"] * rng.standard_normal(n)) * factor[category]
    rows["online"] = (category == _CATEGORY["online"]) | (category == _CATEGORY["digital_goods"])
    rows["card_present"] = ~rows["online"] & (rng.random(n) < profile["present_rate"])
    travelling = account_day["travelling"]
    rows["country"] = np.where(travelling, account_day["away"], profile["home_country"])
    rows["distance"] = np.where(
        travelling, account_day["away_km"] + 20.0 * rng.random(n), np.exp(1.6 + 0.9 * rng.standard_normal(n))
    )
    rows["new_device"] = rng.random(n) < 0.03


def _labels(rows: dict) -> None:
    """`is_anomaly`: the first row of an impossible-travel pair is the genuine payment at home."""
    kind = rows["kind"]
    rows["is_anomaly"] = (kind != _NORMAL) & ~((kind == _TRAVEL) & (rows["sub"] == 0))


def _anomalous_purchases(rng: np.random.Generator, rows: dict, profile: dict) -> None:
    """Override what an anomaly buys and how: amount, category, card presence, hour, device."""
    n = len(rows["rid"])
    kind, hard = rows["kind"], rows["hard"]
    ct, ato, spike = kind == _CARD_TESTING, kind == _TAKEOVER, kind == _SPIKE
    typical = np.exp(profile["mu"] + profile["sigma"] ** 2 / 2.0)
    u_spike, u_ato = rng.random(n), rng.random(n)
    spike_factor = np.where(hard, 3.5 + 1.5 * u_spike, 6.0 + 14.0 * u_spike)
    ato_factor = np.where(hard, 1.5 + 1.2 * u_ato, 3.0 + 7.0 * u_ato)
    ct_amount = 0.5 + 4.5 * rng.random(n)
    rows["amount"] = np.select([ct, ato, spike], [ct_amount, typical * ato_factor, rows["amount"] * spike_factor], rows["amount"])
    ct_category = np.array([_CATEGORY["online"], _CATEGORY["digital_goods"]])[_pick(2, rng.random(n))]
    ato_category = np.array([_CATEGORY["electronics"], _CATEGORY["digital_goods"], _CATEGORY["travel"]])[_pick(3, rng.random(n))]
    rows["category"] = np.select([ct, ato], [ct_category, ato_category], rows["category"])
    rows["card_present"] &= ~(ct | ato)
    rows["hour"] = np.where(ato & ~hard, (1.0 + 4.0 * rows.pop("night")).astype(np.int64), rows["hour"])
    rows["new_device"] = np.where(ato, True, np.where(ct, rng.random(n) < 0.7, rows["new_device"]))


def _anomalous_places_and_times(rng: np.random.Generator, rows: dict, profile: dict) -> None:
    """Override where and when an anomaly happens: country, distance, second.

    A takeover often comes from another country (not when hard); the away row of an
    impossible-travel pair is far from home (hard: 800-2,000 km) and its home row is near.
    """
    n = len(rows["rid"])
    kind, hard, sub = rows["kind"], rows["hard"], rows["sub"]
    ct, ato = kind == _CARD_TESTING, kind == _TAKEOVER
    away, home = (kind == _TRAVEL) & (sub == 1), (kind == _TRAVEL) & (sub == 0)
    ato_abroad = ato & (rng.random(n) < 0.6) & ~hard
    rows["country"] = np.select(
        [ato_abroad, away, home],
        [_pick(len(COUNTRIES), rng.random(n)), _pick(len(COUNTRIES), rng.random(n)), profile["home_country"]],
        rows["country"],
    )
    u_km = rng.random(n)
    away_km = np.where(hard, 800.0 + 1200.0 * u_km, 3000.0 + 9000.0 * u_km)
    rows["distance"] = np.select([away, home], [away_km, np.exp(1.6 + 0.9 * rng.standard_normal(n))], rows["distance"])
    # Burst rows follow each other within seconds; the away payment comes minutes (hard: about
    # two hours) after the one at home.
    ct_gap = sub * (15 + (rng.random(n) * 60).astype(np.int64))
    u_gap = rng.random(n)
    travel_gap = np.where(hard, 6000 + (u_gap * 3000).astype(np.int64), 600 + (u_gap * 2400).astype(np.int64))
    rows["second"] = rows["second"] + np.select([ct, away], [ct_gap, travel_gap], 0)


def _missing_locations(rng: np.random.Generator, rows: dict) -> None:
    """No location (NaN, written as null) for about half of the normal online payments."""
    no_location = rows.pop("online") & (rng.random(len(rows["rid"])) < 0.5) & ~rows["is_anomaly"]
    rows["distance"] = np.where(no_location, np.nan, rows["distance"])


def _carried_summary(
    gen: _Generation, rng: np.random.Generator, accounts: np.ndarray, yesterday_of: dict, new: np.ndarray, base_rows: int
) -> dict:
    """Per account of the bucket (by index j): what came before the day.

    `yesterday`: its payments yesterday (Poisson at its daily rate); `last_ts` the time of the
    last of them relative to today's midnight (negative), or of an older payment within the week,
    or NaN when it made none or is new today; `country` and `distance` where that payment was.
    """
    n_accounts = len(accounts)
    j = np.arange(n_accounts)
    # Account j's share of the bucket's payments: u ** 1.3 * n falls in [j, j + 1).
    share = ((j + 1) / n_accounts) ** (1 / 1.3) - (j / n_accounts) ** (1 / 1.3)
    rate = base_rows * share
    yesterday = np.where(new, 0, rng.poisson(rate))
    # The last of n uniform times of day is distributed as U ** (1 / n).
    last_of_yesterday = _DAY * rng.random(n_accounts) ** (1.0 / np.maximum(yesterday, 1)) - _DAY
    in_week = (rng.random(n_accounts) < 1.0 - np.exp(-6.0 * rate)) & ~new
    older = -_DAY * (1.0 + 6.0 * rng.random(n_accounts))
    last_ts = np.where(yesterday > 0, last_of_yesterday, np.where(in_week, older, np.nan))
    travelled = yesterday_of["travelling"]
    country = np.where(travelled, yesterday_of["away"], _profiles(gen.seed, accounts)["home_country"])
    distance = np.where(travelled, yesterday_of["away_km"], np.exp(1.6 + 0.9 * rng.standard_normal(n_accounts)))
    return {"yesterday": yesterday, "last_ts": last_ts, "country": country, "distance": distance}


def _history(rows: dict, carried: dict) -> None:
    """Add the account's previous payment and its velocity; `rows` is ordered by account and time."""
    account, ts, j = rows["account"], rows["ts_rel"], rows["j"]
    first = np.ones(len(account), bool)
    first[1:] = account[1:] != account[:-1]
    previous = np.maximum(np.arange(len(account)) - 1, 0)
    rows["prev_ts"] = np.where(first, carried["last_ts"][j], ts[previous].astype(np.float64))
    rows["prev_country"] = np.where(first, carried["country"][j], rows["country"][previous])
    rows["prev_distance"] = np.where(first, carried["distance"][j], rows["distance"][previous])
    # One sorted key per (account, time): windows are ranges of it (2 ** 18 > two days of seconds).
    key = j * (1 << 18) + ts
    upto = np.searchsorted(key, key, side="right")
    rows["count_1h"] = upto - np.searchsorted(key, key - 3600, side="left")
    today_24h = upto - np.searchsorted(key, j * (1 << 18), side="left")
    # Yesterday's payments still inside the last 24 hours, spread evenly over yesterday.
    rows["count_24h"] = today_24h + np.floor(carried["yesterday"][j] * (1.0 - ts / _DAY) + 0.5).astype(np.int64)


def _to_arrow(gen: _Generation, day: int, rows: dict, profile: dict, schema: pa.Schema) -> pa.Table:
    """The rows in TRANSACTIONS_SCHEMA's columns, deriving the last few."""
    midnight = (day - gen.first_day) * _DAY + int(
        dt.datetime.combine(gen.start_date, dt.time(), tzinfo=dt.timezone.utc).timestamp()
    )
    ts = rows["ts_rel"]
    prev_ts = rows["prev_ts"]
    distance = np.round(rows["distance"], 1)
    country, prev_country = rows["country"], rows["prev_country"]
    # Distance from the previous payment, approximated from the distances from home: in the same
    # country the difference, across a border the sum (null when either is unknown).
    km_from_prev = np.round(
        np.where(country == prev_country, np.abs(rows["distance"] - rows["prev_distance"]), rows["distance"] + rows["prev_distance"]),
        1,
    )
    known_prev = ~np.isnan(prev_ts)
    kind = rows["kind"].astype(np.int8)
    columns = [
        pa.array(rows["transaction_id"], pa.int64()),
        pa.array(rows["account"], pa.int64()),
        pa.array((midnight + ts) * 1_000_000, pa.int64()).cast(schema.field(S.EVENT_TS).type),
        pa.array(np.round(rows["amount"], 2)),
        _strings(rows["category"], S.MERCHANT_CATEGORIES),
        _strings(country, COUNTRIES),
        pa.array(ts // 3600, pa.int32()),
        pa.array(distance, from_pandas=True),
        pa.array(ts - prev_ts, from_pandas=True),
        pa.array(km_from_prev, from_pandas=True),
        pa.array(rows["count_1h"], pa.int32()),
        pa.array(rows["count_24h"], pa.int32()),
        pa.array(np.round(np.exp(profile["mu"] + profile["sigma"] ** 2 / 2.0), 2)),
        pa.array(rows["new_device"]),
        pa.array(rows["card_present"]),
        pa.array(known_prev & (prev_country != country)),
        pa.array(rows["is_anomaly"]),
        _strings(np.where(rows["is_anomaly"], kind - 1, -1), S.ANOMALY_TYPES),
        pa.array(np.full(len(ts), day + _EPOCH_DAYS_SINCE_1970, np.int32), pa.date32()),
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _strings(codes: np.ndarray, values: tuple[str, ...]) -> pa.Array:
    """`values[code]` as a string array; a negative code is null."""
    indices = pa.array(codes.astype(np.int32), mask=codes < 0)
    return pa.DictionaryArray.from_arrays(indices, pa.array(values)).cast(pa.string())


def arrow_schema() -> pa.Schema:
    """TRANSACTIONS_SCHEMA as the Arrow schema Spark expects back from `mapInArrow` (UTC times)."""
    types = {
        "bigint": pa.int64(),
        "int": pa.int32(),
        "double": pa.float64(),
        "string": pa.string(),
        "boolean": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema(
        [pa.field(f.name, types[f.dataType.simpleString()], nullable=f.nullable) for f in S.TRANSACTIONS_SCHEMA.fields]
    )
