"""Distribution-shift statistics against training histograms, in numpy and the standard library.

The bundle stores training data as histograms and category shares, not rows, so
every test here compares live values with a binned reference:

* PSI (population stability index) over the training bins, an effect size;
* KS statistic at the training bin edges (both CDFs are exact there) with the
  asymptotic Kolmogorov p-value for two samples of sizes n (live) and m (training);
  for a two-valued feature (a flag: the promotion flag, year_ago_known) the two-proportion
  z test instead: Kolmogorov's distribution is a continuous variable's, and on two values its
  p-value is far too large (a client that flags no promotion, 0 of 297 series against 6.5 %
  in the reference: KS p=0.15, while the chance of it is below 1e-5);
* Pearson's chi-square test of live category counts against training shares.
  Categories expected to hold fewer than MIN_EXPECTED live rows are pooled into
  one cell, and the categorical PSI is computed over those same cells: over
  hundreds of sparse categories a few hundred requests give a large PSI by chance
  alone (about (cells - 1) / n), which is noise, not drift.

scipy is not a dependency, so the two p-value functions are written out here
(Numerical Recipes' formulas) and tested against known values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from pipeline.drift_stats import UNKNOWN_LABEL as UNKNOWN

PSI_FLOOR = 1e-4  # a share of 0 would make PSI infinite; empty bins count as this share
MIN_EXPECTED = 5.0  # chi-square cells with fewer expected counts are pooled
OTHER = "<other>"  # the cell of the values a reference does not list


@dataclass(frozen=True)
class ShiftTest:
    psi: float
    statistic: float  # KS D, a flag's |z| (two-proportion) or chi-square
    p_value: float
    test: str  # "ks" | "proportions" (a two-valued feature's two-proportion z) | "chi2"
    live_shares: list[float]
    train_shares: list[float]
    labels: list[str]
    cells: int = 0  # categories expected often enough to be compared one by one (not pooled); 0 for numeric tests
    categories: int = 0  # categories the reference saw (share > 0): under 2, there is nothing to compare one by one


def population_stability_index(live_shares: np.ndarray, train_shares: np.ndarray) -> float:
    live = np.maximum(np.asarray(live_shares, np.float64), PSI_FLOOR)
    train = np.maximum(np.asarray(train_shares, np.float64), PSI_FLOOR)
    live, train = live / live.sum(), train / train.sum()
    return float(np.sum((live - train) * np.log(live / train)))


def bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Counts of `values` in the training bins; the outer bins are open-ended (out-of-range values count)."""
    edges = np.asarray(edges, np.float64)
    inner = edges[1:-1]
    index = np.searchsorted(inner, np.asarray(values, np.float64), side="right")
    return np.bincount(index, minlength=edges.size - 1)


def kolmogorov_p_value(statistic: float, n: int, m: int) -> float:
    """P(D >= statistic) for a two-sample KS test, asymptotic (Numerical Recipes, probks)."""
    if n <= 0 or m <= 0:
        return 1.0
    effective = n * m / (n + m)
    root = math.sqrt(effective)
    lam = (root + 0.12 + 0.11 / root) * statistic
    if lam < 1e-3:
        return 1.0
    total, sign, previous = 0.0, 1.0, 0.0
    for k in range(1, 101):
        term = sign * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) <= 1e-10 * abs(previous) or abs(term) <= 1e-12 * abs(total):
            return float(min(1.0, max(0.0, 2.0 * total)))
        sign, previous = -sign, term
    return 1.0  # the series did not converge: only for lam near 0, where p is 1


def two_proportion_test(live_share: float, n: int, train_share: float, m: int) -> tuple[float, float]:
    """(|z|, two-sided p-value) of the two-proportion z test: a share of n live values against a share of m
    reference values (the pooled share's variance, both samples counted; the same as the 2x2 chi-square)."""
    if n <= 0 or m <= 0:
        return 0.0, 1.0
    pooled = (live_share * n + train_share * m) / (n + m)
    variance = pooled * (1.0 - pooled) * (1.0 / n + 1.0 / m)
    if variance <= 0.0:  # both samples all one value: nothing moved
        return 0.0, 1.0
    z = abs(live_share - train_share) / math.sqrt(variance)
    return float(z), float(math.erfc(z / math.sqrt(2.0)))


def two_valued(train_counts: np.ndarray) -> bool:
    """Whether a reference histogram holds two values only, its lowest and its highest (a flag: 0 and 1): every
    reference count in its first and last bins, both occupied."""
    occupied = np.flatnonzero(np.asarray(train_counts) > 0)
    return occupied.size == 2 and occupied[0] == 0 and occupied[1] == len(train_counts) - 1


def chi_square_p_value(statistic: float, dof: int) -> float:
    """P(X >= statistic) for X ~ chi-square(dof): the regularized upper incomplete gamma Q(dof/2, stat/2)."""
    if dof <= 0:
        return 1.0
    if statistic <= 0:
        return 1.0
    return _upper_regularized_gamma(dof / 2.0, statistic / 2.0)


