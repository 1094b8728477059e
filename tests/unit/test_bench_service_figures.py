"""The service benchmark's order-of-service and teaching figures, on made-up spans (the
figures the closing notes quote must count what they say they count)."""

from __future__ import annotations

from tools.bench_service import fairness, teach_cpu, teaching_effect, while_teaching


def test_first_come_first_served_counts_no_overtakes() -> None:
    # three clients, each call 3 s, ends one second apart, in the order they were sent
    spans = [(float(i), float(i) + 3.0) for i in range(9)]
    figures = fairness(spans)
    assert figures["overtaken_p95"] == 0
    assert figures["meanwhile_p50"] == 2  # the two calls ahead of each one


def test_a_later_call_that_ends_first_is_an_overtake() -> None:
    spans = [(0.0, 10.0), (1.0, 2.0), (2.0, 3.0)]
    assert fairness(spans)["overtaken_p95"] == 2


def test_slow_recognitions_are_counted_by_whether_teaching_was_at_work() -> None:
    teaching = [(10.0, 11.0), (11.0, 12.5)]  # the teachers at work from 10.0 to 12.5
    fast = [(float(t), float(t) + 0.1) for t in range(40)]
    slow = [(10.5, 11.5), (12.0, 13.0), (30.0, 31.0)]  # two start while teaching, one after
    figures = teaching_effect(fast + slow, teaching)
    assert figures["slow_n"] == 3
    assert figures["slow_teaching"] == 2
    assert figures["beside_n"] >= 2 and figures["teach_p50"] in (1000.0, 1500.0)
    assert teaching_effect(fast, [])["slow_teaching"] == 0


def test_recognitions_per_second_are_split_at_the_last_teaching_calls_end() -> None:
    # 10 s of load, the teachers done at 4 s: 8 calls ended by then, 18 after
    spans = [(t / 2, t / 2 + 0.5) for t in range(-1, 7)] + [
        (4 + t / 3, 4.5 + t / 3) for t in range(18)
    ]
    figures = while_teaching(spans, start=0.0, taught=4.0, end=10.0)
    assert figures == {"during_per_s": 2.0, "after_per_s": 3.0}


def test_a_teachs_cpu_is_what_the_teaching_window_spent_beyond_its_recognitions() -> None:
    # while teaching: 10 recognitions ended and 2 teaches; after: 20 recognitions at 20 ms
    # of server CPU each (400 ms), so the window's 10 cost 200 ms and the teaches the rest
    split = {
        "count": 10,
        "during_used": {"server": 0.260, "clients": 0.030},
        "after_used": {"server": 0.400, "clients": 0.040},
    }
    figures = teach_cpu(split, recognized=30, taught=2)
    assert round(figures["server"], 6) == 30.0  # (260 - 10 x 20) / 2 ms
    assert round(figures["clients"], 6) == 5.0  # (30 - 10 x 2) / 2 ms
