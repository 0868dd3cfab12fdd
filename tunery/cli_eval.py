"""`tunery eval`, `tunery compare` and `tunery metrics`: evaluation commands (registered on the main CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from tunery.cli_output import out
from tunery.errors import TuneryError

TASK = click.Choice(["summarization", "qa", "classification", "generation"])


def _eval_options(f):
    for opt in (click.option("--data", required=True, type=click.Path(dir_okay=False, exists=True),
                             help="Any supported dataset (the reference is the last model turn) or the seeds' CSV."),
                click.option("--task", type=TASK, help="Metrics to compute (default: inferred from the references)."),
                click.option("--limit", type=click.IntRange(min=1), help="Only the first N examples."),
                click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
                             help="Prompts per generate call (or requests in flight to a server)."),
                click.option("--max-output-tokens", type=click.IntRange(min=1), default=256, show_default=True),
                click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
                             help="0 is greedy decoding."),
                click.option("--server", envvar=None, help="Evaluate models on this tunery server (URL)."),
                click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a `metrics` dict."),
                click.option("--report", "report_path", type=click.Path(dir_okay=False),
                             help="Write the self-contained HTML report here (and the JSON next to it)."))[::-1]:
        f = opt(f)
    return f


def _finish(report: dict, as_json: bool, report_path: str | None) -> None:
    from tunery.eval import report as rp

    if report_path:
        json_path = Path(report_path).with_suffix(".json")
        rp.write(report, json_path, report_path)
    if as_json:
        doc = {k: v for k, v in report.items() if k not in ("rows", "fixed", "regressed")}
        if len(report["metrics"]) == 1:  # a single model: its metrics at the top level
            doc["metrics"] = next(iter(report["metrics"].values()))
            doc["details"] = next(iter(report.get("details", {}).values()), {})
        click.echo(json.dumps(doc))
        return
    out.print(f"{report['examples']} examples, task {report['task']}, "
              f"{' / '.join(f'{r} {s:.1f} s' for r, s in report['seconds'].items())}")
    out.print(escape(rp.table(report)))
    if "fixed" in report:
        out.print(f"fixed by tuning: {len(report['fixed'])}   regressed: {len(report['regressed'])}")
    if report_path:
        out.print(f"report: {Path(report_path).resolve()} (JSON: {Path(report_path).with_suffix('.json').resolve()})")


def _remote_options(f):
    f = click.option("--api-key", envvar="TUNERY_API_KEY", help="The server's API key, if it has one.")(f)
    return click.option("--server", envvar="TUNERY_SERVER", default="http://127.0.0.1:8080", show_default=True,
                        help="tunery server URL, for a job id or name.")(f)


def _remote(server: str, api_key: str | None):
    from tunery.client import Client

    return Client(server=server, api_key=api_key)


@click.command("eval")
@click.option("--model", "model_name", help="Base model name or alias, a `tune --local` run directory, or (with "
              "--server) a tuned model / endpoint name. Default: the default base model.")
@_eval_options
def eval_cmd(model_name, data, task, limit, batch_size, max_output_tokens, temperature, server, as_json, report_path):
    """Evaluate one model on a dataset with the seeds' metrics.

    Example: tunery eval --data examples/data/alerts_test.csv --model out/run --limit 50 --report eval.html"""
    from tunery.eval import report as rp
    from tunery.eval import run as er

    target = er.resolve_target(model_name, server)
    ev = er.run(data, {"model": target}, task, limit, batch_size, max_output_tokens, temperature)
    _finish(rp.build(ev, rp.read_curves(target.run_dir) if target.run_dir else None), as_json, report_path)


@click.command("compare")
@click.option("--base", "base_name", help="The model before tuning (default: the default base model).")
@click.option("--tuned", "tuned_name", required=True, help="The tuned model: a run directory, or a name on --server.")
@_eval_options
def compare_cmd(base_name, tuned_name, data, task, limit, batch_size, max_output_tokens, temperature, server, as_json,
                report_path):
    """Base against tuned on the same prompts and decoding; improvement per metric as the seeds compute it.

    Example: tunery compare --tuned out/run --data examples/data/alerts_test.csv --limit 50 --report report.html"""
    from tunery.eval import report as rp
    from tunery.eval import run as er

    tuned = er.resolve_target(tuned_name, server, "--tuned")
    base = (er.resolve_target(base_name, server, "--base") if (base_name or not tuned.spec)
            else er.Target(tuned.spec.name, tuned.spec))  # a local tuned model's own base
    ev = er.run(data, {"base": base, "tuned": tuned}, task, limit, batch_size, max_output_tokens, temperature)
    _finish(rp.build(ev, rp.read_curves(tuned.run_dir) if tuned.run_dir else None), as_json, report_path)


@click.command("metrics")
@click.argument("job_or_run")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Draw the curves to OUT.html or OUT.png.")
@click.option("--json", "as_json", is_flag=True, help="Print {metric name: [[step, value], ...]}.")
@_remote_options
def metrics_cmd(job_or_run, plot_path, as_json, server, api_key):
    """Loss and token-accuracy curves of a run directory or a server's tuning job.

    Example: tunery metrics out/run --plot curves.html"""
    from tunery.eval import report as rp

    if Path(job_or_run).is_dir():
        curves = rp.read_curves(job_or_run)
        if not curves:
            raise TuneryError(f"{job_or_run}: no metrics.jsonl with steps in this directory",
                              hint="pass the --output directory of `tunery tune --local`")
    else:
        c = _remote(server, api_key)
        curves = c.call("GET", c.name("tuningJobs", job_or_run) + "/metrics")["curves"]
    if plot_path:
        suffix = Path(plot_path).suffix.lower()
        if suffix == ".png":
            rp.curves_png(curves, str(job_or_run), plot_path)
        elif suffix in (".html", ".htm"):
            Path(plot_path).write_text(rp.curves_html(curves, str(job_or_run)))
        else:
            raise TuneryError(f"--plot: expected a file ending in .html or .png, found {plot_path!r}")
    if as_json:
        click.echo(json.dumps(curves))
        return
    for name, points in curves.items():
        out.print(f"{name:45s} {len(points):5d} points  first {points[0][1]:.4f}  last {points[-1][1]:.4f}")
    if plot_path:
        out.print(f"plot: {Path(plot_path).resolve()}")


@click.command("report")
@click.argument("job")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), help="Also save the HTML report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@_remote_options
def jobs_report_cmd(job, html_path, as_json, server, api_key):
    """The before/after evaluation of a job created with evaluationConfig.

    Example: tunery jobs report 1234567890123456789 --html report.html"""
    c = _remote(server, api_key)
    path = c.name("tuningJobs", job) + "/evaluationReport"
    report = c.call("GET", path)
    if html_path:
        Path(html_path).write_text(c.call_text("GET", path, params={"format": "html"}))
    _finish(report, as_json, None)
    if html_path and not as_json:

        out.print(f"report: {Path(html_path).resolve()}")
