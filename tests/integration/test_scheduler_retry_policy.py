"""The retry policy as a table: what each child ending becomes."""

from __future__ import annotations

import pytest

from gpjobs.scheduler.retry import Outcome, backoff_s, classify
from gpjobs.training.protocol import ExitCode


@pytest.mark.parametrize(
    "rc, published, stop, reported, outcome",
    [
        (0, True, None, None, Outcome.SUCCEEDED),
        (-15, True, "cancel", None, Outcome.SUCCEEDED),  # publish committed before the cancel landed
        (5, False, "cancel", None, Outcome.CANCELLED),
        (-9, False, "cancel", None, Outcome.CANCELLED),
        (5, False, "timeout", None, Outcome.TIMED_OUT),
        (5, False, "shutdown", None, Outcome.INTERRUPTED),
        (-9, False, "stalled", None, Outcome.LOST),
        (-9, False, None, None, Outcome.LOST),  # a signal we did not send
        (6, False, None, None, Outcome.LOST),  # lifeline lost
        (-6, False, None, 1, Outcome.FAILED),  # reported an exception, then aborted at interpreter exit
        (2, False, None, 2, Outcome.FAILED),
        (3, False, None, 3, Outcome.FAILED),
        (4, False, None, 4, Outcome.FAILED),
        (0, False, None, None, Outcome.FAILED),  # exit 0 without a result breaks the contract
        (77, False, None, None, Outcome.FAILED),
    ],
)
def test_classify(rc, published, stop, reported, outcome):
    assert classify(rc, published=published, stop_reason=stop, reported=reported) is outcome


def test_backoff_grows_and_is_capped():
    assert 0.9 <= backoff_s(1, 1.0) <= 1.1
    assert 3.6 <= backoff_s(3, 1.0) <= 4.4
    assert backoff_s(30, 1.0, cap=60) <= 66
    assert backoff_s(2, 0.0) == 0
    assert int(ExitCode.LIFELINE_LOST) == 6
