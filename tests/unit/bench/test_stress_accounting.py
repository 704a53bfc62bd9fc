"""The stress benchmark's bookkeeping: counts by outcome, the invariant, fault mixes, RSS growth."""

from __future__ import annotations

import json
import math

import pytest

from bench.stress_load import HUNG, Outcome, tally
from bench.stress_plan import Durations, scenarios
from bench.stress_report import findings
from bench.stress_rss import RssSample, growth, totals


def _o(result: str, ms: float = 10.0, body_ok: bool = True) -> Outcome:
    return Outcome(sent_s=0.0, latency_s=ms / 1e3, result=result, body_ok=body_ok)


def test_tally_counts_each_outcome_once_and_percentiles_cover_200s_only() -> None:
    outcomes = [_o("200", 1), _o("200", 2), _o("200", 3, body_ok=False), _o("503", 900),
                _o("504", 5000), _o("error:ServerDisconnectedError"), _o(HUNG, 20000)]
    t = tally(7, outcomes)
    assert t.statuses == {"200": 3, "503": 1, "504": 1}
    assert t.errors == {"ServerDisconnectedError": 1}
    assert (t.answered, t.transport_errors, t.hung, t.unexpected_body) == (5, 1, 1, 1)
    assert t.accounted and not t.clean  # all accounted for, but one hung
    assert (t.p50_ms, t.p99_ms, t.max_ms) == pytest.approx((2.0, 3.0, 3.0))


def test_a_request_sent_but_never_recorded_breaks_the_invariant() -> None:
    t = tally(3, [_o("200"), _o("503")])
    assert not t.accounted and not t.clean
    assert tally(2, [_o("200"), _o("503")]).clean


def test_tally_of_nothing_has_no_percentiles() -> None:
    t = tally(0, [])
    assert t.clean and math.isnan(t.p99_ms)


def test_growth_compares_medians_of_first_window_after_warmup_and_last_window() -> None:
    # warm-up noise (t < 10) and one spike in each window must not decide the verdict
    series = ([(float(t), 500) for t in range(10)] + [(float(t), 100) for t in range(10, 20)]
              + [(15.5, 900)] + [(float(t), 104) for t in range(20, 40)] + [(39.5, 999)])
    g = growth(sorted(series), "gateway", warmup_s=10, window_s=10)
    assert (g.first_median, g.last_median) == (100, 104)
    assert g.ratio == pytest.approx(0.04) and g.ok
    assert not growth([(0.0, 100), (10.0, 106)], "w", 0, 5).ok  # +6%


def test_growth_without_samples_in_a_window_is_not_a_pass() -> None:
    g = growth([(0.0, 100), (1.0, 100)], "worker", warmup_s=60, window_s=60)
    assert g.first_n == 0 and not g.ok


def test_totals_sum_the_processes_of_a_role_per_instant() -> None:
    samples = [RssSample(0.0, 1, "gateway", 10), RssSample(0.0, 2, "worker", 5),
               RssSample(0.0, 3, "worker", 7), RssSample(1.0, 2, "worker", 6)]
    assert totals(samples, "worker") == [(0.0, 12), (1.0, 6)]
    assert totals(samples, "gateway") == [(0.0, 10)]


def test_fault_bodies_put_one_faulty_request_in_each_period() -> None:
    by_name = {s.name: s for s in scenarios(Durations.quick(), 4, 0.5, 0.7)}
    bodies = by_name["fault-sleep"].bodies(b"{}", rate=100.0)  # one per 5 s at 100 req/s
    assert len(bodies) == 500 and bodies[:-1] == [b"{}"] * 499
    assert json.loads(bodies[-1])["fault"] == "sleep"
    assert by_name["fault-kill9"].bodies(b"{}", rate=100.0) == [b"{}"]


def _row(**kw: object) -> dict[str, object]:
    row: dict[str, object] = {
        "scenario": "s", "kind": "overload", "hang_after_s": 15.0, "server_alive": True,
        "config": {"workers": 1}, "stop_error": None, "rss_growth": {},
        "after": {"ping": 200, "predict": 200, "recovered_s": 0.1, "ready_workers": 1},
        "tally": tally(2, [_o("200"), _o("503")]).to_dict()}
    row.update(kw)
    return row


def test_findings_name_hung_requests_odd_statuses_and_a_dead_server() -> None:
    assert findings(_row()) == []
    hung = findings(_row(tally=tally(2, [_o("200"), _o(HUNG)]).to_dict()))
    assert any("1 request(s) hung" in f for f in hung)
    odd = findings(_row(tally=tally(1, [_o("500")]).to_dict()))
    assert any("500: 1" in f for f in odd)
    assert findings(_row(kind="fault", tally=tally(1, [_o("500")]).to_dict())) == []
    assert any("gone" in f for f in findings(_row(server_alive=False)))
    soak = _row(kind="soak", rss_growth={"gateway": growth([(0.0, 100), (9.0, 110)],
                                                           "gateway", 0, 5).to_dict()})
    assert any("gateway RSS grew +10.0%" in f for f in findings(soak))
