"""Stacked line charts as PNG bytes, drawn with Pillow (the project has no plotting library).

`burst_chart` draws a simulation's queue, p95 latency and replicas over time, one panel each, on a
shared time axis; `nice_ticks` picks the axis labels.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from pipeline.capacity.simulation import Sample

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#7f7f7f")
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, GAP, AXIS_SPACE = 80, 250, 50, 60, 56


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]   # (x, y); a nan y breaks the line
    color: str
    dashed: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    y_label: str
    series: tuple[Series, ...]


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` round tick values (steps of 1, 2 or 5 × 10^k) covering [low, high]."""
    if not high > low:
        high = low + 1.0
    raw = (high - low) / max(1, count - 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    return [first + i * step for i in range(math.ceil((high - first) / step - 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:g}"


def _line(draw: ImageDraw.ImageDraw, points: list[tuple[float, float]], color: str, dashed: bool,
          width: int = 2) -> None:
    """A polyline; dashed in 6-pixel strokes (Pillow draws only solid lines)."""
    if not dashed:
        draw.line(points, fill=color, width=width)
        return
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        length = math.hypot(x1 - x0, y1 - y0)
        for start in range(0, int(length), 12):
            a, b = start / length, min(1.0, (start + 6) / length)
            draw.line([(x0 + (x1 - x0) * a, y0 + (y1 - y0) * a), (x0 + (x1 - x0) * b, y0 + (y1 - y0) * b)],
                      fill=color, width=width)


@dataclass(frozen=True)
class _Frame:
    """Maps data to pixels inside one panel's box."""

    left: float
    top: float
    width: float
    height: float
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def at(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (self.left + (x - x0) / (x1 - x0) * self.width,
                self.top + self.height - (y - y0) / (y1 - y0) * self.height)


def _draw_panel(draw: ImageDraw.ImageDraw, panel: Panel, frame: _Frame, x_ticks: list[float],
                fonts: tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, ...]) -> None:
    """Grid, ticks, box, title, y label, lines (broken at nan) and a legend to the right."""
    font, bold = fonts
    ys = [y for s in panel.series for _, y in s.points if not math.isnan(y)]
    y_ticks = nice_ticks(min([0.0, *ys]), max(ys, default=1.0), 5)
    frame = _Frame(frame.left, frame.top, frame.width, frame.height, frame.x_range, (y_ticks[0], y_ticks[-1]))
    right, bottom = frame.left + frame.width, frame.top + frame.height
    for y in y_ticks:
        _, py = frame.at(frame.x_range[0], y)
        draw.line([(frame.left, py), (right, py)], fill="#e5e5e5")
        draw.text((frame.left - 8, py), _label(y), fill="black", font=font, anchor="rm")
    for x in x_ticks:
        px, _ = frame.at(x, y_ticks[0])
        draw.line([(px, bottom), (px, bottom + 5)], fill="black")
        draw.text((px, bottom + 8), _label(x), fill="black", font=font, anchor="mt")
    draw.rectangle([(frame.left, frame.top), (right, bottom)], outline="black")
    draw.text((frame.left, frame.top - 22), panel.title, fill="black", font=bold)
    draw.text((frame.left - 8, frame.top - 6), panel.y_label, fill="black", font=font, anchor="rs")
    for series in panel.series:
        runs: list[list[tuple[float, float]]] = [[]]
        for x, y in series.points:
            if math.isnan(y):
                runs.append([])
            else:
                runs[-1].append(frame.at(x, y))
        for run in runs:
            if len(run) > 1:
                _line(draw, run, series.color, series.dashed)
    for row, series in enumerate(panel.series):   # the legend, right of the panel
        lx, ly = right + 16, frame.top + 6 + row * 20
        _line(draw, [(lx, ly + 5), (lx + 28, ly + 5)], series.color, series.dashed, width=3)
        draw.text((lx + 36, ly + 5), series.label, fill="black", font=font, anchor="lm")


def render_panels(panels: Sequence[Panel], *, title: str, x_label: str, width: int = 1200,
                  panel_height: int = 260) -> bytes:
    """PNG bytes: the panels stacked on one shared x axis, each with y ticks, a title and a legend."""
    height = MARGIN_TOP + 10 + len(panels) * (panel_height + GAP) - GAP + AXIS_SPACE
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    fonts = (ImageFont.load_default(13), ImageFont.load_default(16))
    draw.text((MARGIN_LEFT, 12), title, fill="black", font=fonts[1])
    xs = [x for panel in panels for s in panel.series for x, _ in s.points]
    x_ticks = nice_ticks(min(xs, default=0.0), max(xs, default=1.0), 10)
    plot_width = width - MARGIN_LEFT - MARGIN_RIGHT
    for index, panel in enumerate(panels):
        top = MARGIN_TOP + 10 + index * (panel_height + GAP)
        frame = _Frame(MARGIN_LEFT, top, plot_width, panel_height, (x_ticks[0], x_ticks[-1]), (0.0, 1.0))
        _draw_panel(draw, panel, frame, x_ticks, fonts)
    draw.text((MARGIN_LEFT + plot_width / 2, height - 16), x_label, fill="black", font=fonts[0], anchor="mm")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _over_time(label: str, samples: Sequence[Sample], value: Callable[[Sample], float], color: str,
               dashed: bool = False) -> Series:
    return Series(label, tuple((s.t / 60, value(s)) for s in samples), color, dashed)


def _serving(stage: str, sample: Sample) -> float:
    return sample.replicas[stage]


def _target(stage: str, sample: Sample) -> float:
    return sample.target[stage]


def burst_chart(samples: Sequence[Sample], *, title: str, p95_target_s: float | None = None) -> bytes:
    """Queue length and in-flight jobs, the sliding-window p95 latency, and replicas per stage, over minutes."""
    latency = [_over_time("p95 of jobs finished in window", samples, lambda s: s.p95_s, PALETTE[1])]
    if p95_target_s is not None and samples:
        span = ((samples[0].t / 60, p95_target_s), (samples[-1].t / 60, p95_target_s))
        latency.append(Series(f"target p95 {p95_target_s:g} s", span, PALETTE[5], dashed=True))
    stages = list(samples[0].replicas) if samples else []
    serving = [_over_time(f"{name} serving", samples, functools.partial(_serving, name), PALETTE[i])
               for i, name in enumerate(stages)]
    wanted = [_over_time(f"{name} target", samples, functools.partial(_target, name), PALETTE[i], dashed=True)
              for i, name in enumerate(stages)]
    panels = (
        Panel("Jobs waiting in Redis and in flight in the graph", "jobs", (
            _over_time("Redis backlog (queue length)", samples, lambda s: s.backlog, PALETTE[0]),
            _over_time("in flight (at most max_inflight)", samples, lambda s: s.inflight, PALETTE[3]))),
        Panel("p95 latency, LPUSH to completed (sliding window)", "seconds", tuple(latency)),
        Panel("Replicas per stage", "replicas", (*serving, *wanted)),
    )
    return render_panels(panels, title=title, x_label="minutes")
