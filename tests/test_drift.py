import numpy as np
import pytest

from lakescore.drift import bin_index, psi, reference_histogram


def test_reference_histogram_uses_quantile_edges_and_fractions_that_sum_to_one():
    ref = reference_histogram(np.arange(100, dtype=float), bins=4)
    assert ref["edges"] == [0.0, 24.75, 49.5, 74.25, 99.0]
    assert ref["fractions"] == [0.25, 0.25, 0.25, 0.25]


def test_values_outside_the_edges_land_in_the_outer_bins_and_nan_in_the_first():
    assert bin_index(np.array([-5.0, 0.0, 1.5, 3.0, 99.0, np.nan]), [0.0, 1.0, 2.0, 3.0]).tolist() == [0, 0, 1, 2, 2, 0]


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    assert psi([0.5, 0.5], [50, 50]) == 0.0
    assert psi([0.5, 0.5], [90, 10]) == pytest.approx((0.4 * np.log(0.9 / 0.5)) + (-0.4 * np.log(0.1 / 0.5)))
    assert np.isnan(psi([0.5, 0.5], [0, 0]))


def test_a_constant_feature_still_gets_a_usable_histogram():
    ref = reference_histogram(np.full(10, 3.0))
    assert ref["fractions"] == [1.0] and len(ref["edges"]) == 2


def test_a_flag_gets_a_bin_per_value_so_a_change_of_its_rate_shows_in_psi():
    flag = np.r_[np.zeros(90), np.ones(10)]
    ref = reference_histogram(flag)
    assert ref["edges"] == [0.0, 1.0, 2.0]
    assert ref["fractions"] == [0.9, 0.1]
    same = np.bincount(bin_index(flag, ref["edges"]), minlength=2)
    tripled = np.bincount(bin_index(np.r_[np.zeros(70), np.ones(30)], ref["edges"]), minlength=2)
    assert psi(ref["fractions"], same) == 0.0
    assert psi(ref["fractions"], tripled) > 0.25


def test_few_distinct_values_get_a_bin_each_and_many_get_quantile_bins():
    counts = np.repeat([0.0, 1.0, 2.0, 5.0], [40, 30, 20, 10])
    ref = reference_histogram(counts)
    assert ref["edges"] == [0.0, 1.0, 2.0, 5.0, 6.0]
    assert ref["fractions"] == [0.4, 0.3, 0.2, 0.1]
    assert len(reference_histogram(np.arange(11, dtype=float))["edges"]) == 11  # 11 values > 10 bins
