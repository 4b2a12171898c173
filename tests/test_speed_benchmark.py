"""scripts/benchmark.py's comparison table (the timing itself is a benchmark, never a test):
per-round ratios, medians over rounds and failed runs, with the child processes replaced."""

import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture()
def bench():
    path = os.path.join(HERE, "..", "scripts", "benchmark.py")
    spec = importlib.util.spec_from_file_location("mlip_speed_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rounds_give_median_of_per_round_ratios(bench, monkeypatch, capsys):
    # the machine slows down in round 2: both programs take twice as long, the ratio holds
    seconds = {("nequip", 0): 0.2, ("mlip", 0): 0.05, ("nequip", 1): 0.4, ("mlip", 1): 0.1,
               ("nequip", 2): 0.3, ("mlip", 2): 0.12}
    calls = []

    def fake_child(program, workload, threads, repeats, peer_malloc_tuning=False):
        rnd = sum(1 for p, _ in calls if p == program)
        calls.append((program, workload))
        return {"workload": workload, "program": program, "seconds": seconds[(program, rnd)], "params": 10,
                "peak_rss_mb": 100.0 + rnd}

    monkeypatch.setattr(bench, "run_child", fake_child)
    bench.compare(["3bpa-train"], 2, 3, ["nequip"], ("mlip",), rounds=3)
    assert calls == [("nequip", "3bpa-train"), ("mlip", "3bpa-train")] * 3  # alternated
    row = [l for l in capsys.readouterr().out.splitlines() if l.startswith("3bpa-train ")][0]
    # per-round ratios 4.0, 4.0, 2.5 -> median 4.00, range 2.50-4.00; seconds are medians (0.3, 0.1)
    assert "4.00x [2.50-4.00]" in row
    assert "0.3000" in row and "0.1000" in row and "102" in row


def test_failed_run_is_reported_not_divided(bench, monkeypatch, capsys):
    def fake_child(program, workload, threads, repeats, peer_malloc_tuning=False):
        if program == "nequip":
            return {"workload": workload, "program": program, "error": "nequip missing: run setup_peers.sh"}
        return {"workload": workload, "program": program, "seconds": 0.01, "params": 10, "peak_rss_mb": 50.0}

    monkeypatch.setattr(bench, "run_child", fake_child)
    bench.compare(["3bpa-infer"], 2, 3, ["nequip"], ("mlip",), rounds=2)
    out = capsys.readouterr().out
    row = [l for l in out.splitlines() if l.startswith("3bpa-infer ")][0]
    assert "n/a" in row and "error" in row
    assert out.count("3bpa-infer nequip: nequip missing: run setup_peers.sh") == 2
