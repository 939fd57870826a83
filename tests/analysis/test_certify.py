"""Certifying a chip quantile (nfedge.analysis.certify) against exact binomial sums, and the validation split
(nfedge.analysis.split) against nfedge.data's own subset rule."""

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from nfedge.analysis.certify import (
    acceptance,
    binomial_tail,
    certificate_rank,
    min_chips,
    rank_confidence,
    require_rank,
    standard_error,
)
from nfedge.analysis.split import training_indices, validation_split
from nfedge.data import DataConfig, load_dataset
from nfedge.errors import NfedgeError


def exact_tail(n: int, q: Fraction, k: int) -> Fraction:
    """P[Binomial(n, q) >= k] in exact rational arithmetic."""
    return sum((math.comb(n, i) * q ** i * (1 - q) ** (n - i) for i in range(k, n + 1)), Fraction(0))


@pytest.mark.parametrize("n", [10, 20, 58, 59, 92, 93, 123, 124, 180, 181, 300])
def test_rank_and_confidence_against_exact_binomial_sums(n):
    q, c = Fraction(1, 20), Fraction(95, 100)
    for k in range(1, 8):
        assert binomial_tail(n, 0.05, k) == pytest.approx(float(exact_tail(n, q, k)), rel=1e-9, abs=1e-15)
    exact_k = max((k for k in range(1, n + 1) if exact_tail(n, q, k) >= c), default=None)
    assert certificate_rank(n, 0.05, 0.95) == exact_k


def test_the_issue_table():
    # worst of 20 -> 0.64 (not enough); worst of 59 -> 0.952; 2nd of 93, 3rd of 124, 5th of 181 for >= 0.95
    assert rank_confidence(20, 0.05, 1) == pytest.approx(0.6415, abs=1e-4) and certificate_rank(20, 0.05, 0.95) is None
    assert rank_confidence(59, 0.05, 1) == pytest.approx(0.9515, abs=1e-4)
    assert [certificate_rank(n, 0.05, 0.95) for n in (59, 93, 124, 181)] == [1, 2, 3, 5]
    assert [certificate_rank(n - 1, 0.05, 0.95) for n in (59, 93, 124, 181)] == [None, 1, 2, 4]  # one chip fewer
    assert min_chips(0.05, 0.95) == 59 and min_chips(0.01, 0.99) == 459 and min_chips(0.5, 0.5) == 1


def test_too_few_chips_and_bad_q_or_c_are_one_line_errors():
    with pytest.raises(NfedgeError, match="needs at least 59") as e:
        require_rank(58, 0.05, 0.95, "fresh chips")
    assert "\n" not in str(e.value)
    for q, c in [(0.0, 0.95), (1.0, 0.95), (-0.1, 0.95), (0.05, 0.0), (0.05, 1.0), (0.05, 1.5)]:
        with pytest.raises(NfedgeError, match="must be in \\(0, 1\\)") as e:
            certificate_rank(59, q, c)
        assert "\n" not in str(e.value)


def test_acceptance_rule():
    ok = acceptance([90.0] * 93, 89.0, 93, 0.05, 0.95)
    assert ok["certified"] and ok["failures_allowed"] == 1 and ok["accuracy_at_rank"] == 90.0
    one = acceptance([88.0] + [90.0] * 92, 89.0, 93, 0.05, 0.95)  # one miss of 93 is allowed (rank 2) ...
    assert one["certified"] and one["accuracy_at_rank"] == 90.0
    two = acceptance([88.0, 88.5] + [90.0] * 91, 89.0, 93, 0.05, 0.95)  # ... two are not
    assert not two["certified"] and two["failures"] == 2 and two["accuracy_at_rank"] == 88.5
    early = acceptance([88.0, 88.5], 89.0, 93, 0.05, 0.95)  # decided after two chips: not all measured
    assert not early["certified"] and early["chips_measured"] == 2 and early["accuracy_at_rank"] is None
    assert standard_error(90.0, 1000) == pytest.approx(100 * math.sqrt(0.09 / 1000))  # ~0.95 points


def _npz(tmp_path, n_train=300, n_test=20):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 8, 8), dtype=np.uint8), y_train=rng.integers(0, 3, n_train),
             x_test=rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8), y_test=rng.integers(0, 3, n_test))
    return DataConfig(dataset="npz", root=str(path), pad_to_32=False)


def test_training_indices_are_nfedge_datas_subset(tmp_path):
    data = _npz(tmp_path)
    full = load_dataset(data)[0].tensors[0]
    for limit, seed in [(100, 0), (250, 3), (299, 1)]:
        sub = load_dataset(dataclasses.replace(data, train_limit=limit, seed=seed))[0].tensors[0]
        cfg = dataclasses.replace(data, train_limit=limit, seed=seed)
        assert torch.equal(full[torch.from_numpy(training_indices(cfg, 300))], sub)  # the same images, the same order


def test_validation_split_is_disjoint_seeded_and_bounded(tmp_path):
    data = _npz(tmp_path)
    base = dataclasses.replace(data, train_limit=200, seed=0)
    gen = dataclasses.replace(data, train_limit=150, seed=5)
    full_x = load_dataset(data)[0].tensors[0]
    (x, y), rec = validation_split(data, [base, gen], 30, seed=2)
    used = set(training_indices(base, 300)) | set(training_indices(gen, 300))
    rows = {i for i in range(300) for j in range(len(x)) if torch.equal(full_x[i], x[j])}
    assert len(x) == 30 and rows and not rows & used  # none of them trained a model
    assert rec["held_out_images"] == 300 - len(used) and rec["seed"] == 2 and rec["disjoint_from_training"]
    (x2, _), rec2 = validation_split(data, [base, gen], 30, seed=2)
    assert torch.equal(x, x2) and rec2["indices_sha256"] == rec["indices_sha256"]
    assert validation_split(data, [base, gen], 30, seed=3)[1]["indices_sha256"] != rec["indices_sha256"]
    with pytest.raises(NfedgeError, match="larger than the training set") as e:
        validation_split(data, [base], 301, seed=0)
    assert "\n" not in str(e.value)
    with pytest.raises(NfedgeError, match="larger than the 100 training images held out"):
        validation_split(data, [base], 101, seed=0)
    with pytest.raises(NfedgeError, match="larger than the 0 training images held out"):
        validation_split(data, [data], 1, seed=0)  # a model trained on every training image leaves none
