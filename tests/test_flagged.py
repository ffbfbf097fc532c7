"""udfs.flagged: which source columns reach `flagged`, and how, without Spark."""

from __future__ import annotations

import dataclasses

import pytest

from lakescore.config import ScoreSettings
from udfs.flagged import choose_output_columns


def test_flagged_keys_default_to_the_known_key_columns_the_source_has():
    output = choose_output_columns(
        ["amount", "event_date", "transaction_id", "country", "account_id"], ScoreSettings(), "t"
    )
    assert output.keys == ("transaction_id", "account_id", "event_date")
    assert output.allowed == ("amount", "country")  # merchant_category is absent: skipped
    assert output.hashed == ()


def test_sensitive_columns_are_hashed_or_dropped_as_configured():
    columns = ["transaction_id", "account_id", "amount", "country"]
    hashed = ScoreSettings(sensitive_columns=("account_id", "country"), hash_salt="pepper")
    assert choose_output_columns(columns, hashed, "t").hashed == ("account_id", "country")
    dropped = dataclasses.replace(hashed, sensitive_action="drop")
    output = choose_output_columns(columns, dropped, "t")
    assert output.copied == ("transaction_id", "amount") and output.hashed == ()


def test_key_columns_that_the_source_lacks_are_an_error_naming_them():
    with pytest.raises(ValueError, match="lacks key column.*order_id.*Fix score.key_columns"):
        choose_output_columns(["amount"], ScoreSettings(key_columns=("order_id",)), "source t")
    with pytest.raises(ValueError, match="none of the known key columns"):
        choose_output_columns(["amount"], ScoreSettings(), "source t")
