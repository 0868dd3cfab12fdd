"""`tunery serve`: the Vertex (and OpenAI-compatible) tuning API server, with its web console."""

from __future__ import annotations

from pathlib import Path

import click

from tunery.cli_output import err
from tunery.errors import TuneryError


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--home", type=click.Path(file_okay=False), help="Jobs, models and caches (default: $TUNERY_HOME or ~/.tunery).")
@click.option("--api-key", envvar="TUNERY_API_KEY", help="Require this key on every request (Bearer or x-goog-api-key).")
@click.option("--allow-path", multiple=True, type=click.Path(file_okay=False),
              help="Another directory datasets and base models may be read from (besides the home; repeatable). "
                   "The start directory is not readable unless given here.")
@click.option("--allow-http-datasets", is_flag=True, help="Accept http(s):// dataset URIs (public addresses only).")
@click.option("--allow-bucket", multiple=True, help="A gs:// or s3:// bucket datasets may come from (repeatable).")
@click.option("--max-concurrent-jobs", type=click.IntRange(min=1), default=1, show_default=True, help="Tuning jobs run at once.")
@click.option("--max-pending-jobs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Jobs waiting to start; a create beyond it gets 429 RESOURCE_EXHAUSTED.")
@click.option("--max-loaded-adapters", type=click.IntRange(min=1), default=8, show_default=True, help="Adapters kept in memory (LRU).")
@click.option("--max-generation-requests", type=click.IntRange(min=1), default=64, show_default=True,
              help="Generate, stream, count and chat calls in flight; one more gets 429 RESOURCE_EXHAUSTED.")
@click.option("--engine", type=click.Choice(["auto", "llamacpp", "torch"]), default="auto", show_default=True,
              help="What generates: llama.cpp (GGUF base and adapters; auto's choice on a CPU where installed) or "
                   "torch (transformers + PEFT; auto's choice on CUDA, and for Hugging Face model directories).")
@click.option("--max-request-mb", type=click.IntRange(min=1), default=32, show_default=True,
              help="Largest request body (uploads included); larger ones get 413.")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Where jobs run: local child processes "
              "(default) or a Ray cluster (config.toml: executor).")
@click.option("--ray-address", help="The Ray dashboard URL for --executor ray, e.g. http://127.0.0.1:8265 "
              "(config.toml: ray_address).")
@click.option("--ray-token", envvar="RAY_AUTH_TOKEN", help="Ray's auth token (RAY_AUTH_MODE=token); required for a "
              "non-loopback Ray address.")
@click.option("--ray-python", help="The interpreter Ray runs jobs with, one that imports tunery and ray (default: this "
              "server's; config.toml: ray_python). Checked when the server starts.")
@click.option("--artifacts", type=click.Path(file_okay=False), help="Directory of job run dirs (datasets, checkpoints, "
              "metrics, adapters); with Ray, storage every node mounts at this path (config.toml: artifacts). "
              "Default: HOME/jobs.")
@click.option("--allowed-host", multiple=True, help="A Host header name to answer besides loopback's and --host "
              "(repeatable; '*': any). Others get 400, against DNS rebinding.")
def serve_cmd(host, port, home, api_key, allow_path, allow_http_datasets, allow_bucket, max_concurrent_jobs,
              max_pending_jobs, max_loaded_adapters, max_generation_requests, engine, max_request_mb, executor, ray_address,
              ray_token, ray_python, artifacts, allowed_host):
    """Run the Vertex AI tuning API server (point the google-genai SDK's base_url at it).

    One server per home: a second one on the same home refuses to start and names the PID of the first.

    Example: tunery serve --port 8080 --allow-path ~/datasets
    """
    import uvicorn

    from tunery import locks
    from tunery.api.app import LOOPBACK, ServerSettings, create_app
    from tunery.config import home as default_home, load_settings
    from tunery.jobs.executors import ExecutorError

    if host not in LOOPBACK and not api_key:
        raise TuneryError(f"refusing to listen on {host} without an API key: anyone on the network could tune and "
                          "read models", hint="pass --api-key KEY (or TUNERY_API_KEY), or keep --host 127.0.0.1")
    if engine == "llamacpp":
        from tunery.serve.engines import llamacpp_installed

        if not llamacpp_installed():
            raise TuneryError("--engine llamacpp: llama-cpp-python is not installed",
                              hint="make install builds it (about 7 minutes on 2 cores); or pip install llama-cpp-python")
    root = Path(home).expanduser() if home else default_home()
    conf = load_settings(root)  # flags win over config.toml
    executor, ray_address = executor or conf.executor, ray_address or conf.ray_address
    artifacts = artifacts or conf.artifacts
    if executor == "ray" and not ray_address:
        raise TuneryError("--executor ray needs --ray-address (the Ray dashboard URL, e.g. http://127.0.0.1:8265)")
    settings = ServerSettings(home=root, api_key=api_key, allow_paths=tuple(Path(p).expanduser() for p in allow_path),
                              allow_http_datasets=allow_http_datasets, allow_buckets=tuple(allow_bucket),
                              max_concurrent_jobs=max_concurrent_jobs, max_pending_jobs=max_pending_jobs,
                              max_loaded_adapters=max_loaded_adapters, max_generation_requests=max_generation_requests,
                              engine=engine,
                              max_request_bytes=max_request_mb << 20,
                              executor=executor, ray_address=ray_address, ray_token=ray_token or None,
                              ray_python=ray_python or conf.ray_python,
                              artifacts=Path(artifacts).expanduser().resolve() if artifacts else None,
                              allowed_hosts=tuple(h for h in (host, *allowed_host) if h not in ("0.0.0.0", "::")))
    try:  # held until this process ends (the kernel drops it even on SIGKILL)
        locks.acquire(settings.home / locks.HOME_LOCK_FILE, f"the tunery home {settings.home}")
    except locks.Locked as exc:
        who, hint = (f"pid {exc.pid}", f"stop it (kill {exc.pid}) or pass another --home") if exc.pid else \
            ("its pid not written yet", "pass another --home")
        raise TuneryError(f"another tunery server ({who}) is running on the home {settings.home}; two servers on one "
                          "home would run the same jobs twice", hint=hint) from None
    try:
        app = create_app(settings)  # a Ray executor checks its address and token here
    except ExecutorError as exc:
        raise TuneryError(str(exc)) from None
    err.print(f"tunery serving the Vertex tuning API on http://{host}:{port} (home {settings.home}; datasets readable "
              f"under {', '.join(map(str, settings.allowed_roots))}; jobs run on {executor}); web console: "
              f"http://{host}:{port}/console")
    uvicorn.run(app, host=host, port=port, log_level="warning")
