"""Evaluation reports: one JSON document and a self-contained HTML page (inline SVG, no scripts, no network).

The JSON (`build`) holds everything; the HTML (`html`) renders it: the metric table base vs tuned with the seeds'
improvement, the examples the tuning fixed and the ones it regressed, length statistics, and the training curves
(loss and token accuracy, train and eval) when the tuned model comes from a run. `curves_html` / `curves_png` draw
the curves alone (`tunery metrics`).
"""

from __future__ import annotations

import html as _html
import json
import statistics
from pathlib import Path

from tunery.eval import metrics as mx
from tunery.eval.run import Evaluation
from tunery.train import metrics as tm

LISTED = 10  # fixed / regressed examples shown in the report
CHANGED = 1e-9  # a per-example score must move by more than this to count as fixed or regressed
CURVE_NAMES = (tm.TRAIN_LOSS, tm.TRAIN_ACCURACY, tm.EVAL_LOSS, tm.EVAL_ACCURACY)


# ---------------------------------------------------------------- data

def read_curves(run_dir: str | Path) -> dict[str, list[list[float]]]:
    """{metric name: [[step, value], ...]} from a run's metrics.jsonl (Vertex names)."""
    curves: dict[str, list[list[float]]] = {}
    for row in tm.read_metrics(run_dir):  # skips a torn last line (a run killed mid-write)
        for name in CURVE_NAMES:
            if name in row:
                curves.setdefault(name, []).append([row["step"], row[name]])
    return curves


def _lengths(texts: list[str]) -> dict[str, float]:
    words = [len(t.split()) for t in texts]
    ordered = sorted(words)
    return {"mean_words": round(statistics.fmean(words), 2), "median_words": statistics.median(words),
            "p90_words": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], "max_words": ordered[-1],
            "empty": sum(1 for t in texts if not t.strip())}


def build(ev: Evaluation, curves: dict | None = None) -> dict:
    """The report as one JSON-serialisable dict."""
    roles = list(ev.results)
    refs = [i.reference for i in ev.items]
    rows = []
    for k, item in enumerate(ev.items):
        row = {"line": item.line, "prompt": item.prompt.turns[-1].text, "reference": item.reference}
        for role in roles:
            row[role] = ev.results[role].predictions[k]
            row[f"{role}_score"] = ev.results[role].per_example[k]
        rows.append(row)
    report = {
        "data": ev.data, "task": ev.task, "examples": len(ev.items), "generation": ev.generation,
        "primary_metric": mx.PRIMARY[ev.task],
        "models": {r: ev.results[r].target.describe() for r in roles},
        "metrics": {r: ev.results[r].metrics for r in roles},
        "details": {r: ev.results[r].details for r in roles if ev.results[r].details},
        "lengths": {"reference": _lengths(refs)} | {r: _lengths(ev.results[r].predictions) for r in roles},
        "seconds": {r: round(ev.results[r].seconds, 3) for r in roles},
        "rows": rows,
    }
    if {"base", "tuned"} <= set(roles):
        report["improvement_percent"] = ev.improvement()
        delta = sorted(rows, key=lambda r: r["tuned_score"] - r["base_score"])
        report["fixed"] = [r for r in reversed(delta) if r["tuned_score"] - r["base_score"] > CHANGED]
        report["regressed"] = [r for r in delta if r["base_score"] - r["tuned_score"] > CHANGED]
    if curves:
        report["curves"] = curves
    return report


def write(report: dict, json_path: str | Path | None = None, html_path: str | Path | None = None) -> None:
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=1) + "\n")
    if html_path:
        Path(html_path).write_text(html(report))


# ---------------------------------------------------------------- text

def table(report: dict) -> str:
    """The metric table as plain text (what the CLI and the demo print)."""
    roles = list(report["metrics"])
    names = list(report["metrics"][roles[0]])
    head = f"{'metric':22s}" + "".join(f"{r:>12s}" for r in roles)
    if "improvement_percent" in report:
        head += f"{'improvement':>14s}"
    lines = [head]
    for n in names:
        line = f"{n:22s}" + "".join(f"{report['metrics'][r][n]:12.4f}" for r in roles)
        if "improvement_percent" in report:
            imp = report["improvement_percent"][n]
            line += f"{'n/a (base 0)':>14s}" if imp is None else f"{imp:+13.1f}%"
        lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------- HTML

_STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right;
vertical-align:top}th{background:#f3f3f3}td.t{text-align:left;white-space:pre-wrap;max-width:320px}
.up{color:#0a7d28}.down{color:#b3261e}h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em}
svg{background:#fff;border:1px solid #ddd;margin:0 1em 1em 0}.muted{color:#777}"""


def _e(text) -> str:
    return _html.escape(str(text))


def html(report: dict) -> str:
    roles = list(report["metrics"])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tunery evaluation</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>Evaluation: {_e(report['task'])}</h1>",
             f"<p>{report['examples']} examples from <code>{_e(report['data'])}</code>; "
             f"decoding {_e(json.dumps(report['generation']))}.</p>",
             "<table><tr><th>role</th><th>model</th><th>seconds</th></tr>"]
    for r in roles:
        parts.append(f"<tr><td class=t>{_e(r)}</td><td class=t>{_e(json.dumps(report['models'][r]))}</td>"
                     f"<td>{report['seconds'][r]}</td></tr>")
    parts.append("</table><h2>Metrics</h2><table><tr><th>metric</th>"
                 + "".join(f"<th>{_e(r)}</th>" for r in roles)
                 + ("<th>improvement</th>" if "improvement_percent" in report else "") + "</tr>")
    for n in report["metrics"][roles[0]]:
        cells = "".join(f"<td>{report['metrics'][r][n]:.4f}</td>" for r in roles)
        if "improvement_percent" in report:
            imp = report["improvement_percent"][n]
            cells += ("<td class=muted>n/a</td>" if imp is None else
                      f"<td class={'up' if imp > 0 else 'down' if imp < 0 else ''}>{imp:+.1f}%</td>")
        bold = " style='font-weight:600'" if n == report["primary_metric"] else ""
        parts.append(f"<tr{bold}><td class=t>{_e(n)}</td>{cells}</tr>")
    parts.append("</table>")
    for r, d in report.get("details", {}).items():
        parts.append(_classes_html(r, d))
    parts.append("<h2>Lengths (words)</h2><table><tr><th>text</th><th>mean</th><th>median</th><th>p90</th>"
                 "<th>max</th><th>empty</th></tr>")
    for k, v in report["lengths"].items():
        parts.append(f"<tr><td class=t>{_e(k)}</td><td>{v['mean_words']}</td><td>{v['median_words']}</td>"
                     f"<td>{v['p90_words']}</td><td>{v['max_words']}</td><td>{v['empty']}</td></tr>")
    parts.append("</table>")
    if "fixed" in report:
        for title, key in (("Fixed by tuning", "fixed"), ("Regressed by tuning", "regressed")):
            rows = report[key]
            parts.append(f"<h2>{title}: {len(rows)} of {report['examples']}</h2>")
            parts.append(_rows_html(rows[:LISTED], ["base", "tuned"]) if rows else "<p class=muted>none</p>")
    else:
        parts.append(f"<h2>Lowest-scoring examples</h2>")
        worst = sorted(report["rows"], key=lambda r: r[f"{roles[0]}_score"])[:LISTED]
        parts.append(_rows_html(worst, roles))
    if report.get("curves"):
        parts.append("<h2>Training curves</h2>" + curves_svg(report["curves"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _rows_html(rows: list[dict], roles: list[str]) -> str:
    out = ["<table><tr><th>line</th><th>prompt (last turn)</th><th>reference</th>"
           + "".join(f"<th>{_e(r)}</th>" for r in roles) + "</tr>"]
    for row in rows:
        out.append(f"<tr><td>{row['line']}</td><td class=t>{_e(row['prompt'][:600])}</td>"
                   f"<td class=t>{_e(row['reference'])}</td>"
                   + "".join(f"<td class=t>{_e(row[r])}<br><span class=muted>score {row[f'{r}_score']:.3f}</span></td>"
                             for r in roles) + "</tr>")
    return "".join(out) + "</table>"


def _classes_html(role: str, details: dict) -> str:
    out = [f"<h2>Classes ({_e(role)})</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th>"
           "<th>support</th></tr>"]
    for label, v in details["per_class"].items():
        out.append(f"<tr><td class=t>{_e(label)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
                   f"<td>{v['f1']:.3f}</td><td>{v['support']}</td></tr>")
    cm = details["confusion_matrix"]
    out.append("</table><table><tr><th>true \\ predicted</th>" + "".join(f"<th>{_e(c)}</th>" for c in cm["predicted"])
               + "</tr>")
    for label, counts in zip(cm["labels"], cm["matrix"]):
        out.append(f"<tr><th>{_e(label)}</th>" + "".join(f"<td>{c}</td>" for c in counts) + "</tr>")
    return "".join(out) + "</table>"


# ---------------------------------------------------------------- curves

_PANELS = (("Loss", tm.TRAIN_LOSS, tm.EVAL_LOSS), ("Token accuracy", tm.TRAIN_ACCURACY, tm.EVAL_ACCURACY))


def curves_svg(curves: dict) -> str:
    """Two line charts as the seed plots them: loss and token accuracy, train and eval series, against steps."""
    return "".join(_chart(title, [(name, curves[name]) for name in names if curves.get(name)])
                   for title, *names in _PANELS if any(curves.get(n) for n in names))


def _chart(title: str, series: list[tuple[str, list]], w: int = 480, h: int = 300) -> str:
    left, right, top, bottom = 56, 12, 28, 40
    xs = [p[0] for _, pts in series for p in pts]
    ys = [p[1] for _, pts in series for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    sx = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    sy = lambda y: top + (y1 - y) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    colours = ("#1f77b4", "#d62728")
    out = [f"<svg width='{w}' height='{h}' viewBox='0 0 {w} {h}'>",
           f"<text x='{w / 2}' y='18' text-anchor='middle' font-size='14'>{_e(title)}</text>",
           f"<line x1='{left}' y1='{h - bottom}' x2='{w - right}' y2='{h - bottom}' stroke='#888'/>",
           f"<line x1='{left}' y1='{top}' x2='{left}' y2='{h - bottom}' stroke='#888'/>",
           f"<text x='{w / 2}' y='{h - 6}' text-anchor='middle' font-size='12'>step</text>"]
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        out.append(f"<text x='{left - 4}' y='{sy(yv) + 4:.1f}' text-anchor='end' font-size='10'>{yv:.3g}</text>")
        xv = x0 + (x1 - x0) * k / 4
        out.append(f"<text x='{sx(xv):.1f}' y='{h - bottom + 14}' text-anchor='middle' font-size='10'>{xv:.0f}</text>")
    for (name, pts), colour in zip(series, colours):
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.6' points='{path}'>"
                   f"<title>{_e(name)}</title></polyline>")
        if len(pts) < 30:
            out += [f"<circle cx='{sx(x):.1f}' cy='{sy(y):.1f}' r='2.5' fill='{colour}'/>" for x, y in pts]
    for k, ((name, _), colour) in enumerate(zip(series, colours)):
        out.append(f"<text x='{w - right - 4}' y='{top + 14 + 14 * k}' text-anchor='end' font-size='11' "
                   f"fill='{colour}'>{_e(name)}</text>")
    return "".join(out) + "</svg>"


def curves_html(curves: dict, title: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{_e(title)}</h1>{curves_svg(curves)}</body></html>")


def curves_png(curves: dict, title: str, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in _PANELS if any(curves.get(n) for n in p[1:])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (name, *series) in zip(axes[0], panels):
        for s in series:
            if curves.get(s):
                ax.plot([p[0] for p in curves[s]], [p[1] for p in curves[s]], label=s, marker="." if
                        len(curves[s]) < 30 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
