"""Shadow observations and the threshold they support, with a confidence bound. Pure.

In shadow mode the tier serves nothing: for each lookup whose best candidate
passed the guards, it notes the similarity and, when the real answer arrives,
whether the stored answer agreed with it. :func:`choose_threshold` then picks
the lowest threshold whose *upper confidence bound* on the wrong rate (not the
point estimate) stays under the user's bound: with 3 disagreements in 40
would-be hits the point estimate is 7.5%, but the rate could be 20%.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Calibration", "Observation", "choose_threshold", "wilson_upper"]

_Z = {0.8: 1.2816, 0.9: 1.6449, 0.95: 1.9600, 0.975: 2.2414, 0.99: 2.5758}


@dataclass(frozen=True)
class Observation:
    similarity: float
    agreed: bool


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold, what it would have served, and the bound on its wrong rate."""

    threshold: float
    served: int
    wrong: int
    wrong_upper: float
    confidence: float


def wilson_upper(wrong: int, n: int, confidence: float = 0.95) -> float:
    """One-sided upper bound of the Wilson score interval for a proportion."""
    if n <= 0:
        return 1.0
    z = _z(confidence)
    p = wrong / n
    denominator = 1 + z * z / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / denominator)


def _z(confidence: float) -> float:
    if confidence in _Z:
        return _Z[confidence]
    # Acklam-free fallback: bisection on the normal CDF (erf is in math).
    low, high = 0.0, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < confidence:
            low = mid
        else:
            high = mid
    return (low + high) / 2


def choose_threshold(
    observations: Sequence[Observation],
    max_wrong: float,
    confidence: float = 0.95,
    min_served: int = 1,
) -> Calibration | None:
    """The lowest threshold whose wrong rate is under ``max_wrong`` at ``confidence``.

    Lower thresholds serve more; every candidate threshold is an observed
    similarity. None when no threshold has enough evidence: then the tier
    should not serve yet (keep shadowing).
    """
    ordered = sorted(observations, key=lambda o: -o.similarity)
    best: Calibration | None = None
    wrong = 0
    for served, observation in enumerate(ordered, start=1):
        wrong += not observation.agreed
        if served < len(ordered) and ordered[served].similarity == observation.similarity:
            continue  # a threshold serves every observation at its similarity
        upper = wilson_upper(wrong, served, confidence)
        if served >= min_served and upper <= max_wrong:
            best = Calibration(observation.similarity, served, wrong, upper, confidence)
    return best
