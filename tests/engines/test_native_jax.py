"""How JAX batches reach the native solver: repeated points are solved once and scattered back
(by their bits, over every input together), and few points spread their directions over the lanes."""

from __future__ import annotations

import numpy as np
import pytest

from immunetwin.engines.native_jax import FIT_LANES, _distinct_rows, _groups


def test_distinct_rows_by_bits_over_all_inputs_in_first_seen_order() -> None:
    ts = np.array([[0.0, 1.0]] * 5)
    y0 = np.array([[1.0], [2.0], [1.0], [2.0], [1.0]])
    c = np.array([[3.0], [3.0], [3.0], [3.0], [4.0]])  # the last row differs from the first in c only
    first, rank = _distinct_rows((ts, y0, c))
    np.testing.assert_array_equal(first, [0, 1, 4])
    np.testing.assert_array_equal(rank, [0, 1, 0, 1, 2])
    for arr in (ts, y0, c):  # every row is rebuilt from its distinct row
        np.testing.assert_array_equal(arr[first][rank], arr)


def test_distinct_rows_tell_signed_zeros_and_nans_apart_by_bits() -> None:
    y0 = np.array([[0.0], [-0.0], [np.nan], [np.nan], [0.0]])
    first, rank = _distinct_rows((y0,))
    np.testing.assert_array_equal(first, [0, 1, 2])
    np.testing.assert_array_equal(rank, [0, 1, 2, 2, 0])


def test_distinct_rows_of_one_row() -> None:
    first, rank = _distinct_rows((np.zeros((1, 3)), np.ones((1, 2))))
    np.testing.assert_array_equal(first, [0])
    np.testing.assert_array_equal(rank, [0])


@pytest.mark.parametrize(
    ("rows", "directions", "expected"),
    [
        (1, 4, (4, 1)),
        (1, 9, (3, 3)),
        (2, 9, (2, 5)),
        (3, 9, (1, 9)),
        (4, 9, (1, 9)),
        (9, 2, (1, 2)),
        (1, 1, (1, 1)),
    ],
)
def test_groups_fill_the_idle_lanes(rows: int, directions: int, expected: tuple[int, int]) -> None:
    groups, per = _groups(rows, directions)
    assert (groups, per) == expected
    assert groups * per >= directions and (groups - 1) * per < directions  # every direction, no empty group
    assert rows >= FIT_LANES or rows * groups <= FIT_LANES
