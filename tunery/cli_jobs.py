"""`tunery jobs logs JOB`: a job's tuning output from the server, whichever executor ran it."""

from __future__ import annotations

import click

DEFAULT_SERVER = "http://127.0.0.1:8080"


@click.command("logs")
@click.argument("job")
@click.option("--server", envvar="TUNERY_SERVER", default=DEFAULT_SERVER, show_default=True, help="tunery server URL.")
@click.option("--project", default="my-project", show_default=True)
@click.option("--location", default="us-central1", show_default=True)
@click.option("--api-key", envvar="TUNERY_API_KEY", help="The server's API key, if it has one.")
def jobs_logs_cmd(job: str, server: str, project: str, location: str, api_key: str | None) -> None:
    """Print a job's tuning logs (local: its log.txt; Ray: each attempt's Ray job logs).
    Example: tunery jobs logs 1234567890123456789"""
    from tunery.client import Client

    c = Client(server=server, project=project, location=location, api_key=api_key)
    click.echo(c.call("GET", c.name("tuningJobs", job) + "/logs")["logs"], nl=False)
