"""The seed notebook "Supervised Fine Tuning with Gemini 2.0 Flash for Article Summarization", against tunery.

The google-genai calls are the notebook's, unmodified. Only the `genai.Client(...)` construction differs
(base_url and a local token), and the data is the bundled alert-summary set in the notebook's formats:
legacy `messages` JSONL for tuning, an input_text/output_text CSV for testing. pandas is replaced by csv.

Run a server first (`tunery serve`), then: python examples/sft_summarization.py [--server URL] [--epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import google.oauth2.credentials
from google import genai
from google.genai import types
from rouge_score import rouge_scorer

DATA = Path(__file__).parent / "data"


def create_tuning_samples(file_path):
    """The notebook's conversion: legacy messages -> Gemini contents."""
    instances = []
    with open(file_path, encoding="utf-8") as reader:
        for line in reader:
            obj = json.loads(line)
            instance = []
            for content in obj["messages"]:
                instance.append({"role": content["role"], "parts": [{"text": content["content"]}]})
            instances.append({"contents": instance})
    return instances


def save_jsonlines(file, instances):
    with open(file, "w", encoding="utf-8") as writer:
        for instance in instances:
            writer.write(json.dumps(instance) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--train-examples", type=int, default=120)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--eval-examples", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("out/sft_summarization"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    PROJECT_ID, REGION = "my-project", "us-central1"
    # The one difference from the notebook: where the API lives and a local credential.
    client = genai.Client(vertexai=True, project=PROJECT_ID, location=REGION,
                          credentials=google.oauth2.credentials.Credentials(token="local-dev"),
                          http_options=types.HttpOptions(base_url=args.server))

    # Step 3: datasets in the Gemini format
    train_instances = create_tuning_samples(DATA / "alerts_train.jsonl")[: args.train_examples]
    train_file = args.work / "sft_train_samples.jsonl"
    save_jsonlines(train_file, train_instances)
    val_file = args.work / "sft_val_samples.jsonl"
    save_jsonlines(val_file, create_tuning_samples(DATA / "alerts_val.jsonl"))
    with open(DATA / "alerts_test.csv", encoding="utf-8") as f:
        corpus = list(csv.DictReader(f))[: args.eval_examples]
    max_output_tokens = max(len(r["output_text"]) for r in corpus) // 4 + 1  # the notebook's 1 token = 4 chars
    config = {"temperature": 0.1, "max_output_tokens": max_output_tokens}
    base_model = "gemini-2.0-flash-001"

    # Step 6: evaluation before tuning (ROUGE, as the notebook computes it)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    def run_evaluation(model, corpus):
        scores = []
        for item in corpus:
            response = client.models.generate_content(model=model, contents=item["input_text"], config=config)
            if not (response and response.candidates and response.candidates[0].content.parts):
                continue
            scores.append(scorer.score(target=item["output_text"], prediction=response.text)["rougeL"].precision)
        return sum(scores) / max(len(scores), 1)

    # Step 5: test the base model
    print("Base model:", client.models.generate_content(model=base_model, contents=corpus[0]["input_text"], config=config).text)
    before = run_evaluation(base_model, corpus)
    print(f"Mean rougeL_precision before tuning: {before:.4f}")

    # Step 7: tune
    sft_tuning_job = client.tunings.tune(
        base_model=base_model,
        training_dataset={"gcs_uri": str(train_file.resolve())},
        config=types.CreateTuningJobConfig(tuned_model_display_name="alert-summarizer", epoch_count=args.epochs,
                                           validation_dataset=types.TuningValidationDataset(gcs_uri=str(val_file.resolve()))),
    )
    tuning_job = client.tunings.get(name=sft_tuning_job.name)
    running_states = ["JOB_STATE_PENDING", "JOB_STATE_RUNNING"]
    while tuning_job.state.name in running_states:
        print(".", end="", flush=True)
        tuning_job = client.tunings.get(name=tuning_job.name)
        time.sleep(2)
    print()
    if tuning_job.state.name != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"tuning ended in {tuning_job.state.name}: {tuning_job.error}")
    tuned_model = tuning_job.tuned_model.endpoint
    print("Tuned model experiment", tuning_job.experiment)
    print("Tuned model endpoint resource name:", tuned_model)

    # Step 8 and 9: the tuned model, and evaluation after tuning
    print("Tuned model:", client.models.generate_content(model=tuned_model, contents=corpus[0]["input_text"], config=config).text)
    print("Ground truth:", corpus[0]["output_text"])
    after = run_evaluation(tuned_model, corpus)
    print(f"Mean rougeL_precision after tuning: {after:.4f}")
    improvement = round((after - before) / before * 100, 2) if before else float("inf")
    print(f"Model tuning has improved the rougeL_precision by {improvement}%")


if __name__ == "__main__":
    main()
