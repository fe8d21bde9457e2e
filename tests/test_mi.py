"""Plug-in MI: exact values on independent and identical variables, the joint accumulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stripes.mi import _Joint, entropy, mi_from_joint, mutual_information


def test_identical_variables_give_the_entropy_exactly():
    x = np.array([0, 0, 1, 2, 2, 2, 3, 3])
    r = mutual_information(x, x)
    h = -sum(c / 8 * math.log(c / 8) for c in (2, 1, 3, 2))
    assert r["mi_nats"] == pytest.approx(h, abs=1e-12)
    assert entropy(np.bincount(x)) == pytest.approx(h, abs=1e-12)
    # a relabelling of x carries the same information
    assert mutual_information(x, 7 * x + 100)["mi_nats"] == pytest.approx(h, abs=1e-12)


def test_exactly_independent_variables_give_zero():
    # every (x, y) pair exactly once: the empirical joint factorises
    x, y = np.meshgrid(np.arange(5), np.arange(7), indexing="ij")
    r = mutual_information(x.ravel(), y.ravel())
    assert r["mi_nats"] == pytest.approx(0.0, abs=1e-12)
    assert (r["n_x"], r["n_y"], r["n_cells"]) == (5, 7, 35)
    assert r["bias_nats"] == pytest.approx(4 * 6 / 70)


def test_random_independent_variables_are_close_to_the_bias():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 20, 200_000), rng.integers(0, 30, 200_000)
    r = mutual_information(x, y)
    assert r["bias_nats"] == pytest.approx(19 * 29 / 400_000)
    assert abs(r["mi_nats"] - r["bias_nats"]) < 0.3 * r["bias_nats"]


def test_known_joint_table():
    joint = np.array([[30, 10], [10, 50]])
    p = joint / joint.sum()
    expected = sum(p[i, j] * math.log(p[i, j] / (p[i].sum() * p[:, j].sum())) for i in range(2) for j in range(2))
    assert mi_from_joint(joint)["mi_nats"] == pytest.approx(expected, abs=1e-12)


def test_joint_accumulator_dense_and_sparse_agree():
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 384, 1000) for _ in range(5)]
    ys = [rng.integers(0, 50, 1000) for _ in range(5)]
    dense, sparse = _Joint(), _Joint()
    sparse.DENSE_LIMIT = 0  # force the sparse path
    for i, (x, y) in enumerate(zip(xs, ys)):
        dense.add(x, y)
        sparse.add(x, y)
        if i % 2:
            dense.fold()
            sparse.fold()
    a, b = dense.table(), sparse.table()
    np.testing.assert_array_equal(a, b)
    direct = mutual_information(np.concatenate(xs), np.concatenate(ys))
    assert mi_from_joint(a)["mi_nats"] == pytest.approx(direct["mi_nats"], abs=1e-12)
    assert a.sum() == 5000
