"""Fold sizes known before the cohort exists, and the stacks of equal-size folds built from them."""
import pytest

from dmrilib.crossval import FOLD_SPLITS, fold_sizes, fold_stacks, make_folds


@pytest.mark.parametrize("split", FOLD_SPLITS)
def test_fold_sizes_are_those_of_make_folds_for_every_cohort_size(split):
    for n in range(2, 33):
        ids = [f"H{i:02d}" for i in range(n)][::-1]  # unsorted: contiguous sorts them
        for n_folds in range(2, min(n, 9) + 1):
            folds = make_folds(ids, n_folds, seed=n, split=split)
            assert fold_sizes(n, n_folds, split) == [(len(f.train), len(f.val)) for f in folds], (n, n_folds)


def test_fold_sizes_of_the_paper_cohort_are_equal_and_uneven_cohorts_are_not():
    assert set(fold_sizes(28, 7)) == {(24, 4)}
    assert fold_sizes(30, 7) == [(25, 5)] * 2 + [(26, 4)] * 5
    # contiguous: fold 0 validates the last (smallest) slice
    assert fold_sizes(30, 7, "contiguous") == [(26, 4), (25, 5), (25, 5)] + [(26, 4)] * 4


@pytest.mark.parametrize("args, message", [
    ((5, 1), "between 2"),
    ((3, 4), "between 2"),
    ((10, 3, "shuffled"), "split must be one of"),
])
def test_fold_sizes_refuses_impossible_splits(args, message):
    with pytest.raises(ValueError, match=message):
        fold_sizes(*args)


def test_fold_stacks_groups_only_folds_of_one_size_in_fold_order():
    equal = fold_sizes(28, 7)
    assert fold_stacks(range(7), equal, 7) == [[0, 1, 2, 3, 4, 5, 6]]
    assert fold_stacks(range(7), equal, 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert fold_stacks(range(7), equal, 1) == [[f] for f in range(7)]
    uneven = fold_sizes(30, 7)
    assert fold_stacks(range(7), uneven, 7) == [[0, 1], [2, 3, 4, 5, 6]]
    assert fold_stacks(range(7), uneven, 3) == [[0, 1], [2, 3, 4], [5, 6]]
    contiguous = fold_sizes(30, 7, "contiguous")
    assert fold_stacks(range(7), contiguous, 4) == [[0, 3, 4, 5], [1, 2], [6]]
    # the profile's folds, in its order; folds it does not run are left out
    assert fold_stacks([5, 1, 3], equal, 2) == [[5, 1], [3]]
    for sizes in (uneven, contiguous):
        for k in range(1, 8):
            stacks = fold_stacks(range(7), sizes, k)
            assert sorted(f for s in stacks for f in s) == list(range(7))  # every fold once
            assert all(len(s) <= k and len({sizes[f] for f in s}) == 1 for s in stacks)


@pytest.mark.parametrize("folds, k, message", [
    ([0, 1], 0, "at least 1"),
    ([0, 0], 2, "more than once"),
    ([0, 7], 2, r"folds \[7\] do not exist"),
])
def test_fold_stacks_refuses_bad_input(folds, k, message):
    with pytest.raises(ValueError, match=message):
        fold_stacks(folds, fold_sizes(28, 7), k)
