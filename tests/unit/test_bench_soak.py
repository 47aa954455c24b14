"""bench/soak_report.py: the soak benchmark's windows, verdict per process and plot (no stack)."""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "soak_report.py"
_spec = importlib.util.spec_from_file_location("soak_report", _PATH)
assert _spec is not None and _spec.loader is not None
soak_report = importlib.util.module_from_spec(_spec)
sys.modules["soak_report"] = soak_report
_spec.loader.exec_module(soak_report)

MiB = soak_report.MiB
SVG = "{http://www.w3.org/2000/svg}"


def run(level_of, minutes: float = 30, every: float = 5):
    """Samples every `every` s over `minutes`, RSS in MiB given by `level_of(t)`."""
    n = int(minutes * 60 / every)
    return [(i * every, level_of(i * every) * MiB) for i in range(n + 1)]


def test_a_thirty_minute_run_compares_the_last_five_minutes_with_the_five_after_the_warm_up():
    windows = soak_report.windows_for(1800)
    assert windows.start == (300, 600) and windows.end == (1500, 1800)


def test_a_short_run_gets_windows_of_a_sixth_of_its_length():
    windows = soak_report.windows_for(120)
    assert windows.window_s == 20 and windows.start == (20, 40) and windows.end == (100, 120)
    with pytest.raises(ValueError):
        soak_report.windows_for(0)


def test_the_warm_up_growth_does_not_count_and_a_steady_process_is_flat():
    # Grows from 50 to 100 MiB in the first 5 minutes, then stays at 100 to 105.
    samples = run(lambda t: 50 + 50 * t / 300 if t < 300 else 100 + 5 * (t - 300) / 1500)
    v = soak_report.verdict("gateway", samples, soak_report.windows_for(1800))
    assert v.flat and v.label == "flat"
    assert 100 < v.start_mib < 102 and 104 < v.end_mib <= 105
    assert v.max_mib == pytest.approx(105)
    # The warm-up's climb is not in the slope: 5 MiB over the last 25 minutes.
    assert v.slope_mib_per_hour == pytest.approx(12)


def test_a_leak_of_more_than_ten_percent_is_not_flat_and_one_just_under_is():
    windows = soak_report.windows_for(1800)
    leaking = soak_report.verdict("ledger", run(lambda t: 100 + t * 0.01), windows)
    assert not leaking.flat and leaking.label == "GROWS"
    assert leaking.change == pytest.approx((100 + 1650 * 0.01) / (100 + 450 * 0.01) - 1)
    just_under = soak_report.verdict("router", run(lambda t: 100 if t < 1500 else 109.9), windows)
    assert just_under.flat and just_under.change == pytest.approx(0.099)
    assert leaking.slope_mib_per_hour == pytest.approx(36)  # 0.01 MiB/s
    shrinking = soak_report.verdict("nats", run(lambda t: 100 if t < 1500 else 85), windows)
    assert not shrinking.flat and shrinking.label == "SHRINKS"


def test_a_process_gone_before_the_end_has_no_verdict_of_flat():
    samples = [(t, rss) for t, rss in run(lambda t: 100) if t < 900]
    v = soak_report.verdict("edge-node", samples, soak_report.windows_for(1800))
    assert v.end_mib is None and v.change is None and not v.flat
    assert "NO SAMPLES" in v.label
    assert not soak_report.verdict("cloud", [], soak_report.windows_for(1800)).flat


def test_the_plot_is_svg_with_one_panel_and_line_per_process_and_its_verdict():
    windows = soak_report.windows_for(1800)
    series = {
        "gateway": run(lambda t: 120),
        "ledger": run(lambda t: 100 + t * 0.01),
        "nats": run(lambda t: 20),
    }
    verdicts = {name: soak_report.verdict(name, s, windows) for name, s in series.items()}
    root = ET.fromstring(soak_report.rss_svg(series, verdicts, windows, "soak <test> & co"))
    assert root.tag == f"{SVG}svg"
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 3
    assert all(len(line.get("points", "").split()) == len(series["gateway"]) for line in lines)
    texts = [t.text or "" for t in root.iter(f"{SVG}text")]
    assert "soak <test> & co" in texts
    assert "gateway: flat (+0.0 %)" in texts
    assert any(t.startswith("ledger: GROWS (+") for t in texts)
    # Every point lies inside the drawing.
    width, height = float(root.get("width", 0)), float(root.get("height", 0))
    for line in lines:
        for point in line.get("points", "").split():
            x, y = (float(v) for v in point.split(","))
            assert 0 <= x <= width and 0 <= y <= height
