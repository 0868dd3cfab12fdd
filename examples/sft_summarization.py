"""The seed notebook "Supervised Fine Tuning with Gemini 2.0 Flash for Article Summarization", every cell, in order,
against tunery.

What differs from the notebook, and nothing else:
- client construction: `vertexai.init(...)` gets `api_endpoint`, `api_transport="rest"` and a local credential, and
  `genai.Client(...)` gets `http_options` and the same credential. With `--zero-change` (and the three environment
  variables `tunery env` prints) the notebook's literal `genai.Client(vertexai=True, project=..., location=...)` is used.
- `gsutil` cells: the bucket is a local directory (the server reads datasets only under its allowed roots), and the
  public WikiLingua files are the bundled alert-summary sample in the same formats (legacy `messages` JSONL for
  tuning, an `input_text`/`output_text` CSV for testing).
- `fig.show()` writes the figure to `loss.html`; `corpus[:100]` takes `--eval-examples`; the polling loop sleeps
  `--poll-seconds` (the notebook's 10 by default); `--epochs` adds `epoch_count` to the tune call when given;
  `--keep-resources` sets the cleanup cells' `delete_*` flags to False (the demo keeps its tuned endpoint).

Run a server first (`tunery serve --allow-path out`), then: python examples/sft_summarization.py [--server URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

DATA = Path(__file__).parent / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--work", type=Path, default=Path("out/sft_summarization"))
    ap.add_argument("--train-examples", type=int, default=None, help="use the first N training examples")
    ap.add_argument("--eval-examples", type=int, default=100, help="the notebook's corpus[:100]")
    ap.add_argument("--epochs", type=int, default=None, help="epoch_count (default: the server's choice)")
    ap.add_argument("--poll-seconds", type=float, default=10)
    ap.add_argument("--zero-change", action="store_true", help="the literal genai.Client(...); needs `tunery env`")
    ap.add_argument("--keep-resources", action="store_true",
                    help="set the cleanup cells' delete_experiments/delete_endpoint/delete_bucket to False")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)  # the notebook works in its current directory

    # Step1: Import Libraries
    import time

    from google import genai

    # For extracting vertex experiment details.
    from google.cloud import aiplatform
    from google.cloud.aiplatform.metadata import context
    from google.cloud.aiplatform.metadata import utils as metadata_utils
    from google.genai import types

    # For data handling.
    import jsonlines
    import pandas as pd

    # For visualization.
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    # For evaluation metric computation.
    from rouge_score import rouge_scorer
    from tqdm import tqdm

    # For fine tuning Gemini model.
    import vertexai

    # Step2: Set Google Cloud project information and initialize Vertex AI and Gen AI SDK
    PROJECT_ID = "my-project"  # @param {type:"string"}
    REGION = "us-central1"  # @param {type:"string"}

    import google.oauth2.credentials  # tunery: the one difference, where the API lives and a local credential

    credentials = google.oauth2.credentials.Credentials(token="local-dev")
    vertexai.init(project=PROJECT_ID, location=REGION, api_endpoint=args.server, api_transport="rest",
                  credentials=credentials)
    if args.zero_change:
        client = genai.Client(vertexai=True, project=PROJECT_ID, location=REGION)
    else:
        client = genai.Client(vertexai=True, project=PROJECT_ID, location=REGION, credentials=credentials,
                              http_options=types.HttpOptions(base_url=args.server))

    # Step3 [a]: Create a Cloud Storage bucket
    BUCKET_NAME = "bucket"  # @param {type:"string"}
    BUCKET_URI = str(Path(BUCKET_NAME).resolve())
    os.makedirs(BUCKET_URI, exist_ok=True)  # ! gsutil mb -l {LOCATION} -p {PROJECT_ID} {BUCKET_URI}

    # Step3 [b]: Upload tuning data to Cloud Storage
    # !gsutil cp gs://github-repo/generative-ai/gemini/tuning/summarization/wikilingua/* .
    for src, dst in (("alerts_train.jsonl", "sft_train_samples.jsonl"), ("alerts_val.jsonl", "sft_val_samples.jsonl"),
                     ("alerts_test.csv", "sft_test_samples.csv")):
        shutil.copy(DATA / src, dst)
    if args.train_examples:
        lines = Path("sft_train_samples.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        Path("sft_train_samples.jsonl").write_text("".join(lines[: args.train_examples]), encoding="utf-8")

    def save_jsonlines(file, instances):
        """
        Saves a list of json instances to a jsonlines file.
        """
        with jsonlines.open(file, mode="w") as writer:
            writer.write_all(instances)

    def create_tuning_samples(file_path):
        """
        Creates tuning samples from a file.
        """
        with jsonlines.open(file_path) as reader:
            instances = []
            for obj in reader:
                instance = []
                for content in obj["messages"]:
                    instance.append(
                        {"role": content["role"], "parts": [{"text": content["content"]}]}
                    )
                instances.append({"contents": instance})
        return instances

    train_file = "sft_train_samples.jsonl"
    train_instances = create_tuning_samples(train_file)
    print(len(train_instances))
    # save the training instances to jsonl file
    save_jsonlines(train_file, train_instances)

    val_file = "sft_val_samples.jsonl"
    val_instances = create_tuning_samples(val_file)
    print(len(val_instances))
    # save the validation instances to jsonl file
    save_jsonlines(val_file, val_instances)

    # Copy the tuning and evaluation data to your bucket.
    for name, sub in ((train_file, "train"), (val_file, "val")):  # !gsutil cp {file} {BUCKET_URI}/{sub}/
        os.makedirs(f"{BUCKET_URI}/{sub}", exist_ok=True)
        shutil.copy(name, f"{BUCKET_URI}/{sub}/")

    # Step3 [c]: Test dataset
    testing_data_path = "sft_test_samples.csv"
    test_data = pd.read_csv(testing_data_path)
    print(test_data.head())
    print(test_data.loc[0, "input_text"])
    # Article summary stats
    stats = test_data["output_text"].apply(len).describe()
    print(stats)
    print(f"Total `{stats['count']}` test records")
    print(f"Average length is `{stats['mean']}` and max is `{stats['max']}` characters")
    print("\nConsidering 1 token = 4 chars")
    # Get ceil value of the tokens required.
    tokens = (stats["max"] / 4).__ceil__()
    print(f"\nSet max_token_length = stats['max']/4 = {stats['max']/4} ~ {tokens} characters")
    print(f"\nLet's keep output tokens upto `{tokens}`")
    # Maximum number of tokens that can be generated in the response by the LLM.
    max_output_tokens = tokens

    # Step4: Initailize model
    base_model = "gemini-2.0-flash-001"

    # Step5: Test the Gemini model
    test_doc = test_data.loc[0, "input_text"]
    prompt = f"""
{test_doc}
"""
    config = {
        "temperature": 0.1,
        "max_output_tokens": max_output_tokens,
    }
    response = client.models.generate_content(
        model=base_model,
        contents=prompt,
        config=config,
    ).text
    print(response)
    # Ground truth
    print(test_data.loc[0, "output_text"])

    # Step6: Evaluation before model tuning
    # Convert the pandas dataframe to records (list of dictionaries).
    corpus = test_data.to_dict(orient="records")
    # Check number of records.
    print(len(corpus))

    # Create rouge_scorer object for evaluation
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)

    def run_evaluation(model, corpus: list[dict]) -> pd.DataFrame:
        """Runs evaluation for the given model and data."""
        records = []
        for item in tqdm(corpus):
            document = item.get("input_text")
            summary = item.get("output_text")

            # Catch any exception that occur during model evaluation.
            try:
                response = client.models.generate_content(
                    model=model,
                    contents=document,
                    config=config,
                )

                # Check if response is generated by the model, if response is empty then continue to next item.
                if not (
                    response
                    and response.candidates
                    and response.candidates[0].content.parts
                ):
                    print(
                        f"\nModel has blocked the response for the document.\n Response: {response}\n Document: {document}"
                    )
                    continue

                # Calculates the ROUGE score for a given reference and generated summary.
                scores = scorer.score(target=summary, prediction=response.text)

                # Append the results to the records list
                records.append(
                    {
                        "document": document,
                        "summary": summary,
                        "generated_summary": response.text,
                        "scores": scores,
                        "rouge1_precision": scores.get("rouge1").precision,
                        "rouge1_recall": scores.get("rouge1").recall,
                        "rouge1_fmeasure": scores.get("rouge1").fmeasure,
                        "rouge2_precision": scores.get("rouge2").precision,
                        "rouge2_recall": scores.get("rouge2").recall,
                        "rouge2_fmeasure": scores.get("rouge2").fmeasure,
                        "rougeL_precision": scores.get("rougeL").precision,
                        "rougeL_recall": scores.get("rougeL").recall,
                        "rougeL_fmeasure": scores.get("rougeL").fmeasure,
                    }
                )
            except AttributeError as attr_err:
                print("Attribute Error:", attr_err)
                continue
            except Exception as err:
                print("Error:", err)
                continue
        return pd.DataFrame(records)

    # Batch of test data.
    corpus_batch = corpus[: args.eval_examples]
    # Run evaluation using loaded model and test data corpus
    evaluation_df = run_evaluation(base_model, corpus_batch)
    print(evaluation_df.head())
    evaluation_df_stats = evaluation_df.dropna().describe()
    # Statistics of the evaluation dataframe.
    print(evaluation_df_stats)
    print("Mean rougeL_precision is", evaluation_df_stats.rougeL_precision["mean"])

    # Step7: Fine-tune the Model
    tuned_model_display_name = "alert-summarizer"  # @param {type:"string"}
    training_dataset = {
        "gcs_uri": f"{BUCKET_URI}/train/sft_train_samples.jsonl",
    }
    validation_dataset = types.TuningValidationDataset(
        gcs_uri=f"{BUCKET_URI}/val/sft_val_samples.jsonl"
    )
    # Tune a model using `tune` method.
    sft_tuning_job = client.tunings.tune(
        base_model=base_model,
        training_dataset=training_dataset,
        config=types.CreateTuningJobConfig(
            tuned_model_display_name=tuned_model_display_name,
            validation_dataset=validation_dataset,
            **({"epoch_count": args.epochs} if args.epochs else {}),
        ),
    )
    # Get the tuning job info.
    tuning_job = client.tunings.get(name=sft_tuning_job.name)
    print(tuning_job)

    # Wait for job completion
    running_states = [
        "JOB_STATE_PENDING",
        "JOB_STATE_RUNNING",
    ]
    while tuning_job.state.name in running_states:
        print(".", end="", flush=True)
        tuning_job = client.tunings.get(name=tuning_job.name)
        time.sleep(args.poll_seconds)
    print()

    tuned_model = tuning_job.tuned_model.endpoint
    experiment_name = tuning_job.experiment
    print("Tuned model experiment", experiment_name)
    print("Tuned model endpoint resource name:", tuned_model)

    # Step7 [a]: Tuning and evaluation metrics
    # Locate Vertex AI Experiment and Vertex AI Experiment Run
    experiment = aiplatform.Experiment(experiment_name=experiment_name)
    filter_str = metadata_utils._make_filter_string(
        schema_title="system.ExperimentRun",
        parent_contexts=[experiment.resource_name],
    )
    experiment_run = context.Context.list(filter_str)[0]

    # Read data from Tensorboard
    tensorboard_run_name = f"{experiment.get_backing_tensorboard_resource().resource_name}/experiments/{experiment.name}/runs/{experiment_run.name.replace(experiment.name, '')[1:]}"
    tensorboard_run = aiplatform.TensorboardRun(tensorboard_run_name)
    metrics = tensorboard_run.read_time_series_data()

    def get_metrics(metric: str = "/train_total_loss"):
        """
        Get metrics from Tensorboard.

        Args:
          metric: metric name, eg. /train_total_loss or /eval_total_loss.
        Returns:
          steps: list of steps.
          steps_loss: list of loss values.
        """
        loss_values = metrics[metric].values
        steps_loss = []
        steps = []
        for loss in loss_values:
            steps_loss.append(loss.scalar.value)
            steps.append(loss.step)
        return steps, steps_loss

    # Get Train and Eval Loss
    train_loss = get_metrics(metric="/train_total_loss")
    eval_loss = get_metrics(metric="/eval_total_loss")
    print(f"Train loss: {len(train_loss[0])} steps, {train_loss[1][0]:.4f} -> {train_loss[1][-1]:.4f}")
    print(f"Eval loss: {len(eval_loss[0])} points")

    # Step7 [b]: Plot the metrics
    fig = make_subplots(
        rows=1, cols=2, shared_xaxes=True, subplot_titles=("Train Loss", "Eval Loss")
    )
    # Add traces
    fig.add_trace(
        go.Scatter(x=train_loss[0], y=train_loss[1], name="Train Loss", mode="lines"),
        row=1,
        col=1,
    )
    fig.add_trace(
        go.Scatter(x=eval_loss[0], y=eval_loss[1], name="Eval Loss", mode="lines"),
        row=1,
        col=2,
    )
    # Add figure title
    fig.update_layout(title="Train and Eval Loss", xaxis_title="Steps", yaxis_title="Loss")
    # Set x-axis title
    fig.update_xaxes(title_text="Steps")
    # Set y-axes titles
    fig.update_yaxes(title_text="Loss")
    # Show plot
    fig.write_html("loss.html", include_plotlyjs=True)  # fig.show()
    print("Plot written to", Path("loss.html").resolve())

    # Step8: Load the Tuned Model
    print(prompt)
    if True:
        # Test with the loaded model.
        print("***Testing***")
        print(
            client.models.generate_content(
                model=tuned_model, contents=prompt, config=config
            ).text
        )
    else:
        print("State:", tuning_job.state.name.state)
        print("Error:", tuning_job.state.name.error)

    # Step9: Evaluation post model tuning
    # run evaluation
    evaluation_df_post_tuning = run_evaluation(tuned_model, corpus_batch)
    print(evaluation_df_post_tuning.head())
    evaluation_df_post_tuning_stats = evaluation_df_post_tuning.dropna().describe()
    # Statistics of the evaluation dataframe post model tuning.
    print(evaluation_df_post_tuning_stats)
    print(
        "Mean rougeL_precision is", evaluation_df_post_tuning_stats.rougeL_precision["mean"]
    )

    # Improvement
    improvement = round(
        (
            (
                evaluation_df_post_tuning_stats.rougeL_precision["mean"]
                - evaluation_df_stats.rougeL_precision["mean"]
            )
            / evaluation_df_stats.rougeL_precision["mean"]
        )
        * 100,
        2,
    )
    print(
        f"Model tuning has improved the rougeL_precision by {improvement}% (result might differ based on each tuning iteration)"
    )

    # Cleaning up
    # Delete Experiment.
    delete_experiments = not args.keep_resources
    if delete_experiments:
        experiments_list = aiplatform.Experiment.list()
        for experiment in experiments_list:
            if experiment.resource_name == experiment_name:
                print(experiment.resource_name)
                experiment.delete()
                break

    print("***" * 10)

    # Delete Endpoint.
    delete_endpoint = not args.keep_resources
    # If force is set to True, all deployed models on this
    # Endpoint will be first undeployed.
    if delete_endpoint:
        for endpoint in aiplatform.Endpoint.list():
            if endpoint.resource_name == tuned_model:
                print(endpoint.resource_name)
                endpoint.delete(force=True)
                break

    print("***" * 10)

    # Delete Cloud Storage Bucket.
    delete_bucket = not args.keep_resources
    if delete_bucket:
        shutil.rmtree(BUCKET_URI)  # ! gsutil -m rm -r $BUCKET_URI


if __name__ == "__main__":
    main()
