"""Synthetic card transactions with labelled anomalies, built entirely in Spark.

`build_transactions(spark, ...)` starts from `spark.range` and derives every value from a
keyed hash of (seed, row id, purpose), so nothing is built on the driver, the output does not
depend on partitioning or executor count, and the same seed always gives the same table: ten
thousand rows on a laptop and ten billion on a cluster come from the same code.

Behaviour per account (from a hash of the account id): a home country, a typical amount and
spread, an active-hours centre, a favourite merchant category, and how often the card is
present. Accounts are skewed: a few are very active.

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
import functools
import math
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from lakescore import schemas as S

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "MX", "BR", "JP", "AU")
_HASH_RANGE = float(1 << 47)
_EPOCH = dt.date(2000, 1, 1)
_CARD_TESTING_BURST_MEAN = 8.0  # rows per card-testing burst (5..11)


def _uniform(seed: int, tag: str, *cols: Column) -> Column:
    """A uniform in (0, 1) from a keyed 64-bit hash: deterministic per row, independent per tag."""
    h = F.xxhash64(F.lit(seed), F.lit(tag), *cols).bitwiseAND(F.lit((1 << 47) - 1))
    return (h.cast("double") + F.lit(0.5)) / F.lit(_HASH_RANGE)


def _normal(seed: int, tag: str, *cols: Column) -> Column:
    """A standard normal by Box-Muller over two keyed uniforms."""
    u1 = _uniform(seed, tag + ":1", *cols)
    u2 = _uniform(seed, tag + ":2", *cols)
    return F.sqrt(F.lit(-2.0) * F.log(u1)) * F.cos(F.lit(2.0 * math.pi) * u2)


def _pick(values: tuple[str, ...], u: Column) -> Column:
    """values[floor(u * len)] as a Spark expression."""
    index = F.least(F.floor(u * F.lit(len(values))).cast("int"), F.lit(len(values) - 1))
    return F.element_at(F.array(*[F.lit(v) for v in values]), index + F.lit(1))


@dataclass(frozen=True)
class _Generation:
    """The parameters every stage reads, fixed for one `build_transactions` call."""

    seed: int
    rows_per_day: int
    accounts: int
    anomaly_rate: float
    start_date: dt.date
    days: int

    @property
    def first_day(self) -> int:
        """`start_date` as days since `_EPOCH`: row ids count from there."""
        return (self.start_date - _EPOCH).days


def build_transactions(
    spark: SparkSession,
    *,
    days: int,
    rows_per_day: int,
    accounts: int,
    anomaly_rate: float,
    seed: int,
    start_date: dt.date,
) -> DataFrame:
    """Return the synthetic transactions of `days` days from `start_date` (schema: TRANSACTIONS_SCHEMA).

    Args:
        days, rows_per_day: base rows; card-testing bursts and travel pairs add ~0.4% more.
        accounts: number of distinct accounts (activity is skewed across them).
        anomaly_rate: fraction of rows that are anomalies (default config: 0.005).
        seed: the same seed gives identical rows.
        start_date: first `event_date`.

    Lazy: nothing runs until the result is written or collected.
    """
    gen = _Generation(
        seed=seed,
        rows_per_day=rows_per_day,
        accounts=accounts,
        anomaly_rate=anomaly_rate,
        start_date=start_date,
        days=days,
    )
    if gen.first_day < 0:
        raise ValueError(f"start_date {start_date} is before {_EPOCH}; pick a later start date")
    # Each stage adds or overrides columns; the order matters where a stage reads what an
    # earlier one wrote (the anomaly stages override the normal payment's columns).
    rows = _base_rows(spark, gen)
    rows = _with_anomaly_kinds(rows, gen)
    rows = _with_accounts(rows, gen)
    rows = _with_bursts_and_travel_pairs(rows, gen)
    rows = _with_account_profiles(rows, gen)
    rows = _with_normal_payments(rows, gen)
    rows = _with_anomaly_labels(rows)
    rows = _with_anomalous_purchases(rows, gen)
    rows = _with_anomalous_places_and_times(rows, gen)
    rows = _with_missing_locations(rows, gen)
    rows = _with_timestamps(rows, gen)
    rows = _with_account_history(rows)
    return _to_transactions_schema(rows)


def _row_uniform(seed: int, tag: str) -> Column:
    """A uniform per output row: keyed by the base row and its index within a burst or pair."""
    return _uniform(seed, tag, F.col("rid"), F.col("sub"))


def _row_normal(seed: int, tag: str) -> Column:
    """A standard normal per output row (see `_row_uniform`)."""
    return _normal(seed, tag, F.col("rid"), F.col("sub"))


def _base_rows(spark: SparkSession, gen: _Generation) -> DataFrame:
    """One row per base payment: `rid` (a row id) and `day` (days since `_EPOCH`)."""
    # Row ids count from a fixed epoch, so a day's rows are the same whichever window it is
    # generated in (re-generating one day reproduces it; velocity at the window's edge aside).
    first_day = gen.first_day
    base = spark.range(
        first_day * gen.rows_per_day, (first_day + gen.days) * gen.rows_per_day, numPartitions=max(1, gen.days)
    ).withColumnRenamed("id", "rid")
    return base.withColumn("day", (F.col("rid") / gen.rows_per_day).cast("long"))


def _with_anomaly_kinds(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Add `kind` (the anomaly kind a base row seeds, null for a normal one) and `hard`."""
    quarter = gen.anomaly_rate / 4.0
    # Seed rows per kind so that each kind ends up with ~a quarter of the anomalous rows.
    p_card_testing = quarter / _CARD_TESTING_BURST_MEAN
    cut_card_testing = p_card_testing
    cut_takeover = cut_card_testing + quarter
    cut_spike = cut_takeover + quarter
    cut_travel = cut_spike + quarter
    u_kind = _uniform(gen.seed, "kind", F.col("rid"))
    kind = (
        F.when(u_kind < cut_card_testing, F.lit("card_testing"))
        .when(u_kind < cut_takeover, F.lit("account_takeover"))
        .when(u_kind < cut_spike, F.lit("amount_spike"))
        .when(u_kind < cut_travel, F.lit("impossible_travel"))
    )
    return rows.withColumn("kind", kind).withColumn("hard", _uniform(gen.seed, "hard", F.col("rid")) < 0.25)


