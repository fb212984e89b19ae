"""Which train run the views show: the promotion gates and the current-run rule.

A train run publishes its rows as a candidate. It becomes the *current* run (the one every
current_* view and analysts' view shows, and the one evaluate and report use by default)
when it passes the gates of ``publish.gate_*`` (``gate_reasons``), or when someone promotes
it on purpose (``./spark-submit.sh runs promote``). Every promotion, rejection, pin and unpin
is a row of ``run_events``; the current run is the pinned one while a pin holds, else the
run of the latest promotion (``current_run_sql``). docs/operations.md tells the whole story.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from skillrank.config import PublishConfig

# train's exit code when its run failed a gate: published, kept, not current.
EXIT_REJECTED = 3

PROMOTED, REJECTED, PINNED, UNPINNED = "promoted", "rejected", "pinned", "unpinned"
# run_events.actor of the events train writes.
GATE = "gate"


@dataclass(frozen=True)
class RunScores:
    """What the gates read of a run (None where it was not measured)."""

    run_id: str
    train_loss: float | None
    validation_loss: float | None
    validation_ndcg: float | None
    test_loss: float | None


def gate_reasons(
    candidate: RunScores,
    cooccurrence_ndcg: float,
    current: RunScores | None,
    params: PublishConfig,
) -> list[str]:
    """Why `candidate` may not replace `current` (the current run, None before the first);
    empty when it passes every gate.

    1. Its validation and test losses, its validation NDCG and (where recorded) its train
       loss are finite numbers: a diverging run never reaches the views.
    2. Its validation loss is at most the current run's times
       (1 + params.gate_validation_loss_increase).
    3. Its validation NDCG@10 is at least co-occurrence counting's on the same validation
       profiles, `cooccurrence_ndcg`, minus params.gate_ndcg_below_cooccurrence.
    """
    measured = {
        "validation loss": candidate.validation_loss,
        "validation NDCG@10": candidate.validation_ndcg,
        "test loss": candidate.test_loss,
    }
    if candidate.train_loss is not None:
        measured["train loss"] = candidate.train_loss
    reasons = [
        f"{name} is {value} (not a finite number)"
        for name, value in measured.items()
        if value is None or not math.isfinite(value)
    ]
    if reasons:
        return reasons
    assert candidate.validation_loss is not None and candidate.validation_ndcg is not None
    if current is not None and current.validation_loss is not None:
        limit = current.validation_loss * (1.0 + params.gate_validation_loss_increase)
        if candidate.validation_loss > limit:
            reasons.append(
                f"validation loss {candidate.validation_loss:.6g} > {limit:.6g} (the current"
                f" run {current.run_id}'s {current.validation_loss:.6g}"
                f" + {params.gate_validation_loss_increase:.0%})"
            )
    floor = cooccurrence_ndcg - params.gate_ndcg_below_cooccurrence
    if candidate.validation_ndcg < floor:
        reasons.append(
            f"validation NDCG@10 {candidate.validation_ndcg:.4f} < {floor:.4f} (co-occurrence"
            f" counting's {cooccurrence_ndcg:.4f} - {params.gate_ndcg_below_cooccurrence:g})"
        )
    return reasons


def current_run_sql(runs: str, run_events: str) -> str:
    """Scalar SQL expression: run_id of the current run (null before any run succeeded).

    The pinned run while the latest pin/unpin event is a pin; else the run of the latest
    promotion; else (a work directory from before run_events) the latest succeeded run.
    """
    return f"coalesce({pinned_run_sql(run_events)}, {promoted_run_sql(runs, run_events)})"


def promoted_run_sql(runs: str, run_events: str) -> str:
    """Scalar SQL expression: the run that is current when no pin holds (the latest
    promotion's; before run_events, the latest succeeded run)."""
    promoted = f"(SELECT max_by(run_id, at) FROM {run_events} WHERE event = '{PROMOTED}')"
    succeeded = f"(SELECT max_by(run_id, ended_at) FROM {runs} WHERE status = 'succeeded')"
    return f"coalesce({promoted}, {succeeded})"


def pinned_run_sql(run_events: str) -> str:
    """Scalar SQL subquery: the run a pin holds the views on (null when none): the latest
    pin/unpin event's run if that event is a pin."""
    return (
        f"(SELECT if(max_by(event, at) = '{PINNED}', max_by(run_id, at), NULL)"
        f" FROM {run_events} WHERE event IN ('{PINNED}', '{UNPINNED}'))"
    )
