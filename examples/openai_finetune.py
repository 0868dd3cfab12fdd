"""Fine-tune and chat through the official `openai` SDK against a tunery server: the code you would write for
api.openai.com, with only `base_url` and `api_key` changed.

    tunery serve --port 8080                      # in another terminal (add --api-key KEY to require a key)
    python examples/openai_finetune.py --base-url http://127.0.0.1:8080/v1 --api-key local-dev

Upload the bundled alert-summary sample (converted to OpenAI's chat format), create a supervised fine-tuning job,
follow its events (loss per step), list its checkpoints, then chat with the tuned model and stream from a checkpoint.
The job is the same job the Vertex API and the web console show: its Vertex name is printed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from openai import OpenAI

DATA = Path(__file__).resolve().parent / "data"
PROMPT = "Summarize this alert: Cloud SQL instance 'orders-db01' CPU utilization exceeded 95% for 15 minutes in us-east1."


def to_openai_chat(src: Path, dst: Path, limit: int) -> Path:
    """The sample is in Vertex's legacy messages format (role "model"); OpenAI calls that role "assistant"."""
    rows = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    for row in rows:
        for m in row["messages"]:
            m["role"] = "assistant" if m["role"] == "model" else m["role"]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return dst


def follow(client: OpenAI, job_id: str, poll: float) -> object:
    """Print each new event (oldest first) until the job ends; return the ended job."""
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=1000).data  # newest first
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  [{event.type}] {event.message}", flush=True)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(poll)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", default="http://127.0.0.1:8080/v1", help="the server's /v1 URL")
    ap.add_argument("--api-key", default="local-dev", help="the server's --api-key (any string if it has none)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="base model (GET /v1/models lists them)")
    ap.add_argument("--train-examples", type=int, default=64)
    ap.add_argument("--val-examples", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8, help="examples per optimizer step")
    ap.add_argument("--work", default="out/openai_finetune", help="where the converted files are written")
    ap.add_argument("--poll-seconds", type=float, default=2.0)
    ap.add_argument("--max-tokens", type=int, default=96, help="tokens per answer")
    args = ap.parse_args()

    client = OpenAI(base_url=args.base_url, api_key=args.api_key)
    work = Path(args.work)
    train = to_openai_chat(DATA / "alerts_train.jsonl", work / "train.jsonl", args.train_examples)
    val = to_openai_chat(DATA / "alerts_val.jsonl", work / "val.jsonl", args.val_examples)

    with open(train, "rb") as f:
        train_file = client.files.create(file=f, purpose="fine-tune")
    with open(val, "rb") as f:
        val_file = client.files.create(file=f, purpose="fine-tune")
    print(f"Uploaded {train_file.id} ({train_file.bytes:,} bytes) and {val_file.id}")

    job = client.fine_tuning.jobs.create(
        model=args.model, training_file=train_file.id, validation_file=val_file.id, suffix="alerts", seed=42,
        metadata={"example": "openai_finetune"},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": args.epochs,
                                                                         "batch_size": args.batch_size}}})
    print(f"Fine-tuning job created: {job.id} ({job.status})")
    job = follow(client, job.id, args.poll_seconds)
    if job.status != "succeeded":
        print(f"Fine-tuning job {job.status}: {job.error}", file=sys.stderr)
        return 1
    print(f"Fine-tuned model: {job.fine_tuned_model}")

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data  # newest first
    for c in checkpoints:
        print(f"Checkpoint {c.fine_tuned_model_checkpoint}: step {c.step_number}, train loss {c.metrics.train_loss:.4f}")

    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": PROMPT}],
                                            temperature=0, max_tokens=args.max_tokens)
    print(f"Tuned model answer ({answer.usage.completion_tokens} tokens):\n{answer.choices[0].message.content}")

    print(f"Streaming from the first checkpoint ({checkpoints[-1].fine_tuned_model_checkpoint}):")
    stream = client.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, temperature=0,
                                            max_tokens=args.max_tokens, stream=True,
                                            messages=[{"role": "user", "content": PROMPT}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    vertex_id = job.id.removeprefix("ftjob-")
    print(f"The same job through the Vertex API: projects/openai/locations/us-central1/tuningJobs/{vertex_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
