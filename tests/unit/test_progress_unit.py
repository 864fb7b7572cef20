"""raylane.progress outside a task, and the values it refuses."""

from __future__ import annotations

import pytest

import raylane


def test_progress_outside_a_task_does_nothing():
    assert raylane.progress(0.5, "half") is False


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "half", True, None])
def test_a_progress_that_is_not_a_fraction_is_refused(bad):
    with pytest.raises(raylane.InvalidTaskInput):
        raylane.progress(bad)


def test_a_message_must_be_text():
    with pytest.raises(raylane.InvalidTaskInput):
        raylane.progress(0.5, 42)  # type: ignore[arg-type]
