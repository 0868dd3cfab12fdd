"""`make demo`: the main job on the bundled alert-summary sample, through the real `tunery` CLI.

validate -> catch errors -> convert -> stats -> inspect -> `tunery serve` + the seed summarization notebook
through the google-genai SDK (evaluate base, tune with LoRA on this CPU, evaluate tuned, ROUGE before/after) ->
`tunery metrics` and `tunery compare`: the loss curves and the before/after report (table + HTML) -> the web
console's page of the tuned job, served until you press Enter (at once when stdin is not a terminal, as in CI).
Each step prints the command it runs, so you can copy it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
OUT = REPO / "out" / "demo"


def tunery(*args: str, check: bool = True) -> int:
    print(f"\n$ tunery {' '.join(shlex.quote(a) for a in args)}", flush=True)
    code = subprocess.call([sys.executable, "-m", "tunery.cli", *args], cwd=REPO)
    if check and code != 0:
        sys.exit(f"demo step failed with exit code {code}")
    return code


def broken_copy(src: Path, dst: Path) -> None:
    """The sample with three typical mistakes, to show what validation catches before any compute is spent."""
    lines = src.read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[4])
    first["messages"][1]["role"] = "assistant "  # a stray space in the role
    second = json.loads(lines[9])
    second["messages"][1]["content"] = "  "  # an empty answer
    lines[4], lines[9] = json.dumps(first), json.dumps(second)
    lines[14] = lines[14][: len(lines[14]) // 2]  # a line cut in half
    lines.append(lines[20])  # a duplicate
    dst.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    # One home for every step and the server: the base model is converted to safetensors once, not once per home.
    os.environ["TUNERY_HOME"] = str(OUT / "home")
    sys.path.insert(0, str(REPO))
    from tunery.procenv import progress_bars_only_on_a_terminal

    progress_bars_only_on_a_terminal()  # for the notebook's own tqdm loop too, which the steps below start
    print("== 1. Validate the sample (the blog's alert-summary task, legacy `messages` format)")
    tunery("validate", str(DATA / "alerts_train.jsonl"), "--validation", str(DATA / "alerts_val.jsonl"))

    print("\n== 2. What validation catches: a copy with a bad role, an empty answer, a cut line and a duplicate")
    broken = OUT / "alerts_train_broken.jsonl"
    broken_copy(DATA / "alerts_train.jsonl", broken)
    code = tunery("validate", str(broken), check=False)
    print(f"(exit status {code}: errors found, nothing would be trained)")

    print("\n== 3. Convert to the Gemini `contents` format (the seed notebook's conversion step)")
    for name in ("alerts_train", "alerts_val"):
        tunery("convert", str(DATA / f"{name}.jsonl"), str(OUT / f"{name}.contents.jsonl"), "--to", "contents")
    tunery("convert", str(DATA / "alerts_test.csv"), str(OUT / "alerts_test.contents.jsonl"), "--to", "contents")

    print("\n== 4. Vertex-style dataset statistics for 3 epochs (tokens from the base model's tokenizer)")
    tunery("stats", str(OUT / "alerts_train.contents.jsonl"), "--epochs", "3", "--batch-size", "8",
           "--base-model", "gemini-2.0-flash-001")

    print("\n== 5. How one example is rendered for training (highlighted tokens carry the loss)")
    tunery("inspect", str(OUT / "alerts_train.contents.jsonl"), "--line", "1")

    print("\n== 6. Start `tunery serve` and run the seed summarization notebook through the google-genai SDK")
    server, url = serve_and_run_notebook()
    try:
        print("\n== 7. The before/after report: base against the tuned run on all held-out alerts, batched, greedy")
        run = max((OUT / "home" / "jobs").glob("*/run/manifest.json"), key=lambda p: p.stat().st_mtime).parent
        tunery("metrics", str(run.relative_to(REPO)), "--plot", str((OUT / "curves.png").relative_to(REPO)))
        tunery("compare", "--tuned", str(run.relative_to(REPO)), "--data", "examples/data/alerts_test.csv",
               "--task", "summarization", "--max-output-tokens", "128", "--report", str((OUT / "report.html").relative_to(REPO)))
        print(f"\nDone. Files are in {OUT.relative_to(REPO)}/")
        # the job directory is named by the job id (home/jobs/<id>/run)
        print(f"\nThe tuned job in the web console: {url}/console/jobs/{run.parent.name}")
        if sys.stdin.isatty():
            input("The server stays up for the console; press Enter to stop it. ")
    finally:
        server.terminate()
        server.wait(timeout=30)
        print("(server stopped)")


def serve_and_run_notebook() -> tuple[subprocess.Popen, str]:
    """The server on a free loopback port with its own home under out/demo and the unmodified notebook code against
    it (base vs tuned on held-out alerts, ROUGE before and after). Returns the running server and its URL; the
    caller stops it."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = OUT / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TUNERY_HOME": str(home)}
    work = OUT / "notebook"  # where the notebook writes its datasets: the server may read only the home and this
    work.mkdir(parents=True, exist_ok=True)
    print(f"$ tunery serve --port {port} --home {home.relative_to(REPO)} --allow-path {work.relative_to(REPO)}")
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(home),
                               "--allow-path", str(work)], cwd=REPO, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{url}/v1beta1/projects/p/locations/l/tuningJobs", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        cmd = [sys.executable, "examples/sft_summarization.py", "--server", url, "--train-examples", "120",
               "--epochs", "2", "--eval-examples", "10", "--poll-seconds", "2", "--keep-resources", "--work", str(work)]
        print(f"$ {' '.join(cmd[1:])}", flush=True)
        code = subprocess.call(cmd, cwd=REPO, env=env)
        if code != 0:
            sys.exit(f"the notebook flow failed with exit code {code}")
    except BaseException:
        server.terminate()
        server.wait(timeout=30)
        print("(server stopped)")
        raise
    return server, url


if __name__ == "__main__":
    main()
