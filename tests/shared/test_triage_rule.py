"""The worklist's triage rule (shared/triage.py): urgency bands, weighting by finding urgency and by
probability relative to threshold, and the ageing bound: no study finishing after a study's due time
is ever placed above it, so a study the model calls normal waits at most `max_wait` behind later
arrivals."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from shared.findings import FINDINGS, URGENCY
from shared.triage import due_at, triage, urgency

MAX_WAIT = 240.0
T0 = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)


@dataclass(frozen=True)
class F:
    label: str
    probability: float
    threshold: float = 0.5

    @property
    def positive(self) -> bool:
        return self.probability >= self.threshold


def _study(**probabilities: float) -> list[F]:
    return [F(label, probabilities.get(label, 0.0)) for label in FINDINGS]


def test_any_positive_outranks_every_normal_study() -> None:
    weakest_positive = urgency(_study(Hernia=0.51))
    strongest_normal = urgency(_study(**{label: 0.4999 for label in FINDINGS}))
    assert strongest_normal < 0.5 <= weakest_positive


@pytest.mark.parametrize(("urgent", "chronic"), [
    ("Pneumothorax", "Hernia"), ("Edema", "Fibrosis"), ("Consolidation", "Hernia"),
    ("Pneumonia", "Fibrosis"), ("Mass", "Hernia"), ("Effusion", "Fibrosis"),
])
def test_acute_findings_rank_above_chronic_ones(urgent: str, chronic: str) -> None:
    assert urgency(_study(**{urgent: 0.6})) > urgency(_study(**{chronic: 0.99}))
    # Also among normal studies: close to an acute finding's threshold beats close to a chronic one's.
    assert urgency(_study(**{urgent: 0.45})) > urgency(_study(**{chronic: 0.45}))


def test_normal_score_follows_probability_relative_to_threshold() -> None:
    low = urgency([F("Pneumothorax", 0.1, threshold=0.5)])
    high = urgency([F("Pneumothorax", 0.4, threshold=0.5)])
    relative = urgency([F("Pneumothorax", 0.08, threshold=0.1)])  # 0.8 of its threshold
    assert low < high == pytest.approx(relative)
    assert urgency([]) == 0.0


def test_due_time_is_bounded_by_max_wait() -> None:
    assert due_at(T0, 1.0, MAX_WAIT) == T0
    assert due_at(T0, 0.0, MAX_WAIT) == T0 + timedelta(minutes=MAX_WAIT)
    assert due_at(T0, 7.0, MAX_WAIT) == T0 and due_at(T0, -1.0, MAX_WAIT) == T0 + timedelta(minutes=MAX_WAIT)


def test_ageing_bound_on_a_simulated_day() -> None:
    """A stream of studies: most normal, some urgent. Sorting by due_at (the worklist order), a study
    is never below one that finished after its due time, and a normal study is never below more than
    max_wait minutes' worth of later arrivals."""
    rng = random.Random(5)
    studies = []
    moment = T0
    for index in range(2000):
        moment += timedelta(seconds=rng.uniform(5, 120))
        if rng.random() < 0.15:
            findings = _study(**{rng.choice(FINDINGS): rng.uniform(0.5, 1.0)})
        else:
            findings = _study(**{label: rng.uniform(0.0, 0.49) for label in FINDINGS})
        t = triage(findings, moment, MAX_WAIT)
        studies.append((t.due_at, index, moment, t.urgency))
    ordered = sorted(studies)
    latest_finish_above: datetime | None = None
    for due, _index, finished, value in ordered:
        assert due <= finished + timedelta(minutes=MAX_WAIT)
        assert due >= finished
        if latest_finish_above is not None and value < 0.5:
            # Everything above this study finished no later than its due time.
            assert latest_finish_above <= due
        latest_finish_above = max(latest_finish_above or finished, finished)
    # The worst case really is reached and bounded: normal studies all wait less than max_wait.
    normal_waits = [(due - finished) for due, _i, finished, value in studies if value < 0.5]
    assert max(normal_waits) <= timedelta(minutes=MAX_WAIT)
    assert min(normal_waits) >= timedelta(minutes=MAX_WAIT / 2)


def test_a_normal_study_overtakes_later_urgent_ones_after_the_bound() -> None:
    normal = triage(_study(), T0, MAX_WAIT)  # urgency 0: due after exactly max_wait
    urgent_before = triage(_study(Pneumothorax=0.99), T0 + timedelta(minutes=MAX_WAIT - 1), MAX_WAIT)
    urgent_after = triage(_study(Pneumothorax=0.99), T0 + timedelta(minutes=MAX_WAIT, seconds=1), MAX_WAIT)
    order = sorted([("normal", normal.due_at), ("before", urgent_before.due_at), ("after", urgent_after.due_at)],
                   key=lambda item: item[1])
    assert [name for name, _ in order] == ["before", "normal", "after"]
    assert URGENCY["Pneumothorax"] == 1.0
