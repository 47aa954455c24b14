"""The soak benchmark's pure part (bench/soak.py): the windows, the verdict per process, the plot.

No I/O: plain data in, numbers and an SVG document out, so that tests/unit/test_bench_soak.py
checks them without a stack. The plot is SVG written by hand (stdlib only): matplotlib is not a
project dependency, an SVG renders on GitHub and in any browser, its text stays text, and a
bench-only virtualenv would be one more thing to build on a 2-core box for one picture.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

MiB = 1024 * 1024
# One sample: seconds since the load started, resident bytes.
Sample = tuple[float, float]


@dataclass(frozen=True)
class Windows:
    """Where the verdict looks: the warm-up [0, window) is left out, `start` is the window after
    it and `end` the last window of the run."""

    total_s: float
    window_s: float

    @property
    def start(self) -> tuple[float, float]:
        return (self.window_s, 2 * self.window_s)

    @property
    def end(self) -> tuple[float, float]:
        return (self.total_s - self.window_s, self.total_s)


def windows_for(total_s: float, window_s: float = 300.0) -> Windows:
    """Five-minute windows for a 30-minute run; a shorter run gets a sixth of its length each, so
    that warm-up, start and end never overlap."""
    if total_s <= 0:
        raise ValueError("the run has no length")
    return Windows(total_s, min(window_s, total_s / 6))


@dataclass(frozen=True)
class Verdict:
    process: str
    start_mib: float | None  # median RSS in the start window
    end_mib: float | None  # median RSS in the end window
    max_mib: float  # the highest sample of the whole run, warm-up included
    tolerance: float
    # Least-squares slope of the samples after the warm-up, MiB per hour: a slow drift the two
    # windows' ±10 % lets through shows here (None under two samples).
    slope_mib_per_hour: float | None = None

    @property
    def change(self) -> float | None:
        """end / start - 1, or None when a window has no sample (the process was gone)."""
        if self.start_mib is None or self.end_mib is None or self.start_mib <= 0:
            return None
        return self.end_mib / self.start_mib - 1

    @property
    def flat(self) -> bool:
        change = self.change
        return change is not None and abs(change) <= self.tolerance

    @property
    def label(self) -> str:
        change = self.change
        if change is None:
            return "NO SAMPLES (process gone?)"
        return "flat" if self.flat else ("GROWS" if change > 0 else "SHRINKS")


def _median_in(samples: Sequence[Sample], window: tuple[float, float]) -> float | None:
    low, high = window
    inside = [rss for t, rss in samples if low <= t <= high]
    return statistics.median(inside) / MiB if inside else None


def slope_per_hour(samples: Sequence[Sample], after_s: float) -> float | None:
    """MiB per hour, least squares over the samples from `after_s` on."""
    kept = [(t, rss / MiB) for t, rss in samples if t >= after_s]
    if len(kept) < 2 or len({t for t, _ in kept}) < 2:
        return None
    return statistics.linear_regression([t for t, _ in kept], [m for _, m in kept]).slope * 3600


def verdict(process: str, samples: Sequence[Sample], windows: Windows, tolerance: float = 0.10) -> Verdict:
    """Median RSS of the end window against the start window's, within ±`tolerance`: flat."""
    if not samples:
        return Verdict(process, None, None, 0.0, tolerance)
    return Verdict(
        process,
        _median_in(samples, windows.start),
        _median_in(samples, windows.end),
        max(rss for _, rss in samples) / MiB,
        tolerance,
        slope_per_hour(samples, windows.start[0]),
    )


PANEL_W, PANEL_H, COLUMNS = 300, 180, 3
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 52, 12, 26, 30


def rss_svg(
    series: Mapping[str, Sequence[Sample]],
    verdicts: Mapping[str, Verdict],
    windows: Windows,
    title: str,
) -> str:
    """Small multiples (`title`'s lines above), one panel per process on its own scale: RSS (MiB) against minutes, the
    ±tolerance band around the start window's median shaded, the start and end windows marked.
    One shared axis would flatten nats-server's 20 MiB under the edge node's hundreds."""
    names = list(series)
    rows = max(1, -(-len(names) // COLUMNS))
    title_lines = title.split("\n")
    top = 24 + 17 * len(title_lines)
    width, height = COLUMNS * PANEL_W, rows * PANEL_H + top
    total_min = windows.total_s / 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for n, line in enumerate(title_lines):
        weight = ' font-weight="bold"' if n == 0 else ""
        out.append(f'<text x="8" y="{20 + 17 * n}" font-size="13"{weight}>{escape(line)}</text>')
    for i, name in enumerate(names):
        ox, oy = (i % COLUMNS) * PANEL_W, top + (i // COLUMNS) * PANEL_H
        pw, ph = PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B
        x0, y0 = ox + MARGIN_L, oy + MARGIN_T
        samples = series[name]
        v = verdicts[name]
        values = [rss / MiB for _, rss in samples]
        base = v.start_mib
        low = min([*values, *([base * (1 - v.tolerance)] if base else [])], default=0.0)
        high = max([*values, *([base * (1 + v.tolerance)] if base else [])], default=1.0)
        pad = max((high - low) * 0.08, 0.5)
        low, high = max(0.0, low - pad), high + pad

        def sx(t: float, x0: float = x0, pw: float = pw) -> float:
            return x0 + pw * min(max(t / windows.total_s, 0.0), 1.0)

        def sy(mib: float, y0: float = y0, ph: float = ph, low: float = low, high: float = high) -> float:
            return y0 + ph * (1 - (mib - low) / (high - low))

        colour = "#2a7a2a" if v.flat else "#b02020"
        change = v.change
        head = f"{name}: {v.label}" + (f" ({change * 100:+.1f} %)" if change is not None else "")
        out.append(
            f'<text x="{ox + 8}" y="{oy + 16}" font-weight="bold" fill="{colour}">{escape(head)}</text>'
        )
        for a, b in (windows.start, windows.end):
            out.append(
                f'<rect x="{sx(a):.1f}" y="{y0}" width="{sx(b) - sx(a):.1f}" height="{ph}" fill="#eef"/>'
            )
        if base:
            band_top, band_bottom = sy(base * (1 + v.tolerance)), sy(base * (1 - v.tolerance))
            out.append(
                f'<rect x="{x0}" y="{band_top:.1f}" width="{pw}" height="{band_bottom - band_top:.1f}" '
                'fill="#2a7a2a" fill-opacity="0.10"/>'
            )
            out.append(
                f'<line x1="{x0}" y1="{sy(base):.1f}" x2="{x0 + pw}" y2="{sy(base):.1f}" '
                'stroke="#2a7a2a" stroke-dasharray="3,3" stroke-width="0.8"/>'
            )
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
        for mib in (low, (low + high) / 2, high):
            out.append(f'<text x="{x0 - 4}" y="{sy(mib) + 4:.1f}" text-anchor="end">{mib:.0f}</text>')
        for minute in (0, total_min / 2, total_min):
            out.append(
                f'<text x="{sx(minute * 60):.1f}" y="{y0 + ph + 13}" text-anchor="middle">{minute:.0f}</text>'
            )
        out.append(f'<text x="{x0 + pw}" y="{y0 + ph + 26}" text-anchor="end" fill="#555">min</text>')
        out.append(f'<text x="{ox + 8}" y="{y0 + ph + 26}" fill="#555">MiB</text>')
        if samples:
            points = " ".join(f"{sx(t):.1f},{sy(rss / MiB):.1f}" for t, rss in samples)
            out.append(f'<polyline points="{points}" fill="none" stroke="#1f4e9a" stroke-width="1.3"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
