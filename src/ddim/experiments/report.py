"""Reports: line plots drawn with PIL (matplotlib is not a dependency), and one document model,
a list of blocks, rendered as Markdown and as a self-contained HTML page.

Blocks are tuples: ("h1" | "h2" | "p", text), ("img", path, alt text), ("table", header, rows).
Text may hold `code`, **bold** and [label](href); HTML escapes everything else.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ddim.files import atomic_write, write_text

Series = dict[str, list[tuple[float, float]]]

COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127)]


# --- plots -------------------------------------------------------------------------------------


@dataclass
class Panel:
    """One plot: named series of (x, y) points on a log-x (or linear-x), linear-y frame."""

    series: Series
    title: str = ""
    xlabel: str = "S (log scale)"
    log_x: bool = True
    y_from_zero: bool = True
    colors: dict[str, tuple[int, int, int]] = field(default_factory=dict)


class _Axes:
    """Data → pixel mapping of one panel, W × H pixels, placed at (x_offset, 0)."""

    W, H, LEFT, RIGHT, TOP, BOTTOM = 640, 420, 60, 170, 24, 40

    def __init__(self, panel: Panel, x_offset: int = 0):
        self.panel, self.x_offset = panel, x_offset
        fx = (lambda x: math.log10(x)) if panel.log_x else (lambda x: x)
        self.fx = fx
        self.series = {k: [(x, y) for x, y in v if (x > 0 or not panel.log_x) and math.isfinite(y)]
                       for k, v in panel.series.items()}
        points = [p for v in self.series.values() for p in v] or [(1.0, 0.0)]
        xs, ys = [fx(x) for x, _ in points], [y for _, y in points]
        pad = 0.1 if panel.log_x else 0.05 * (max(xs) - min(xs) or 1)
        self.x0, self.x1 = min(xs) - pad, max(xs) + pad
        self.y0 = 0.0 if panel.y_from_zero else min(ys) - 0.05 * (max(ys) - min(ys) or 1)
        self.y1 = max(ys) + 0.05 * (max(ys) - self.y0 or 1)

    def xy(self, x: float, y: float) -> tuple[int, int]:
        """Pixel of data point (x, y)."""
        span_x, span_y = self.W - self.LEFT - self.RIGHT, self.H - self.TOP - self.BOTTOM
        px = self.LEFT + (self.fx(x) - self.x0) / (self.x1 - self.x0) * span_x
        py = self.H - self.BOTTOM - (y - self.y0) / (self.y1 - self.y0) * span_y
        return round(px) + self.x_offset, round(py)

    def pixels(self) -> dict[str, list[tuple[int, int]]]:
        """Every series' points in pixels."""
        return {k: [self.xy(x, y) for x, y in v] for k, v in self.series.items()}


def plot_points(panel: Panel) -> dict[str, list[tuple[int, int]]]:
    """Pixel coordinates of a panel's points, as `save_plot` draws them (for testing)."""
    return _Axes(panel).pixels()


def save_plot(panels: Panel | Sequence[Panel], path: str | Path) -> Path:
    """Draw one or more panels side by side, each with its legend, and save a PNG."""
    panels = [panels] if isinstance(panels, Panel) else list(panels)
    image = Image.new("RGB", (_Axes.W * len(panels), _Axes.H), "white")
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for i, panel in enumerate(panels):
        _draw_panel(draw, font, _Axes(panel, x_offset=i * _Axes.W))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def _draw_panel(draw: ImageDraw.ImageDraw, font, axes: _Axes) -> None:
    """Frame, ticks, title, lines with dots, and the legend of one panel."""
    xticks = sorted({x for v in axes.series.values() for x, _ in v})
    _draw_frame(draw, font, axes, xticks)
    for k, (name, points) in enumerate(axes.pixels().items()):
        color = axes.panel.colors.get(name, COLORS[k % len(COLORS)])
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for px, py in points:
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=color)
        left, top = axes.x_offset + axes.W - axes.RIGHT + 10, axes.TOP + 10 + 16 * k
        draw.line((left, top + 6, left + 20, top + 6), fill=color, width=2)
        draw.text((left + 25, top), name, fill="black", font=font)


def _draw_frame(draw: ImageDraw.ImageDraw, font, axes: _Axes, xticks: Sequence[float]) -> None:
    """Axes lines, a tick at each x (thinned when crowded) and six y ticks, titles."""
    x0, bottom, right = axes.x_offset + axes.LEFT, axes.H - axes.BOTTOM, axes.x_offset + axes.W
    right -= axes.RIGHT
    draw.line((x0, axes.TOP, x0, bottom, right, bottom), fill="black")
    last, room = -100, 24  # a label needs 24 px from the last one, more after a wide one
    for x in xticks:
        px, _ = axes.xy(x, axes.y0)
        draw.line((px, bottom, px, bottom + 4), fill="black")
        if px - last >= room:
            label = f"{x:g}"
            draw.text((px - 8, bottom + 6), label, fill="black", font=font)
            last, room = px, max(24, draw.textlength(label, font=font) + 6)
    for k in range(6):
        y = axes.y0 + (axes.y1 - axes.y0) * k / 5
        _, py = axes.xy(10**axes.x0 if axes.panel.log_x else axes.x0, y)
        draw.line((x0 - 4, py, x0, py), fill="black")
        draw.text((axes.x_offset + 5, py - 6), f"{y:.3g}", fill="black", font=font)
    draw.text(((x0 + right) // 2 - 40, axes.H - 16), axes.panel.xlabel, fill="black", font=font)
    draw.text((x0 + 5, 4), axes.panel.title, fill="black", font=font)


# --- documents ---------------------------------------------------------------------------------


def render_markdown(blocks: Sequence[tuple]) -> str:
    """The blocks as a Markdown document."""
    lines = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind == "p":
            lines += [rest[0], ""]
        elif kind == "img":
            lines += [f"![{rest[1]}]({rest[0]})", ""]
        elif kind == "table":
            header, rows = rest
            lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(lines)


def _inline_html(text: str) -> str:
    """Escape text; turn `code`, **bold** and [label](href) into tags."""
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', text)


def render_html(blocks: Sequence[tuple], title: str) -> str:
    """The blocks as one self-contained HTML page (images by relative path)."""
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_inline_html(rest[0])}</{kind}>")
        elif kind == "img":
            src, alt = html.escape(rest[0]), html.escape(rest[1])
            body.append(f'<p><img src="{src}" alt="{alt}"></p>')
        elif kind == "table":
            header, rows = rest
            cells = "".join(f"<th>{_inline_html(h)}</th>" for h in header)
            trs = [f"<tr>{cells}</tr>"] + [
                "<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
                for row in rows
            ]
            body.append("<table>" + "".join(trs) + "</table>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "img{image-rendering:pixelated;max-width:100%}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(folder: str | Path, blocks: Sequence[tuple], title: str, name="report") -> Path:
    """Write folder/NAME.md and folder/NAME.html from the same blocks; return the HTML's path."""
    folder = Path(folder)
    write_text(folder / f"{name}.md", render_markdown(blocks))
    return write_text(folder / f"{name}.html", render_html(blocks, title))
