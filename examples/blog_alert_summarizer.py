"""The blog "How to Fine-Tune a Gemini Model Using Supervised Tuning in Vertex AI", end to end with the `vertexai`
SDK (google-cloud-aiplatform), against tunery.

What differs from the blog:
- `vertexai.init(...)` gets `api_endpoint`, `api_transport="rest"` and a local credential.
- The blog's `GenerativeModel.tune_model(...)` and `GenerativeModel.get_tuning_job(...)` do not exist in the SDK;
  the real calls are `vertexai.tuning.sft.train(...)` (same arguments: `source_model`, `train_dataset`,
  `validation_dataset`, `epochs`, `learning_rate_multiplier`, `tuned_model_display_name`) and
  `sft.SupervisedTuningJob(name)`. Both are used here.
- `gsutil cp` copies into a local "bucket" directory; the training set is the blog's three examples plus the
  bundled alert sample (the blog says to aim for 100+), the validation set the bundled held-out alerts.
- `gcloud ai tuning-jobs describe|list` are shown as their tunery CLI equivalents (not run).

Run a server first (`tunery serve --allow-path out`), then: python examples/blog_alert_summarizer.py [--server URL]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

DATA = Path(__file__).parent / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--work", type=Path, default=Path("out/blog"))
    ap.add_argument("--train-examples", type=int, default=None, help="use the first N bundled alerts")
    ap.add_argument("--epochs", type=int, default=3, help="the blog's epochs=3")
    ap.add_argument("--poll-seconds", type=float, default=5)
    ap.add_argument("--skip-variants", action="store_true", help="do not run the conservative/aggressive jobs")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)

    import google.oauth2.credentials
    import vertexai
    from vertexai.generative_models import GenerativeModel
    from vertexai.tuning import sft

    def init() -> None:
        vertexai.init(project="your-project-id", location="us-central1", api_endpoint=args.server,
                      api_transport="rest", credentials=google.oauth2.credentials.Credentials(token="local-dev"))

    # prepare_data.py: training examples - each has an input and expected output
    training_examples = [
        {"messages": [
            {"role": "user", "content": "Summarize this alert: Cloud SQL instance 'prod-db-01' CPU utilization exceeded 90% for 15 minutes in us-central1."},
            {"role": "model", "content": "ALERT SUMMARY\nService: Cloud SQL\nInstance: prod-db-01\nRegion: us-central1\nIssue: CPU > 90% for 15 min\nSeverity: High\nAction: Investigate query load; consider scaling up machine type or optimizing slow queries."}]},
        {"messages": [
            {"role": "user", "content": "Summarize this alert: GKE cluster 'production' node pool 'default-pool' has 3 nodes in NotReady state in us-east1-b."},
            {"role": "model", "content": "ALERT SUMMARY\nService: GKE\nCluster: production\nRegion: us-east1-b\nIssue: 3 nodes in NotReady state\nSeverity: Critical\nAction: Check node health; verify kubelet status; review recent node events and system logs."}]},
        {"messages": [
            {"role": "user", "content": "Summarize this alert: Cloud Storage bucket 'user-uploads' egress exceeded 500 GB in the last hour from us-west1."},
            {"role": "model", "content": "ALERT SUMMARY\nService: Cloud Storage\nBucket: user-uploads\nRegion: us-west1\nIssue: Egress > 500 GB/hour\nSeverity: Medium\nAction: Review access logs for unusual download patterns; check if data exfiltration or legitimate traffic spike."}]},
    ]
    # ... more examples (aim for 100+ for good results)
    bundled = [json.loads(line) for line in (DATA / "alerts_train.jsonl").read_text(encoding="utf-8").splitlines()]
    training_examples += bundled[: args.train_examples]

    # system_instruction_examples.py: training data with system instructions
    training_with_system = {"messages": [
        {"role": "system", "content": "You are an infrastructure alert summarizer. Always respond in the exact format: ALERT SUMMARY followed by structured fields."},
        {"role": "user", "content": "Summarize this alert: Load balancer 'frontend-lb' backend service health check failures for 5 minutes."},
        {"role": "model", "content": "ALERT SUMMARY\nService: Load Balancer\nResource: frontend-lb\nIssue: Backend health check failures for 5 min\nSeverity: High\nAction: Check backend instance health; verify health check endpoint; review recent deployments."}]}
    training_examples.append(training_with_system)

    # Write to JSONL file
    with open("training_data.jsonl", "w") as f:
        for example in training_examples:
            f.write(json.dumps(example) + "\n")
    print(f"Wrote {len(training_examples)} training examples")
    shutil.copy(DATA / "alerts_val.jsonl", "validation_data.jsonl")

    # Upload training data (gsutil cp ... gs://your-bucket/fine-tuning/)
    bucket = Path("bucket/fine-tuning").resolve()
    bucket.mkdir(parents=True, exist_ok=True)
    shutil.copy("training_data.jsonl", bucket)
    shutil.copy("validation_data.jsonl", bucket)

    # create_tuning_job.py
    init()
    tuning_job = sft.train(
        source_model="gemini-1.5-flash-002",
        train_dataset=f"{bucket}/training_data.jsonl",
        # Optional: validation data for monitoring overfitting
        validation_dataset=f"{bucket}/validation_data.jsonl",
        # Number of training epochs
        epochs=args.epochs,
        # Learning rate multiplier (adjusts the base learning rate)
        learning_rate_multiplier=1.0,
        # Name for your tuned model
        tuned_model_display_name="alert-summarizer-v1",
    )
    print(f"Tuning job created: {tuning_job}")

    # monitor_tuning.py: check the status of a tuning job
    init()
    tuning_job = sft.SupervisedTuningJob(tuning_job.resource_name)  # the blog's GenerativeModel.get_tuning_job(ID)
    while not tuning_job.has_ended:
        time.sleep(args.poll_seconds)
        tuning_job.refresh()
    print(f"State: {tuning_job.state}")
    print(f"Create time: {tuning_job.create_time}")
    if tuning_job.state.name == "JOB_STATE_SUCCEEDED":
        print(f"Tuned model: {tuning_job.tuned_model_endpoint_name}")
    else:
        raise SystemExit(f"tuning ended in {tuning_job.state.name}: {tuning_job.error}")
    job_id = tuning_job.resource_name.rsplit("/", 1)[1]
    print(f"(gcloud ai tuning-jobs describe {job_id} --region=us-central1  ->  tunery jobs describe {job_id})")
    print("(gcloud ai tuning-jobs list --region=us-central1  ->  tunery jobs list)")

    # use_tuned_model.py
    init()
    tuned_model = GenerativeModel(tuning_job.tuned_model_endpoint_name)
    response = tuned_model.generate_content(
        'Summarize this alert: Pub/Sub subscription "order-processing" has 50,000 unacked messages, backlog growing for 30 minutes in us-central1.'
    )
    print(response.text)

    # evaluate_model.py: compare base model vs tuned model
    init()
    base_model = GenerativeModel("gemini-1.5-flash-002")
    tuned_model = GenerativeModel(tuning_job.tuned_model_endpoint_name)
    test_cases = [
        'Summarize this alert: Memorystore Redis instance "cache-01" memory usage at 95% in us-central1.',
        'Summarize this alert: Cloud Function "process-payment" error rate spiked to 25% in the last 10 minutes.',
        'Summarize this alert: VPN tunnel "site-to-cloud" has been down for 5 minutes.',
    ]
    for test in test_cases:
        print(f"\nInput: {test}")
        print("\nBase model:")
        base_response = base_model.generate_content(test)
        print(base_response.text)
        print("\nTuned model:")
        tuned_response = tuned_model.generate_content(test)
        print(tuned_response.text)
        print("-" * 80)

    # Streaming and token counting, as the SDK offers them (not in the blog, but what a user tries next).
    streamed = "".join(chunk.text for chunk in tuned_model.generate_content(test_cases[0], stream=True))
    print(f"Streamed {len(streamed)} characters; prompt tokens: {base_model.count_tokens(test_cases[0]).total_tokens}")

    # Choosing Hyperparameters: conservative and aggressive tuning
    if not args.skip_variants:
        for name, epochs, lrm in (("alert-summarizer-conservative", 2, 0.5), ("alert-summarizer-aggressive", 5, 2.0)):
            job = sft.train(source_model="gemini-1.5-flash-002", train_dataset=f"{bucket}/training_data.jsonl",
                            epochs=epochs, learning_rate_multiplier=lrm,
                            tuned_model_display_name=name)
            while not job.has_ended:
                time.sleep(args.poll_seconds)
                job.refresh()
            print(f"{name}: {job.state.name} -> {job.tuned_model_endpoint_name}")


if __name__ == "__main__":
    main()