def _upper_regularized_gamma(a: float, x: float) -> float:
    log_prefix = -x + a * math.log(x) - math.lgamma(a)
    if x < a + 1.0:  # series for P, then Q = 1 - P
        term = total = 1.0 / a
        denominator = a
        for _ in range(10_000):
            denominator += 1.0
            term *= x / denominator
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return float(max(0.0, 1.0 - total * math.exp(log_prefix)))
    tiny = 1e-300  # continued fraction for Q (modified Lentz)
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return float(min(1.0, math.exp(log_prefix) * h))


def numeric_shift(values: np.ndarray, reference: Mapping, effective: float | None = None) -> ShiftTest:
    """Live numeric values against a training `distribution()` record (histogram edges + counts).

    `effective`: the live sample's effective size for the KS p-value (default: the values' count); events that
    repeat what another event already said (a series' history asked for at each of its days) are not new evidence.
    A two-valued reference (`two_valued`: a flag) is tested by the two-proportion z test on the share of live values
    above its lower value, where Kolmogorov's p-value, a continuous variable's, is far too large.
    """
    edges = reference["histogram"]["edges"]
    train_counts = np.asarray(reference["histogram"]["counts"], np.float64)
    live_counts = bin_counts(values, edges).astype(np.float64)
    n, m = int(live_counts.sum()), int(train_counts.sum())
    live_shares = live_counts / max(n, 1)
    train_shares = train_counts / max(m, 1)
    statistic = float(np.max(np.abs(np.cumsum(live_shares) - np.cumsum(train_shares)))) if n else 0.0
    labels = [f"[{edges[i]:.4g}, {edges[i + 1]:.4g})" for i in range(len(edges) - 1)]
    test, p_value = "ks", kolmogorov_p_value(statistic, _effective(n, effective), m)
    if n and two_valued(train_counts):
        test = "proportions"
        statistic, p_value = two_proportion_test(1.0 - float(live_shares[0]), _effective(n, effective),
                                                 float(train_shares[-1]), m)
    return ShiftTest(psi=population_stability_index(live_shares, train_shares) if n else 0.0,
                     statistic=statistic, test=test, p_value=p_value,
                     live_shares=live_shares.tolist(), train_shares=train_shares.tolist(), labels=labels)


def categorical_shift(live_labels: Sequence[str], reference: Mapping, effective: float | None = None) -> ShiftTest:
    """Live category labels against a training `category_frequencies()` record (top shares + other).

    `effective`: the labels' effective sample size (default: their count): the pooling, the chi-square test and
    so the PSI's cells count that many observations, in the live shares' proportions.

    `psi`, the statistic and the p-value all use the pooled cells; `live_shares` and
    `train_shares` stay per label for the report's chart.
    """
    top: Mapping[str, float] = reference["top"]
    labels = list(top) + ([] if UNKNOWN in top else [UNKNOWN])
    position = {label: i for i, label in enumerate(labels)}  # the values with a cell of their own, never the rest
    other = len(labels)
    # the rest's cell: named so no value can be taken for it (a family may be called "<other>")
    labels.append(next(name for name in (OTHER, f"{OTHER} (not listed above)", f"{OTHER} [{other}]")
                       if name not in position))
    train_shares = np.asarray([top.get(label, 0.0) for label in labels[:-1]] + [reference.get("other", 0.0)],
                              np.float64)
    counts = np.zeros(len(labels), np.float64)
    for label in live_labels:
        counts[position.get(label, other)] += 1
    live_shares = counts / max(counts.sum(), 1)
    n = _effective(int(counts.sum()), effective)
    counts = live_shares * n
    observed, expected = _pooled_cells(counts, train_shares, n)
    statistic = float(np.sum((observed - expected) ** 2 / expected)) if n else 0.0
    dof = max(observed.size - 1, 0)
    psi = population_stability_index(observed / n, expected / n) if n else 0.0
    return ShiftTest(psi=psi, statistic=statistic, p_value=chi_square_p_value(statistic, dof) if n else 1.0,
                     test="chi2", live_shares=live_shares.tolist(), train_shares=train_shares.tolist(), labels=labels,
                     cells=int((train_shares[:-1] * n >= MIN_EXPECTED).sum()),
                     categories=int((train_shares > 0).sum()))


def _effective(n: int, effective: float | None) -> int:
    """The sample size a test counts: `effective` (at least 1, at most n) when given, else n."""
    return n if effective is None or n == 0 else int(min(n, max(1, round(effective))))


def _pooled_cells(observed: np.ndarray, train_shares: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(observed, expected) counts after pooling cells expected to hold < MIN_EXPECTED rows.

    A category never seen in training (share 0) is pooled with the other rare cells,
    whose small but non-zero floor keeps a flood of such rows from going unnoticed.
    """
    if n == 0:
        return np.zeros(0), np.zeros(0)
    expected = np.maximum(train_shares, 0.0) * n
    big = expected >= MIN_EXPECTED
    cells_observed = list(observed[big])
    cells_expected = list(expected[big])
    if (~big).any() and (expected[~big].sum() > 0 or observed[~big].sum() > 0):
        cells_observed.append(observed[~big].sum())
        cells_expected.append(max(expected[~big].sum(), PSI_FLOOR * n))
    obs, exp = np.asarray(cells_observed, np.float64), np.asarray(cells_expected, np.float64)
    return obs, exp * (n / exp.sum())  # shares that do not sum to 1 (rounding) must not look like drift