def _with_accounts(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Add `account`: skewed activity, low account ids are much busier."""
    return rows.withColumn(
        "account",
        F.least(
            F.floor(F.pow(_uniform(gen.seed, "account", F.col("rid")), F.lit(1.3)) * gen.accounts).cast("long"),
            F.lit(gen.accounts - 1),
        ),
    )


def _with_bursts_and_travel_pairs(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Explode each base row into its output rows, numbered by `sub`.

    A card-testing row becomes a burst of 5-11 rows, an impossible-travel row a pair (home,
    then away); every other row stays one row.
    """
    return rows.withColumn(
        "n_sub",
        F.when(F.col("kind") == "card_testing", F.floor(_uniform(gen.seed, "burst", F.col("rid")) * 7).cast("int") + 5)
        .when(F.col("kind") == "impossible_travel", F.lit(2))
        .otherwise(F.lit(1)),
    ).withColumn("sub", F.explode(F.sequence(F.lit(0), F.col("n_sub") - 1)))


def _with_account_profiles(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Add the account's profile, all from a hash of the account id.

    `mu` and `sigma` (log-normal amounts), `home_country`, `hour_centre` (active hours),
    `fav_category` and `present_rate` (how often the card is present).
    """
    seed = gen.seed
    acct = F.col("account")
    mu = F.lit(3.3) + F.lit(0.6) * _normal(seed, "acct_mu", acct)
    sigma = F.lit(0.3) + F.lit(0.25) * _uniform(seed, "acct_sigma", acct)
    return (
        rows.withColumn("mu", mu)
        .withColumn("sigma", sigma)
        .withColumn("home_country", _pick(COUNTRIES, F.pow(_uniform(seed, "acct_country", acct), F.lit(2.0))))
        .withColumn("hour_centre", F.lit(9.0) + F.lit(11.0) * _uniform(seed, "acct_hour", acct))
        .withColumn("fav_category", _pick(S.MERCHANT_CATEGORIES[:4], _uniform(seed, "acct_fav", acct)))
        .withColumn("present_rate", F.lit(0.35) + F.lit(0.6) * _uniform(seed, "acct_present", acct))
    )


def _with_normal_payments(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Add a normal payment for the account: what, how much, where, when within the hour.

    Adds `hour`, `category`, `online` (the normal category is an online one; kept for
    `_with_missing_locations`), `amount_raw`, `card_present`, `travelling`, `country_raw`,
    `distance` (km from home), `new_device_raw` and `second`. Anomalies override some later.
    """
    seed = gen.seed
    u = functools.partial(_row_uniform, seed)
    z = functools.partial(_row_normal, seed)
    # The rows of one burst or travel pair share their event's hour and starting second.
    event_hour = F.col("hour_centre") + F.lit(3.2) * _normal(seed, "hour", F.col("rid"))
    hour = F.pmod(F.round(event_hour).cast("int"), F.lit(24))
    category = F.when(u("cat_fav") < 0.45, F.col("fav_category")).otherwise(_pick(S.MERCHANT_CATEGORIES, u("cat")))
    category_factor = (
        F.when(category == "travel", 4.0)
        .when(category == "electronics", 3.0)
        .when(category == "fuel", 1.2)
        .when(category == "digital_goods", 0.4)
        .otherwise(1.0)
    )
    amount = F.exp(F.col("mu") + F.col("sigma") * z("amount")) * category_factor
    online = category.isin("online", "digital_goods")
    # Legitimate travel: on 3% of account-days every payment is made abroad, in one place.
    acct_day = (F.col("account"), F.col("day"))
    travelling = _uniform(seed, "travelling", *acct_day) < 0.03
    return (
        rows.withColumn("hour", hour)
        .withColumn("category", category)
        .withColumn("online", online)
        .withColumn("amount_raw", amount)
        .withColumn("card_present", ~online & (u("present") < F.col("present_rate")))
        .withColumn("travelling", travelling)
        .withColumn(
            "country_raw",
            F.when(travelling, _pick(COUNTRIES, _uniform(seed, "away", *acct_day))).otherwise(F.col("home_country")),
        )
        .withColumn(
            "distance",
            F.when(
                travelling,
                F.lit(300.0) + F.lit(5000.0) * _uniform(seed, "away_km", *acct_day) + F.lit(20.0) * u("jitter"),
            ).otherwise(F.exp(F.lit(1.6) + F.lit(0.9) * z("km"))),
        )
        .withColumn("new_device_raw", u("device") < 0.03)
        .withColumn("second", F.floor(_uniform(seed, "second", F.col("rid")) * 3600).cast("long"))
    )


def _with_anomaly_labels(rows: DataFrame) -> DataFrame:
    """Add `is_anomaly` and `anomaly_type` (the kind, null for a normal payment)."""
    k = F.col("kind")
    is_anomaly = (
        F.when(k.isNull(), F.lit(False))
        # The first row of an impossible-travel pair is the genuine payment at home.
        .when((k == "impossible_travel") & (F.col("sub") == 0), F.lit(False))
        .otherwise(F.lit(True))
    )
    return rows.withColumn("is_anomaly", is_anomaly).withColumn("anomaly_type", F.when(F.col("is_anomaly"), k))


def _with_anomalous_purchases(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Override what an anomaly buys and how: `amount_raw`, `category`, `card_present`, `hour`, `new_device_raw`.

    Card testing: tiny online payments, mostly from a new device. Account takeover: goods that
    resell well for several times the usual amount, from a new device, at night unless hard.
    Amount spike: the usual purchase for many times its amount.
    """
    seed = gen.seed
    u = functools.partial(_row_uniform, seed)
    k = F.col("kind")
    hard = F.col("hard")
    ct = k == "card_testing"
    ato = k == "account_takeover"
    spike = k == "amount_spike"
    typical = F.exp(F.col("mu") + F.col("sigma") * F.col("sigma") / 2.0)
    night = _uniform(seed, "ato_hour", F.col("rid"))  # per base row, like the normal hour
    spike_factor = F.when(hard, F.lit(3.5) + F.lit(1.5) * u("spike")).otherwise(F.lit(6.0) + F.lit(14.0) * u("spike"))
    ato_factor = F.when(hard, F.lit(1.5) + F.lit(1.2) * u("ato")).otherwise(F.lit(3.0) + F.lit(7.0) * u("ato"))
    return (
        rows.withColumn(
            "amount_raw",
            F.when(ct, F.lit(0.5) + F.lit(4.5) * u("ct_amount"))
            .when(ato, typical * ato_factor)
            .when(spike, F.col("amount_raw") * spike_factor)
            .otherwise(F.col("amount_raw")),
        )
        .withColumn(
            "category",
            F.when(ct, _pick(("online", "digital_goods"), u("ct_cat")))
            .when(ato, _pick(("electronics", "digital_goods", "travel"), u("ato_cat")))
            .otherwise(F.col("category")),
        )
        .withColumn("card_present", F.when(ct | ato, F.lit(False)).otherwise(F.col("card_present")))
        .withColumn(
            "hour",
            F.when(ato & ~hard, F.floor(F.lit(1.0) + F.lit(4.0) * night).cast("int")).otherwise(F.col("hour")),
        )
        .withColumn(
            "new_device_raw",
            F.when(ato, F.lit(True))
            .when(ct, u("ct_device") < 0.7)
            .otherwise(F.col("new_device_raw")),
        )
    )


def _with_anomalous_places_and_times(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Override where and when an anomaly happens: `country_raw`, `distance`, `second`.

    A takeover often comes from another country (not when hard); the away row of an
    impossible-travel pair is far from home (hard: 800-2,000 km) and its home row is near.
    """
    u = functools.partial(_row_uniform, gen.seed)
    z = functools.partial(_row_normal, gen.seed)
    k = F.col("kind")
    sub = F.col("sub")
    hard = F.col("hard")
    ct = k == "card_testing"
    ato = k == "account_takeover"
    travel_away = (k == "impossible_travel") & (sub == 1)
    travel_home = (k == "impossible_travel") & (sub == 0)
    return (
        rows.withColumn(
            "country_raw",
            F.when(ato & (u("ato_country") < 0.6) & ~hard, _pick(COUNTRIES, u("ato_where")))
            .when(travel_away, _pick(COUNTRIES, u("travel_where")))
            .when(travel_home, F.col("home_country"))
            .otherwise(F.col("country_raw")),
        )
        .withColumn(
            "distance",
            F.when(
                travel_away,
                F.when(hard, F.lit(800.0) + F.lit(1200.0) * u("travel_km")).otherwise(
                    F.lit(3000.0) + F.lit(9000.0) * u("travel_km")
                ),
            )
            .when(travel_home, F.exp(F.lit(1.6) + F.lit(0.9) * z("km_home")))
            .otherwise(F.col("distance")),
        )
        # Burst rows follow each other within seconds; the away payment comes minutes
        # (hard: about two hours) after the one at home.
        .withColumn(
            "second",
            F.when(ct, F.col("second") + sub * (F.lit(15) + F.floor(u("ct_gap") * 60)).cast("long"))
            .when(
                travel_away,
                F.col("second")
                + F.when(hard, F.lit(6000) + F.floor(u("tr_gap") * 3000)).otherwise(
                    F.lit(600) + F.floor(u("tr_gap") * 2400)
                ).cast("long"),
            )
            .otherwise(F.col("second")),
        )
    )


def _with_missing_locations(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Null `distance` for about half of the normal online payments: a real source of nulls."""
    no_location = F.col("online") & (_row_uniform(gen.seed, "no_geo") < 0.5) & ~F.col("is_anomaly")
    return rows.withColumn("distance", F.when(no_location, F.lit(None)).otherwise(F.col("distance")))


def _with_timestamps(rows: DataFrame, gen: _Generation) -> DataFrame:
    """Add `ts_seconds` (Unix seconds) from `day`, `hour` and `second`, kept inside the row's day."""
    start = dt.datetime.combine(gen.start_date, dt.time(), tzinfo=dt.timezone.utc)
    epoch = int(start.timestamp())
    first_day = gen.first_day
    ts_seconds = F.lit(epoch) + (F.col("day") - first_day) * 86400 + F.col("hour").cast("long") * 3600 + F.col("second")
    # Bursts may spill over the hour; keep each row inside its own day.
    ts_seconds = F.least(ts_seconds, F.lit(epoch) + (F.col("day") - first_day) * 86400 + F.lit(86399))
    return rows.withColumn("ts_seconds", ts_seconds)


def _with_account_history(rows: DataFrame) -> DataFrame:
    """Add `transaction_id` and the account's history: the previous payment and the velocity.

    `prev_ts`, `prev_country`, `prev_distance` (the account's previous payment), `count_1h` and
    `count_24h` (its payments in the last hour and day, this one included). A shuffle by
    account: it scales with the number of accounts.
    """
    by_account = Window.partitionBy("account").orderBy("ts_seconds", "transaction_id")
    last_1h = Window.partitionBy("account").orderBy("ts_seconds").rangeBetween(-3600, 0)
    last_24h = Window.partitionBy("account").orderBy("ts_seconds").rangeBetween(-86400, 0)
    return (
        rows.withColumn("transaction_id", F.col("rid") * 16 + F.col("sub"))
        .withColumn("prev_ts", F.lag("ts_seconds").over(by_account))
        .withColumn("prev_country", F.lag("country_raw").over(by_account))
        .withColumn("prev_distance", F.lag("distance").over(by_account))
        .withColumn("count_1h", F.count(F.lit(1)).over(last_1h).cast("int"))
        .withColumn("count_24h", F.count(F.lit(1)).over(last_24h).cast("int"))
    )


def _to_transactions_schema(rows: DataFrame) -> DataFrame:
    """Select and name the output columns of TRANSACTIONS_SCHEMA, deriving the last few."""
    return rows.select(
        F.col("transaction_id").alias(S.TRANSACTION_ID),
        F.col("account").alias(S.ACCOUNT_ID),
        F.col("ts_seconds").cast("timestamp").alias(S.EVENT_TS),
        F.round(F.col("amount_raw"), 2).alias(S.AMOUNT),
        F.col("category").alias(S.MERCHANT_CATEGORY),
        F.col("country_raw").alias(S.COUNTRY),
        F.hour(F.col("ts_seconds").cast("timestamp")).alias(S.HOUR_OF_DAY),
        F.round(F.col("distance"), 1).alias(S.DISTANCE_FROM_HOME_KM),
        (F.col("ts_seconds") - F.col("prev_ts")).cast("double").alias(S.SECONDS_SINCE_PREV),
        # Distance from the previous payment, approximated from the distances from home: in the
        # same country the difference, across a border the sum (null when either is unknown).
        F.round(
            F.when(
                F.col("prev_country") == F.col("country_raw"), F.abs(F.col("distance") - F.col("prev_distance"))
            ).otherwise(F.col("distance") + F.col("prev_distance")),
            1,
        ).alias(S.KM_FROM_PREV),
        F.col("count_1h").alias(S.TXN_COUNT_1H),
        F.col("count_24h").alias(S.TXN_COUNT_24H),
        F.round(F.exp(F.col("mu") + F.col("sigma") * F.col("sigma") / 2.0), 2).alias(S.ACCOUNT_AVG_AMOUNT),
        F.col("new_device_raw").alias(S.NEW_DEVICE),
        F.col("card_present").alias(S.CARD_PRESENT),
        (F.col("prev_country").isNotNull() & (F.col("prev_country") != F.col("country_raw"))).alias(S.COUNTRY_CHANGED),
        F.col("is_anomaly").alias(S.IS_ANOMALY),
        F.col("anomaly_type").alias(S.ANOMALY_TYPE),
        F.date_add(F.lit(_EPOCH), F.col("day").cast("int")).alias(S.EVENT_DATE),
    )
