"""Triage: how urgent a diagnosed study is, and when it is due on the worklist.

Urgency is in [0, 1] in two bands, so every study the model calls positive is ahead of every study it
calls normal at the same completion time; `due_at = finished_at + max_wait * (1 - urgency)` bounds
every study's wait by `max_wait`, so no study starves behind urgent ones. A study whose image is not a
frontal chest X-ray (`shared.frontal`) gets urgency 0: its findings are unreliable, so they never make
it urgent. The rule, with its formulas and that bound, is set out in docs/USING.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from shared.findings import URGENCY

POSITIVE_FLOOR = 0.5
CONFIDENCE_FLOOR = 0.8


class ScoredFinding(Protocol):
    """What triage needs of a finding (shared.diagnosis.FindingResult and models.Finding both fit)."""

    label: str
    probability: float
    threshold: float
    positive: bool


@dataclass(frozen=True)
class Triage:
    urgency: float
    due_at: datetime


def urgency(findings: Iterable[ScoredFinding]) -> float:
    positive_scores: list[float] = []
    normal_scores: list[float] = [0.0]
    for finding in findings:
        weight = URGENCY.get(finding.label, 0.0)
        if finding.positive:
            positive_scores.append(weight * confidence(finding.probability, finding.threshold))
        elif finding.threshold > 0:
            ratio = min(1.0, max(0.0, finding.probability / finding.threshold))
            normal_scores.append(weight * ratio)
    if positive_scores:
        return POSITIVE_FLOOR + (1.0 - POSITIVE_FLOOR) * max(positive_scores)
    # Strictly below the positive band even when a probability sits exactly at a threshold.
    return min(POSITIVE_FLOOR * max(normal_scores), POSITIVE_FLOOR - 1e-6)


def confidence(probability: float, threshold: float) -> float:
    """How far past its threshold a positive finding is, mapped onto [CONFIDENCE_FLOOR, 1]."""
    excess = 1.0 if threshold >= 1.0 else (probability - threshold) / (1.0 - threshold)
    return CONFIDENCE_FLOOR + (1.0 - CONFIDENCE_FLOOR) * min(1.0, max(0.0, excess))


def due_at(finished_at: datetime, urgency_value: float, max_wait_minutes: float) -> datetime:
    clamped = min(1.0, max(0.0, urgency_value))
    return finished_at + timedelta(minutes=max_wait_minutes * (1.0 - clamped))


def triage(findings: Iterable[ScoredFinding], finished_at: datetime, max_wait_minutes: float,
           not_frontal: bool = False) -> Triage:
    value = 0.0 if not_frontal else urgency(findings)
    return Triage(urgency=value, due_at=due_at(finished_at, value, max_wait_minutes))
