"""The bench's figures: ratios taken within rounds, and CPU per task above the machine at rest."""

from __future__ import annotations

import pytest

from raylane.bench import suite
from raylane.bench.report import markdown
from raylane.bench.suite import above_rest_ms, bench_keepers, combine_rounds, headline, run


def _runs(**per_part: list[float]) -> dict[str, list[dict]]:
    return {part: [{"tasks_per_s": v, "round": i} for i, v in enumerate(vs)] for part, vs in per_part.items()}


def test_ratios_are_taken_within_each_round_and_their_median_is_the_headline():
    # The machine slows down in round 2 and speeds up in round 3; within each round raylane
    # keeps 0.8 of raw Ray's rate.
    runs = _runs(ray=[1000.0, 500.0, 1250.0], burst=[800.0, 400.0, 1000.0], timed_burst=[880.0, 360.0, 1000.0])
    chosen, rounds = combine_rounds(runs)
    assert rounds["n"] == 3
    assert rounds["ratios"]["ray_ratio"] == {"per_round": [0.8, 0.8, 0.8], "median": 0.8, "min": 0.8, "max": 0.8}
    assert rounds["ratios"]["timed_ratio"]["per_round"] == [1.1, 0.9, 1.0]
    assert rounds["ratios"]["timed_ratio"]["median"] == 1.0
    assert "dramatiq_ratio" not in rounds["ratios"]  # dramatiq did not run
    # Each part stands as its median run, with every round's figure beside it.
    assert chosen["ray"]["tasks_per_s"] == 1000.0 and chosen["ray"]["round"] == 0
    assert chosen["burst"]["rounds_tasks_per_s"] == [800.0, 400.0, 1000.0]

    h = headline({**chosen, "rounds": rounds})
    assert h["ray_ratio"] == 0.8
    assert h["timed_ratio"] == 1.0 and h["raylane_tasks_per_s"] == 800.0


def test_without_rounds_the_headline_ratio_is_of_the_single_runs():
    h = headline({"ray": {"tasks_per_s": 1000.0}, "burst": {"tasks_per_s": 700.0}})
    assert h["ray_ratio"] == 0.7


def test_the_median_of_an_even_number_of_rounds_and_a_ratio_that_differs_from_the_medians():
    runs = _runs(ray=[1000.0, 400.0], burst=[900.0, 200.0])
    chosen, rounds = combine_rounds(runs)
    assert chosen["ray"]["tasks_per_s"] == 400.0  # the lower middle run stands for an even count
    assert rounds["ratios"]["ray_ratio"]["per_round"] == [0.9, 0.5]
    h = headline({**chosen, "rounds": rounds})
    assert h["ray_ratio"] == 0.7  # the median of 0.9 and 0.5, not 200/400


def test_the_report_shows_every_round():
    chosen, rounds = combine_rounds(_runs(ray=[1000.0, 900.0], burst=[800.0, 810.0]))
    r = {"mode": "quick", "started_at": "2026-12-04T00:00:00", "machine": {"cpus": 2, "python": "3.11", "ray": "x"}}
    r.update(chosen, rounds=rounds, **headline({**chosen, "rounds": rounds}))
    text = markdown(r)
    assert "## rounds (2, each ratio taken within one round)" in text
    assert "| `ray_ratio` | 0.85 | 0.8 | 0.9 | 0.8, 0.9 |" in text


def test_the_keepers_shares_are_of_their_cpu_over_every_round(monkeypatch):
    # Round 2 catches keeper 1 in a pause: 0.442 of that round, but a fifth more over all three.
    rows = iter(
        [
            {"tasks_per_s": 2200.0, "keeper_cpu_ms": [250.0, 250.0, 250.0], "keeper_cpu_shares": [0.333] * 3},
            {"tasks_per_s": 2100.0, "keeper_cpu_ms": [250.0, 420.0, 280.0], "keeper_cpu_shares": [0.263, 0.442, 0.295]},
            {"tasks_per_s": 2300.0, "keeper_cpu_ms": [260.0, 250.0, 260.0], "keeper_cpu_shares": [0.338, 0.325, 0.338]},
        ]
    )
    monkeypatch.setattr(suite, "_child_burst", lambda env, n: next(rows))
    row = bench_keepers(3, 10_000, rounds=3)
    assert row["keeper_cpu_ms"] == [760.0, 920.0, 790.0]
    assert row["keeper_cpu_shares"] == [0.308, 0.372, 0.32]
    assert row["busiest_keeper_share"] == 0.372 and row["busiest_keeper_target"] == 0.433
    assert row["rounds_keeper_cpu_shares"][1] == [0.263, 0.442, 0.295]  # every round is shown
    assert row["tasks_per_s"] == 2200.0 and row["rounds_tasks_per_s"] == [2200.0, 2100.0, 2300.0]


def test_a_failed_keepers_round_is_reported_as_such(monkeypatch):
    monkeypatch.setattr(suite, "_child_burst", lambda env, n: {"error": "the deployment did not start"})
    assert bench_keepers(3, 10_000, rounds=3) == {"keepers": 3, "error": "the deployment did not start"}


def test_rounds_below_one_are_refused_before_anything_runs():
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        run(quick=True, parts={"burst"}, rounds=0)


def test_cpu_above_rest_takes_out_what_the_machine_spends_idle_over_the_same_time():
    # 10 s at 0.4 cores idle is 4,000 ms of the 14,000 a burst of 5,000 tasks used.
    assert above_rest_ms(14_000.0, 0.4, 10.0, 5_000) == 2.0
    # A burst twice as long pays the rest twice; the tasks' own share stays.
    assert above_rest_ms(18_000.0, 0.4, 20.0, 5_000) == 2.0
    # Never below nothing, should the machine have been busier at rest than in the burst.
    assert above_rest_ms(1_000.0, 0.5, 10.0, 100) == 0.0


def test_a_peer_broker_is_used_only_once_it_listens():
    import socket
    import subprocess
    import sys

    import pytest

    from raylane.bench.suite import _await_listening, _free_port

    # A process that listens only after a moment, as redis-server does once started.
    port = _free_port()
    late = (
        "import socket, time; time.sleep(0.3); s = socket.socket(); "
        f"s.bind(('127.0.0.1', {port})); s.listen(); c, _ = s.accept(); c.close()"
    )
    proc = subprocess.Popen([sys.executable, "-c", late])
    try:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()  # not yet
        _await_listening(port, proc)
    finally:
        proc.wait(timeout=10)
    # One that exits without listening is reported, not waited for.
    gone = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited"):
        _await_listening(_free_port(), gone)
