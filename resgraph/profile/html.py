"""`resgraph profile --html`: one self-contained page (inline SVG and CSS, no script, nothing fetched).

An icicle chart: three rows of bars, stage -> block -> layer (the report's rows folded to depth 1,
2 and unfolded), each bar as wide as its time, in graph order, one hue per stage; the time of no
spec line (layout copies, the runtime's own, the call) in grey at the end of every row. Each bar's
<title> is its tooltip. Then the table of the report's rows.
"""
from __future__ import annotations

from html import escape

from .attribute import fold

WIDTH, ROW, GAP, LEFT = 1100, 34, 6, 70
GREY = "#9aa0a6"


def page(report: dict) -> str:
    """The whole page for a profile report (resgraph.profile.profile)."""
    r = report
    title = f"{r['model']} on {r['backend']} ({r['precision']}), batch {r['batch']}" + (f", {r['shape']}" if r["shape"] else "")
    summary = (f"{r['total_ms']:.3f} ms per run (median of {r['runs']}); {r['attributed']:.1%} attributed to spec lines; "
               f"per-layer sum / bench's median latency in the same run ({r['bench_latency_ms']:.3f} ms): "
               f"{r['sum_vs_bench']:.3f}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #202124; background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} p {{ margin: 4px 0 16px; color: #444; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #111; pointer-events: none; }}
svg .lvl {{ font-weight: 600; fill: #555; }}
table {{ border-collapse: collapse; margin-top: 20px; font-size: 12px; }}
th, td {{ padding: 2px 8px; text-align: right; border-bottom: 1px solid #e3e3e3; white-space: nowrap; }}
th:first-child, td:first-child, td.l, th.l {{ text-align: left; }}
td .bar {{ display: inline-block; height: 9px; background: #4e79a7; vertical-align: middle; }}
</style></head><body>
<h1>{escape(title)}</h1>
<p>{escape(summary)}</p>
{chart(report)}
{table(report)}
</body></html>
"""


def _hue(stages: list[str]) -> dict[str, int]:
    return {s: (i * 137) % 360 for i, s in enumerate(stages)}


def chart(report: dict) -> str:
    """The icicle chart as inline SVG."""
    total = report["total_ms"] or 1.0
    scale = (WIDTH - LEFT) / total
    levels = [("stage", fold(report["rows"], 1)), ("block", fold(report["rows"], 2)), ("layer", report["rows"])]
    hue = _hue([r["path"] for r in levels[0][1]])
    out = [f'<svg width="{WIDTH}" height="{3 * (ROW + GAP) + 24}" role="img">']
    for k, (name, rows) in enumerate(levels):
        y = k * (ROW + GAP)
        out.append(f'<text class="lvl" x="0" y="{y + ROW / 2 + 4}">{name}</text>')
        x = LEFT
        for r in rows:
            w = r["ms"] * scale
            h = hue[r["path"].split(".")[0]]
            fill = f"hsl({h},{62 - 8 * k}%,{46 + 10 * k}%)"
            out.append(_bar(x, y, w, fill, r["path"], f"{r['path']} ({r['line']}, {r['op']}): {r['ms']:.3f} ms, "
                                                     f"{r['ms'] / total:.1%}" + (f", fused: {r['fused']}" if r.get("fused") else "")))
            x += w
        for o in report["other"]:
            w = o["ms"] * scale
            out.append(_bar(x, y, w, GREY, o["name"], f"{o['name']}: {o['ms']:.3f} ms, {o['ms'] / total:.1%} (no spec line)"))
            x += w
    for t in _ticks(total):
        x = LEFT + t * scale
        if x > WIDTH - 40:   # no room for the label
            break
        out.append(f'<text x="{x:.1f}" y="{3 * (ROW + GAP) + 14}">{t:g} ms</text>')
    out.append("</svg>")
    return "\n".join(out)


def _bar(x: float, y: float, w: float, fill: str, label: str, tip: str) -> str:
    text = f'<text x="{x + 3:.1f}" y="{y + ROW / 2 + 4}">{escape(label)}</text>' if w > 7 * len(label) else ""
    return (f'<g><title>{escape(tip)}</title><rect x="{x:.2f}" y="{y}" width="{max(w, 0.0):.2f}" height="{ROW}" '
            f'fill="{fill}" stroke="#fff" stroke-width="0.5"/>{text}</g>')


def _ticks(total: float) -> list[float]:
    step = next(s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 1e4, 1e9)
                if total / s <= 10)
    return [i * step for i in range(int(total / step) + 1)]


def table(report: dict) -> str:
    """The rows (and the time of no spec line) as an HTML table, a bar per share."""
    left = {"path", "line", "op", "output", "", "fused"}
    head = "".join(f"<th{' class=l' if h in left else ''}>{h}</th>"
                   for h in ("path", "line", "op", "output", "MACs", "ms", "share", "", "GFLOP/s", "fused"))
    body = []
    for r in report["rows"]:
        gf = "" if r["gflops"] is None else f"{r['gflops']:,.1f}"
        body.append(f"<tr><td>{escape(r['path'])}</td><td class=l>{escape(r['line'])}</td><td class=l>{escape(r['op'])}</td>"
                    f"<td class=l>{escape(r['shape'])}</td><td>{r['macs']:,}</td><td>{r['ms']:.3f}</td>"
                    f"<td>{r['share']:.1%}</td><td class=l><span class=bar style=\"width:{300 * r['share']:.1f}px\"></span></td>"
                    f"<td>{gf}</td><td class=l>{escape(r['fused'] or '')}</td></tr>")
    for o in report["other"]:
        body.append(f"<tr><td><i>{escape(o['name'])}</i></td><td></td><td></td><td></td><td></td><td>{o['ms']:.3f}</td>"
                    f"<td>{o['share']:.1%}</td><td class=l><span class=bar style=\"width:{300 * o['share']:.1f}px;"
                    f"background:{GREY}\"></span></td><td></td><td></td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) + "\n</tbody></table>"
