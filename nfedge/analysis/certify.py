"""Certifying a chip quantile (DESIGN "Certifying a chip quantile"): order statistics over i.i.d. chips.

A chip is a seed; its accuracy A at a voltage is a random variable over chips, with q-quantile xi_q. Among n chips,
the k-th lowest accuracy A_(k) lies at or below xi_q with probability P[Binomial(n, q) >= k] (at least k of the n
chips fall at or below xi_q). So A_(k) is a lower confidence bound on xi_q at confidence c when that probability is
>= c, and A_(k) >= floor states, with confidence c, that at least a fraction (1 - q) of chips meet the floor.
`certificate_rank` picks the largest such k (the tightest bound): for q = 0.05 and c = 0.95, the worst of 59 chips
(0.952, Wilks), the 2nd worst of 93, the 3rd of 124, the 5th of 181. Fewer than `min_chips(q, c)` chips cannot
certify anything at (q, c): an error names the count.

The acceptance test on fresh chips is the same rule: with m fresh chips and rank k, at most k - 1 may miss the floor
(0 of 59). Under the worst case the claim allows (exactly a fraction q of chips miss), passing has probability
P[Binomial(m, q) <= k - 1] <= 1 - c.

An accuracy measured on N images has a binomial standard error sqrt(a (1 - a) / N) per chip (about 0.9 points at
a = 90%, N = 1,000): the certificate is about these N images, and that noise is stated beside it.
"""

from __future__ import annotations

import math
from typing import Any

from nfedge.errors import NfedgeError


def _unit_interval(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 < v < 1.0):
        raise NfedgeError(f"{name} must be in (0, 1), got {v!r}")
    return float(v)


def binomial_tail(n: int, q: float, k: int) -> float:
    """P[Binomial(n, q) >= k], summed exactly in log space (lgamma), so n in the thousands stays accurate."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    lq, lp = math.log(q), math.log1p(-q)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lq + (n - i) * lp
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def rank_confidence(n: int, q: float, k: int) -> float:
    """Confidence that the k-th lowest of n chips lies at or below the q-quantile: P[Binomial(n, q) >= k]."""
    return binomial_tail(n, q, k)


def certificate_rank(n: int, q: float, c: float) -> int | None:
    """The largest rank k with P[Binomial(n, q) >= k] >= c (the tightest lower bound), or None if even the worst
    chip (k = 1: 1 - (1 - q)^n) falls short of c."""
    q, c = _unit_interval("quantile", q), _unit_interval("confidence", c)
    if rank_confidence(n, q, 1) < c:
        return None
    k = 1
    while k < n and rank_confidence(n, q, k + 1) >= c:  # the tail falls as k grows
        k += 1
    return k


def min_chips(q: float, c: float) -> int:
    """The fewest chips whose worst one certifies the q-quantile at confidence c: 1 - (1 - q)^n >= c."""
    q, c = _unit_interval("quantile", q), _unit_interval("confidence", c)
    n = max(1, math.ceil(math.log1p(-c) / math.log1p(-q) - 1e-9))
    while rank_confidence(n, q, 1) < c:  # guard the float rounding of the closed form
        n += 1
    while n > 1 and rank_confidence(n - 1, q, 1) >= c:
        n -= 1
    return n


def require_rank(n: int, q: float, c: float, what: str) -> int:
    """certificate_rank(n, q, c), or a one-line error naming the chip count (q, c) needs."""
    k = certificate_rank(n, q, c)
    if k is None:
        raise NfedgeError(f"{what}: {n} chips cannot certify the {q} chip quantile at confidence {c}; it needs at least "
                          f"{min_chips(q, c)} (the worst of n is at or below that quantile with probability "
                          f"1 - (1 - {q})^n)")
    return k


def order_statistic(values: list[float], k: int) -> float:
    """The k-th lowest value (1-based)."""
    return float(sorted(values)[k - 1])


def standard_error(accuracy_pct: float, images: int) -> float:
    """Binomial standard error (percentage points) of an accuracy measured on `images` images."""
    a = min(max(accuracy_pct / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(a * (1.0 - a) / images) if images > 0 else math.nan


def rank_table(q: float, c: float, ns: tuple[int, ...] = (20, 59, 93, 124, 181)) -> list[dict[str, Any]]:
    """For each chip count, the rank certified at (q, c) and its exact confidence (None: too few chips)."""
    rows = []
    for n in ns:
        k = certificate_rank(n, q, c)
        rows.append({"chips": n, "rank": k, "confidence": rank_confidence(n, q, k) if k else rank_confidence(n, q, 1)})
    return rows


def acceptance(values: list[float], floor: float, n: int, q: float, c: float) -> dict[str, Any]:
    """The fresh-chip acceptance test on `values` (the chips measured so far of n, in order): certified iff at most
    k - 1 of the n chips miss the floor (k = certificate_rank(n, q, c)); decided early once k chips missed."""
    k = require_rank(n, q, c, "fresh chips")
    failures = sum(v < floor for v in values)
    complete = len(values) == n
    return {"rank": k, "chips": n, "chips_measured": len(values), "failures": failures, "failures_allowed": k - 1,
            "confidence": rank_confidence(n, q, k), "certified": complete and failures <= k - 1,
            "accuracy_at_rank": order_statistic(values, k) if complete else None}
