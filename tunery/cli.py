"""The `tunery` command line: thin wrappers over library calls. Exit codes: 0 ok, 1 the data has errors, 2 bad usage."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from tunery import models, procenv
from tunery.config import BASE_LEARNING_RATE, DEFAULT_ADAPTER_SIZE, DEFAULT_BATCH_SIZE, LORA_TARGETS, LR_SCHEDULES
from tunery.data.formats import WRITERS, Columns, parse
from tunery.data.jsonl import read_records
from tunery.data.validate import DEFAULT_MAX_ISSUES, Limits, Report, validate
from tunery.cli_output import err, out
from tunery.errors import TuneryError


class _Group(click.Group):
    """Turns TuneryError into a clean message and exit code 2 instead of a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TuneryError as exc:
            err.print(f"[red]error:[/red] {escape(exc.message)}")
            if exc.hint:
                err.print(f"  hint: {escape(exc.hint)}")
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="tunery")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(quiet: bool) -> None:
    """tunery: supervised fine-tuning of open models, on your hardware, through the Vertex AI tuning API."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="tunery: %(message)s",
                        stream=sys.stderr)


def _columns_options(f):
    f = click.option("--output-column", default="output_text", show_default=True,
                     help="Output column (CSV, or JSONL with input/output keys).")(f)
    return click.option("--input-column", default="input_text", show_default=True,
                        help="Input column (CSV, or JSONL with input/output keys).")(f)


def _template_and_limits(base_model: str | None, max_length: int | None, tokens: bool):
    if not tokens:
        return None, None
    spec = models.resolve(base_model)
    limit, reason = spec.max_tokens, ("the base model's context" if spec.max_tokens < models.VERTEX_MAX_TOKENS
                                      else "Vertex's per-example limit")
    if max_length is not None:
        if max_length <= 0:
            raise click.BadParameter(f"expected a positive number of tokens, found {max_length}", param_hint="--max-length")
        if max_length < limit:
            limit, reason = max_length, "--max-length"
    return models.load_template(spec), Limits(limit, reason)


@cli.command("validate")
@click.argument("train", type=click.Path(dir_okay=False))
@click.option("--validation", type=click.Path(dir_okay=False), help="Validation file, checked too (and for overlap).")
@click.option("--base-model", help="Base model whose tokenizer and context length apply (default: the configured default).")
@click.option("--max-length", type=int, help="Training max length in tokens, if below the model's limit.")
@click.option("--no-tokens", is_flag=True, help="Schema checks only: skip tokenization (no token limits or counts).")
@_columns_options
@click.option("--max-issues", type=int, default=DEFAULT_MAX_ISSUES, show_default=True, help="Issues listed per file (all are counted).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: {valid, issues, stats, ...}.")
def validate_cmd(train, validation, base_model, max_length, no_tokens, input_column, output_column, max_issues, as_json):
    """Check a dataset before tuning: every problem with its line, JSON pointer and code.

    Exit status 0 when there is no error (warnings allowed), 1 otherwise.

    Example: tunery validate train.jsonl --validation val.jsonl
    """
    template, limits = _template_and_limits(base_model, max_length, not no_tokens)
    report = validate(train, validation, template=template, limits=limits, media=models.media_policy(models.resolve(base_model)),
                      columns=Columns(input_column, output_column), max_issues=max_issues)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
    else:
        _print_report(report)
    sys.exit(0 if report.valid else 1)


def _print_report(report: Report) -> None:
    for issue in report.issues:
        colour = "red" if issue.severity == "error" else "yellow"
        where = f"{issue.file}:{issue.line}" if issue.line is not None else issue.file
        ptr = f" {issue.pointer}" if issue.pointer else ""
        out.print(f"{escape(str(where))}{escape(ptr)}: [{colour}]{issue.severity}[/{colour}] "
                  f"[bold]{issue.code}[/bold] {escape(issue.message)}")
        if issue.hint:
            out.print(f"    hint: {escape(issue.hint)}", style="dim")
    for f in report.files:
        listed = len(f.issues)
        more = f" ({f.errors + f.warnings - listed} more not listed)" if f.errors + f.warnings > listed else ""
        mark = "[green]ok[/green]" if f.errors == 0 else "[red]invalid[/red]"
        stats = f.stats
        tokens = (f", {stats['totalTokenCount']:,} tokens ({stats['supervisedTokenFraction']:.0%} supervised)"
                  if "totalTokenCount" in stats else "")
        out.print(f"{mark} {escape(f.path)} ({f.kind}, {f.format or 'unknown format'}): {f.records:,} records, "
                  f"{f.examples:,} usable examples{tokens}; {f.errors:,} errors, {f.warnings:,} warnings{more}")


@cli.command("stats")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), default=1, show_default=True, help="Epochs, for billable token and step counts.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Examples per step, for tuningStepCount.")
@click.option("--base-model", help="Base model whose tokenizer counts tokens (default: the configured default).")
@click.option("--max-length", type=int, help="Training max length in tokens, for truncation counts.")
@_columns_options
@click.option("--json", "as_json", is_flag=True, help="Print Vertex's supervisedTuningDataStats object as JSON.")
def stats_cmd(file, epochs, batch_size, base_model, max_length, input_column, output_column, as_json):
    """Dataset statistics as Vertex reports them (token distributions from the base model's tokenizer).

    Example: tunery stats train.jsonl --epochs 3 --json
    """
    template, limits = _template_and_limits(base_model, max_length, True)
    report = validate(file, template=template, limits=limits, columns=Columns(input_column, output_column),
                      epochs=epochs, batch_size=batch_size, max_issues=0)
    stats = report.files[0].stats
    if as_json:
        click.echo(json.dumps(stats, ensure_ascii=False))
        return
    table = Table(title=f"{file}: {stats['tuningDatasetExampleCount']:,} examples", title_justify="left")
    for col in ("", "sum", "min", "mean", "median", "p5", "p95", "max"):
        table.add_column(col, justify="right" if col else "left")
    for key, label in (("userInputTokenDistribution", "input tokens"), ("userOutputTokenDistribution", "output tokens"),
                       ("userMessagePerExampleDistribution", "user messages")):
        if key in stats:
            d = stats[key]
            table.add_row(label, f"{d['sum']:,}", *(f"{d[k]:,.1f}" for k in ("min", "mean", "median", "p5", "p95", "max")))
    out.print(table)
    lines = [f"characters: {stats['totalTuningCharacterCount']:,}"]
    if "totalBillableTokenCount" in stats:
        lines.append(f"billable tokens ({epochs} epoch{'s' if epochs > 1 else ''}): {stats['totalBillableTokenCount']:,}; "
                     f"supervised share: {stats['supervisedTokenFraction']:.1%}")
    if "tuningStepCount" in stats:
        lines.append(f"steps: {stats['tuningStepCount']:,}")
    lines.append(f"truncated examples: {stats['totalTruncatedExampleCount']:,}")
    lines += [f"dropped: {r}" for r in stats["droppedExampleReasons"]]
    for line in lines:
        out.print(escape(line))


@cli.command("convert")
@click.argument("src", type=click.Path(dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--to", "fmt", type=click.Choice(sorted(WRITERS)), default="contents", show_default=True,
              help="Target format.")
@click.option("--skip-invalid", is_flag=True, help="Drop records with errors instead of refusing to convert.")
@_columns_options
def convert_cmd(src, dst, fmt, skip_invalid, input_column, output_column):
    """Rewrite a dataset (any supported format, JSONL or CSV) into one format.

    Nothing is written when a record has errors, unless --skip-invalid.

    Example: tunery convert sft_train_samples.jsonl train.jsonl --to contents
    """
    columns, writer = Columns(input_column, output_column), WRITERS[fmt]
    dst_path = Path(dst)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst_path.name}.", dir=dst_path.parent)
    written = skipped = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line, obj, issue in read_records(src, columns):
                ex, _, issues = (None, None, [issue]) if issue else parse(obj, line, columns)
                errors = [i for i in issues if i.severity == "error"]
                if ex is None:
                    for i in errors:
                        err.print(f"{escape(src)}:{i.line} {escape(i.pointer)}: [red]error[/red] [bold]{i.code}[/bold] {escape(i.message)}")
                    if not skip_invalid:
                        raise click.exceptions.Exit(1)
                    skipped += 1
                    continue
                f.write(json.dumps(writer(ex), ensure_ascii=False) + "\n")
                written += 1
        os.replace(tmp, dst_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    err.print(f"wrote {written:,} examples to {escape(dst)} ({fmt})" + (f"; skipped {skipped:,} invalid" if skipped else ""))


@cli.command("inspect")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--line", "line_no", type=int, help="Show the example on this line (default: the first).")
@click.option("--base-model", help="Base model whose chat template renders the example.")
@click.option("--max-length", type=int, help="Truncate as training would.")
@_columns_options
def inspect_cmd(file, line_no, base_model, max_length, input_column, output_column):
    """Show how an example is rendered for training: supervised tokens (those carrying loss) are highlighted.

    Example: tunery inspect train.jsonl --line 3
    """
    columns = Columns(input_column, output_column)
    for line, obj, issue in read_records(file, columns):
        if line_no is not None and line != line_no:
            continue
        ex, _, issues = (None, None, [issue]) if issue else parse(obj, line, columns)
        if ex is None:
            raise TuneryError(f"{file}:{line}: " + "; ".join(f"[{i.code}] {i.message}" for i in issues if i.severity == "error"))
        template = models.load_template(models.resolve(base_model))
        rendered = template.render(ex, max_length)
        out.print(f"{escape(file)}:{line} ({template.spec.name} template, {len(rendered.input_ids)} tokens, "
                  f"{rendered.num_supervised} supervised = [black on green]highlighted[/black on green])")
        for tid, label in zip(rendered.input_ids, rendered.labels):
            piece = escape(template.decode([tid]))
            out.print(f"[black on green]{piece}[/black on green]" if label != -100 else piece, end="")
        out.print()
        return
    raise TuneryError(f"{file}: no example" + (f" on line {line_no}" if line_no else ""))


@cli.command("tune")
@click.option("--local", is_flag=True, help="Run the tuning in this process (no server).")
@click.option("--train", "train_file", required=True, type=click.Path(dir_okay=False), help="Training dataset.")
@click.option("--validation", type=click.Path(dir_okay=False), help="Validation dataset (eval metrics during tuning).")
@click.option("--base-model", help="Registry name, Gemini alias, local model dir or hub id (default: the configured default).")
@click.option("--epochs", type=int, help="Passes over the data (default: chosen from the dataset size).")
@click.option("--learning-rate-multiplier", type=float, default=1.0, show_default=True, help=f"Times the base LoRA learning rate ({BASE_LEARNING_RATE:g}).")
@click.option("--learning-rate", type=float, help="Absolute peak learning rate (overrides the multiplier).")
@click.option("--adapter-size", type=int, default=DEFAULT_ADAPTER_SIZE, show_default=True, help="LoRA rank: 1, 2, 4, 8 or 16.")
@click.option("--lora-alpha", type=float, help="LoRA alpha; the update is scaled by alpha / rank (default: 2 x rank).")
@click.option("--lora-targets", type=click.Choice(list(LORA_TARGETS)), default="all-linear", show_default=True,
              help="Linear layers that get adapters: all of the decoder's, or the attention or MLP block's only.")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="linear", show_default=True,
              help="Learning rate after the warmup (5% of steps): linear or cosine decay to zero, or constant.")
@click.option("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, show_default=True, help="Examples per optimizer step.")
@click.option("--max-length", type=int, help="Tokens per example (default: the base model's limit).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--export-last-checkpoint-only", is_flag=True, help="Keep only the final checkpoint.")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Run directory (re-run to resume).")
@click.option("--save-interval-seconds", type=float, default=60.0, show_default=True,
              help="Save resume state at least this often (and at every checkpoint).")
@click.option("--early-stopping-patience", type=int,
              help="Stop after this many validation passes in a row without a better loss (needs --validation).")
@click.option("--method", type=click.Choice(["supervised", "preference"]), default="supervised", show_default=True,
              help="preference: DPO on preference pairs (Vertex's contents + completions, OpenAI's DPO format, or "
                   "prompt/chosen/rejected); continue a supervised run with --init-adapter RUN/adapter.")
@click.option("--beta", type=float, default=0.1, show_default=True,
              help="DPO's beta: how far the tuned model may move from where it started (preference only).")
@click.option("--init-adapter", type=click.Path(file_okay=False), help="Start from this adapter (a run's adapter/).")
def tune_cmd(local, train_file, validation, base_model, epochs, learning_rate_multiplier, learning_rate, adapter_size,
             lora_alpha, lora_targets, lr_schedule, batch_size, max_length, seed, export_last_checkpoint_only, output,
             save_interval_seconds, early_stopping_patience, method, beta, init_adapter):
    """Tune a LoRA adapter on a dataset. Re-running the same command on the same --output resumes after a crash.

    Example: tunery tune --local --train train.jsonl --validation val.jsonl --epochs 3 --output runs/alerts
    """
    if not local:
        raise TuneryError("tuning through a server is not available yet", hint="add --local to tune in this process")
    if not procenv.has_compute_env():  # the allocator is chosen at process start: start again with it, before
        # importing torch (2 s that the new process would pay again)
        os.execve(sys.executable, [sys.executable, "-m", "tunery.cli", *sys.argv[1:]], procenv.compute_env())
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from tunery.config import TuningConfig
    from tunery.train.engine import train

    cfg = TuningConfig(train=train_file, validation=validation, base_model=base_model, epochs=epochs,
                       learning_rate_multiplier=learning_rate_multiplier, learning_rate=learning_rate,
                       adapter_size=adapter_size, lora_alpha=lora_alpha, lora_targets=lora_targets,
                       lr_schedule=lr_schedule, batch_size=batch_size, max_length=max_length, seed=seed,
                       export_last_checkpoint_only=export_last_checkpoint_only, output=output,
                       save_interval_seconds=save_interval_seconds, early_stopping_patience=early_stopping_patience,
                       method=method, beta=beta, init_adapter=init_adapter)
    progress = Progress(TextColumn("[bold]tuning"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        TimeRemainingColumn(), console=err, transient=False)
    task = None

    def on_event(e: dict) -> None:
        nonlocal task
        if e["event"] == "start":
            err.print(f"{e['examples']:,} examples, {e['epochs']} epochs, {e['total_steps']} steps on {e['device']} "
                      f"({e['precision']})" + (f"; resuming from step {e['resumed_from']}" if e["resumed_from"] else ""))
            progress.start()
            task = progress.add_task("tune", total=e["total_steps"], completed=e["resumed_from"] or 0, info="")
        elif e["event"] == "step" and task is not None:
            info = f"loss {e['/train_total_loss']:.3f} " + (
                f"acc {e['/train_fraction_of_correct_next_step_preds']:.2f}" if method == "supervised"
                else f"reward acc {e['/train_reward_accuracy']:.2f}")
            if "/eval_total_loss" in e:
                info += f" | eval loss {e['/eval_total_loss']:.3f}"
            progress.update(task, completed=e["step"], info=info)
        elif e["event"] == "checkpoint":
            progress.console.print(f"checkpoint {e['checkpointId']} (epoch {e['epoch']}, step {e['step']}): {e['path']}")
        elif e["event"] == "stopped_early":
            progress.console.print(f"stopped early at step {e['step']}: {e['reason']}")
        elif e["event"] == "already_complete":
            err.print(f"{output} already holds a finished run ({e['steps']} steps)")

    try:
        result = train(cfg, on_event)
    finally:
        progress.stop()
    final = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items())
    chosen = result.default_checkpoint or {}
    out.print(f"adapter: {result.output / 'adapter'} (checkpoint {chosen.get('checkpointId')}: {chosen.get('reason')})"
              f"\nmetrics: {final}")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--merged", "merged_out", type=click.Path(file_okay=False),
              help="Write the base model with the adapter merged in (safetensors, Hugging Face layout).")
@click.option("--gguf", "gguf_out", type=click.Path(file_okay=False),
              help="Write adapter.gguf (a llama.cpp LoRA adapter), model.gguf (merged) and Ollama Modelfiles.")
@click.option("--checkpoint", help="Checkpoint id to export (default: the final adapter).")
def export_cmd(run_dir, merged_out, gguf_out, checkpoint):
    """Export a tuned model: a Hugging Face model directory, or GGUF files for llama.cpp and Ollama.

    Examples: tunery export runs/alerts --merged models/alerts-merged;
    tunery export runs/alerts --gguf models/alerts-gguf && ollama create alerts -f models/alerts-gguf/Modelfile
    """
    from tunery.train import checkpoints as ck

    if not merged_out and not gguf_out:
        raise TuneryError("nothing to export", hint="pass --merged DIR and/or --gguf DIR")
    run = Path(run_dir)
    adapter = run / ck.CHECKPOINTS_DIR / f"checkpoint-{checkpoint}" if checkpoint else run / ck.ADAPTER_DIR
    if not ck.is_complete(adapter):
        raise TuneryError(f"{adapter}: no complete adapter here", hint="finish the run first (re-run `tunery tune` to resume)")
    if merged_out:
        out.print(f"merged model written to {ck.export_merged(adapter, Path(merged_out))}")
    if gguf_out:
        from tunery.serve import gguf

        files = gguf.export(adapter, Path(gguf_out))
        out.print(f"GGUF files written to {gguf_out}: {files['adapter'].name} (LoRA adapter for {files['base']}), "
                  f"{files['merged'].name} (merged), Modelfile (ollama create NAME -f {files['modelfile']})")


@cli.command("env")
@click.option("--server", envvar="TUNERY_SERVER", default="http://127.0.0.1:8080", show_default=True,
              help="The tunery server the notebooks should reach.")
def env_cmd(server):
    """Print the shell exports that make the notebooks' literal `genai.Client(vertexai=True, project=P, location=L)`
    talk to a tunery server (no credentials object, no base_url): the SDK's base URL, and google-auth's metadata
    server, which tunery emulates. Works with a server started without --api-key.

    Example: eval "$(tunery env --server http://127.0.0.1:8080)"
    """
    from urllib.parse import urlsplit

    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(f"expected a URL like http://127.0.0.1:8080, found {server!r}", param_hint="--server")
    click.echo(f"export GOOGLE_VERTEX_BASE_URL={server.rstrip('/')}")
    click.echo(f"export GCE_METADATA_HOST={parts.netloc}")
    click.echo(f"export GCE_METADATA_IP={parts.netloc}")
    # google-auth tries these before the metadata server; with them set it would send a real Google token here.
    click.echo("unset GOOGLE_APPLICATION_CREDENTIALS")
    adc = Path(os.environ.get("CLOUDSDK_CONFIG", Path.home() / ".config" / "gcloud")) / "application_default_credentials.json"
    if adc.is_file():
        err.print(f"warning: {adc} exists and google-auth reads it before the metadata server, so your real Google "
                  "token would be sent to tunery; pass credentials explicitly instead (README, 'The service')")


def _client_options(f):
    from tunery.client import DEFAULT_SERVER

    for opt in (click.option("--server", envvar="TUNERY_SERVER", default=DEFAULT_SERVER, show_default=True, help="tunery server URL."),
                click.option("--project", default="local", show_default=True),
                click.option("--location", default="us-central1", show_default=True),
                click.option("--api-key", envvar="TUNERY_API_KEY", help="The server's API key, if it has one.")):
        f = opt(f)
    return f


def _client(server, project, location, api_key):
    from tunery.client import Client

    return Client(server=server, project=project, location=location, api_key=api_key)


@cli.group("jobs")
def jobs_group():
    """Tuning jobs on a tunery server (the `gcloud ai tuning-jobs` analog)."""


@jobs_group.command("create")
@click.option("--train", "train_file", required=True, help="Training dataset path (as the server sees it) or URI.")
@click.option("--validation", help="Validation dataset path or URI.")
@click.option("--base-model", default="gemini-2.0-flash-001", show_default=True)
@click.option("--epochs", type=int)
@click.option("--adapter-size", type=click.Choice(["1", "2", "4", "8", "16"]))
@click.option("--learning-rate-multiplier", type=float)
@click.option("--display-name", help="Tuned model display name.")
@click.option("--wait", is_flag=True, help="Poll until the job ends.")
@click.option("--workers", type=click.IntRange(1, 64), help="Data-parallel workers (a server with --executor ray).")
@_client_options
def jobs_create(train_file, validation, base_model, epochs, adapter_size, learning_rate_multiplier, display_name, wait,
                workers, server, project, location, api_key):
    """Create a tuning job. Example: tunery jobs create --train data/train.jsonl --epochs 3 --wait"""
    import time
    from tunery.api.wire.fields import ADAPTER_SIZE_NAMES

    c = _client(server, project, location, api_key)
    hp = {k: v for k, v in {"epochCount": epochs, "learningRateMultiplier": learning_rate_multiplier,
                            "adapterSize": ADAPTER_SIZE_NAMES[int(adapter_size)] if adapter_size else None}.items() if v is not None}
    spec = {"trainingDatasetUri": str(Path(train_file).resolve()) if Path(train_file).exists() else train_file,
            "hyperParameters": hp}
    if validation:
        spec["validationDatasetUri"] = str(Path(validation).resolve()) if Path(validation).exists() else validation
    body = {"baseModel": base_model, "supervisedTuningSpec": spec}
    if display_name:
        body["tunedModelDisplayName"] = display_name
    if workers:
        body["workers"] = workers
    job = c.call("POST", f"{c.place}/tuningJobs", json=body)
    out.print(f"{job['name']} {job['state']}")
    while wait and job["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"):
        time.sleep(3)
        job = c.call("GET", job["name"])
        meta = job.get("tuningJobMetadata", {})
        err.print(f"  {job['state']} {job.get('tuningJobState', '')} step {meta.get('completedStepCount', 0)}")
    if wait:
        _print_job(job)
        sys.exit(0 if job["state"] == "JOB_STATE_SUCCEEDED" else 1)


def _print_job(job: dict) -> None:
    out.print(f"{job['name']}\n  state: {job['state']}  base model: {job.get('baseModel', '')}  created: {job['createTime']}")
    if "error" in job:
        out.print(f"  error: {escape(job['error'].get('message', ''))}")
    if "tunedModel" in job:
        out.print(f"  tuned model: {job['tunedModel']['model']}\n  endpoint: {job['tunedModel']['endpoint']}")


@jobs_group.command("list")
@click.option("--state", help="Only jobs in this state, e.g. JOB_STATE_SUCCEEDED.")
@click.option("--json", "as_json", is_flag=True)
@_client_options
def jobs_list(state, as_json, server, project, location, api_key):
    """List tuning jobs, newest first. Example: tunery jobs list --state JOB_STATE_RUNNING"""
    c = _client(server, project, location, api_key)
    jobs, token = [], None
    while True:
        params = {"pageSize": 100, **({"pageToken": token} if token else {}), **({"filter": f'state="{state}"'} if state else {})}
        page = c.call("GET", f"{c.place}/tuningJobs", params=params)
        jobs += page.get("tuningJobs", [])
        token = page.get("nextPageToken")
        if not token:
            break
    if as_json:
        click.echo(json.dumps(jobs))
        return
    for j in jobs:
        out.print(f"{j['name'].rsplit('/', 1)[1]}  {j['state']:22s} {j.get('tunedModelDisplayName', '')}  {j['createTime']}")


@jobs_group.command("describe")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True)
@_client_options
def jobs_describe(job, as_json, server, project, location, api_key):
    """Show one job (id or full name). Example: tunery jobs describe 1234567890123456789"""
    c = _client(server, project, location, api_key)
    data = c.call("GET", c.name("tuningJobs", job))
    click.echo(json.dumps(data, indent=1)) if as_json else _print_job(data)


@jobs_group.command("cancel")
@click.argument("job")
@_client_options
def jobs_cancel(job, server, project, location, api_key):
    """Cancel a job. Example: tunery jobs cancel 1234567890123456789"""
    c = _client(server, project, location, api_key)
    c.call("POST", c.name("tuningJobs", job) + ":cancel")
    out.print(f"cancelling {c.name('tuningJobs', job)}")


@cli.group("models")
def models_group():
    """Tuned models on a tunery server."""


@models_group.command("list")
@_client_options
def models_list(server, project, location, api_key):
    """List tuned models. Example: tunery models list"""
    c = _client(server, project, location, api_key)
    for m in c.call("GET", f"{c.place}/models").get("models", []):
        endpoint = m["deployedModels"][0]["endpoint"] if m["deployedModels"] else "-"
        out.print(f"{m['name']}  {m['displayName']}  base {m['labels'].get('google-vertex-llm-tuning-base-model-id')}  {endpoint}")


@models_group.command("delete")
@click.argument("model")
@_client_options
def models_delete(model, server, project, location, api_key):
    """Delete a tuned model, its endpoints and its files. Example: tunery models delete 1234567890123456789"""
    c = _client(server, project, location, api_key)
    c.call("DELETE", c.name("models", model.split("@")[0]))
    out.print(f"deleted {c.name('models', model.split('@')[0])}")


@cli.command("generate")
@click.option("--model", "model_name", default="gemini-2.0-flash-001", show_default=True,
              help="An endpoint or tuned model (id or full name), or a base model name.")
@click.argument("prompt")
@click.option("--system", help="System instruction.")
@click.option("--max-output-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True)
@_client_options
def generate_cmd(model_name, prompt, system, max_output_tokens, temperature, server, project, location, api_key):
    """Generate with a base or tuned model on a server. Example: tunery generate --model ENDPOINT "Summarize: ..." """
    c = _client(server, project, location, api_key)
    target = c.model_path(model_name)
    body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}],
            "generationConfig": {"maxOutputTokens": max_output_tokens, "temperature": temperature}}
    if system:
        body["systemInstruction"] = {"role": "user", "parts": [{"text": system}]}
    r = c.call("POST", f"{target}:generateContent", json=body)
    out.print(escape("".join(p.get("text", "") for p in r["candidates"][0]["content"]["parts"])))


from tunery.cli_eval import compare_cmd, eval_cmd, jobs_report_cmd, metrics_cmd  # noqa: E402
from tunery.cli_jobs import jobs_logs_cmd  # noqa: E402
from tunery.cli_serve import serve_cmd  # noqa: E402

for _command in (eval_cmd, compare_cmd, metrics_cmd, serve_cmd):
    cli.add_command(_command)
jobs_group.add_command(jobs_report_cmd)
jobs_group.add_command(jobs_logs_cmd)


def main() -> None:
    procenv.progress_bars_only_on_a_terminal()
    cli(prog_name="tunery")


if __name__ == "__main__":
    main()
