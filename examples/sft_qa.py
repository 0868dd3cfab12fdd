"""The seed notebook "Supervised fine-tuning with Gemini 2.0 Flash for Q&A", against tunery.

The google-genai calls are the notebook's, unmodified. Only the `genai.Client(...)` construction differs, and
the data is the bundled SQuAD-style sample (examples/data/squad_*.csv). pandas is replaced by csv.

Run a server first (`tunery serve`), then: python examples/sft_qa.py [--server URL] [--epochs 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections import Counter
from pathlib import Path

import google.oauth2.credentials
from google import genai
from google.genai import types

DATA = Path(__file__).parent / "data"


def normalize_answer(s):
    """Lower text and remove extra whitespace, but preserve newlines (the notebook's normalisation)."""
    return " ".join(s.lower().split())


def f1_score_squad(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def read(name):
    with open(DATA / name, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--eval-examples", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("out/sft_qa"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    PROJECT_ID, LOCATION = "my-project", "us-central1"
    client = genai.Client(vertexai=True, project=PROJECT_ID, location=LOCATION,
                          credentials=google.oauth2.credentials.Credentials(token="local-dev"),
                          http_options=types.HttpOptions(base_url=args.server))

    random.seed(0)
    test_df = read("squad_test.csv")
    few_shot_examples = test_df[:3]
    test_df = test_df[3:][: args.eval_examples]
    few_shot_prompt = "".join(f"Context: {r['context']}\nQuestion: {r['question']}\nAnswer: {normalize_answer(r['answers'])}\n\n"
                              for r in few_shot_examples)
    systemInstruct = ("Answer the question with a concise extract from the given context. Do not add any additional "
                      "information, capital letters (only for names) or a punctuation mark in the end.\n\n\n"
                      f"Here are some examples: \n\n\n{few_shot_prompt}")

    def input_question(row):
        return ("\n\n **Below the question with context that you need to answer**" + "\n Context: " + row["context"]
                + "\n Question: " + row["question"])

    def get_predictions(question: str, model_version: str) -> str:
        response = client.models.generate_content(
            model=model_version, contents=question,
            config={"system_instruction": systemInstruct, "temperature": 0.3, "max_output_tokens": 24})
        return response.text or ""

    def calculate_em_and_f1(y_true, y_pred):
        em = sum(exact_match_score(p, t) for t, p in zip(y_true, y_pred)) / len(y_true)
        f1 = sum(f1_score_squad(p, t) for t, p in zip(y_true, y_pred)) / len(y_true)
        return em, f1

    base_model = "gemini-2.0-flash-001"
    y_true = [normalize_answer(r["answers"]) for r in test_df]
    em, f1 = calculate_em_and_f1(y_true, [normalize_answer(get_predictions(input_question(r), base_model)) for r in test_df])
    print(f"Before tuning: EM score: {em}  F1 score: {f1:.4f}")

    def df_to_jsonl(rows, output_file):
        with open(output_file, "w", encoding="utf-8") as f:
            for row in rows:
                jsonl_obj = {"systemInstruction": {"parts": [{"text": f"{systemInstruct}"}]},
                             "contents": [{"role": "user", "parts": [{"text": input_question(row)}]},
                                          {"role": "model", "parts": [{"text": normalize_answer(row["answers"])}]}]}
                f.write(json.dumps(jsonl_obj) + "\n")

    train_file, validation_file = args.work / "squad_train.jsonl", args.work / "squad_validation.jsonl"
    df_to_jsonl(read("squad_train.csv"), train_file)
    df_to_jsonl(read("squad_validation.csv"), validation_file)

    sft_tuning_job = client.tunings.tune(
        base_model=base_model,
        training_dataset={"gcs_uri": str(train_file.resolve())},
        config=types.CreateTuningJobConfig(adapter_size="ADAPTER_SIZE_EIGHT", epoch_count=args.epochs,
                                           tuned_model_display_name="gemini-flash-qa"),
    )
    tuning_job = client.tunings.get(name=sft_tuning_job.name)
    while tuning_job.state.name in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
        time.sleep(2)
        tuning_job = client.tunings.get(name=tuning_job.name)
    if tuning_job.state.name != "JOB_STATE_SUCCEEDED":
        raise SystemExit(f"tuning ended in {tuning_job.state.name}: {tuning_job.error}")
    print("experiment:", tuning_job.experiment)
    tuned_model = tuning_job.tuned_model.endpoint
    em, f1 = calculate_em_and_f1(y_true, [normalize_answer(get_predictions(input_question(r), tuned_model)) for r in test_df])
    print(f"After tuning: EM score: {em}  F1 score: {f1:.4f}")


if __name__ == "__main__":
    main()
