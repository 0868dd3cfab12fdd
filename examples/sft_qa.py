"""The seed notebook "Supervised fine-tuning with Gemini 2.0 Flash for Q&A using the Google Gen AI SDK", every cell, in
order, against tunery.

What differs from the notebook, and nothing else:
- client construction: `genai.Client(...)` gets `http_options` and a local credential (or, with `--zero-change` and
  the environment `tunery env` prints, is the literal call); `vertexai.init(...)` gets `api_endpoint`,
  `api_transport="rest"` and the credential.
- `gsutil` cells: the bucket is a local directory and the SQuAD CSVs are the bundled SQuAD-style sample
  (examples/data/squad_*.csv, same columns). `--test-rows` keeps the first N test rows (the notebook scores them all),
  and the random example row is taken modulo the rows there are (the notebook assumes more than 100).
- The notebook's `test_df["input_question"].apply(get_predictions)` omits `get_predictions`'s second argument (a
  TypeError as published); here it passes the model the cell means: the base model before tuning, the tuned one after.
- `fig.show()` writes `loss.html`; `--epochs` replaces the tune call's `epoch_count=1` when given.

Run a server first (`tunery serve --allow-path out`), then: python examples/sft_qa.py [--server URL]
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections import Counter
from pathlib import Path

DATA = Path(__file__).parent / "data"


def normalize_answer(s):
    """Lower text and remove extra whitespace, but preserve newlines."""

    def white_space_fix(text):
        return " ".join(text.split())  # Splits by any whitespace, including \n

    def lower(text):
        return text.lower()

    return white_space_fix(lower(s))


def f1_score_squad(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8080")
    ap.add_argument("--work", type=Path, default=Path("out/sft_qa"))
    ap.add_argument("--test-rows", type=int, default=None, help="keep the first N rows of squad_test.csv")
    ap.add_argument("--epochs", type=int, default=None, help="epoch_count (the notebook's is 1)")
    ap.add_argument("--zero-change", action="store_true", help="the literal genai.Client(...); needs `tunery env`")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)

    # Set the Google Cloud project information and initialize the Google Gen AI SDK
    from google import genai
    from google.genai import types

    PROJECT_ID = "[your-project-id]"  # @param {type:"string", isTemplate: true}
    if PROJECT_ID == "[your-project-id]":
        PROJECT_ID = str(os.environ.get("GOOGLE_CLOUD_PROJECT", "my-project"))
    LOCATION = os.environ.get("GOOGLE_CLOUD_REGION", "us-central1")

    import google.oauth2.credentials  # tunery: the one difference, where the API lives and a local credential

    credentials = google.oauth2.credentials.Credentials(token="local-dev")
    if args.zero_change:
        client = genai.Client(vertexai=True, project=PROJECT_ID, location=LOCATION)
    else:
        client = genai.Client(vertexai=True, project=PROJECT_ID, location=LOCATION, credentials=credentials,
                              http_options=types.HttpOptions(base_url=args.server))

    # Import libraries
    import json
    import random

    # Vertex AI SDK
    from google.cloud import aiplatform
    from google.cloud.aiplatform.metadata import context
    from google.cloud.aiplatform.metadata import utils as metadata_utils
    import numpy as np
    import pandas as pd
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    import vertexai

    vertexai.init(project=PROJECT_ID, location=LOCATION, api_endpoint=args.server, api_transport="rest",
                  credentials=credentials)

    # Provide a bucket name
    BUCKET_NAME = "bucket"  # @param {type:"string"}
    BUCKET_URI = str(Path(BUCKET_NAME).resolve())
    print(BUCKET_URI)
    os.makedirs(BUCKET_URI, exist_ok=True)  # ! gsutil mb -l {LOCATION} -p {PROJECT_ID} {BUCKET_URI}
    for name in ("squad_test.csv", "squad_train.csv", "squad_validation.csv"):  # !gsutil cp gs://github-repo/.../qa/... .
        shutil.copy(DATA / name, name)

    # Baseline
    test_df = pd.read_csv("squad_test.csv")
    if args.test_rows:
        test_df = test_df.head(args.test_rows)
    print(test_df.head(2))

    row_dataset = random.randint(0, 100)  # lets take a random example from the dataset

    test_df["answers"] = test_df["answers"].apply(normalize_answer)

    few_shot_examples = test_df.sample(3)
    # Get the indices of the sampled rows
    dropped_indices = few_shot_examples.index
    # Remove the sampled rows from the original DataFrame
    test_df = test_df.drop(dropped_indices)
    row_dataset %= len(test_df)  # tunery: the bundled sample may have fewer than 100 rows

    few_shot_prompt = ""
    for _, row in few_shot_examples.iterrows():
        few_shot_prompt += (
            f"Context: {row.context}\nQuestion: {row.question}\nAnswer: {row.answers}\n\n"
        )
    print(few_shot_prompt)

    # Incorporate few-shot examples into the system instruction
    systemInstruct = f"""Answer the question with a concise extract from the given context. Do not add any additional information, capital letters (only for names) or a punctuation mark in the end.\n\n
Here are some examples: \n\n
{few_shot_prompt}"""

    # combine the systeminstruct + context + question into one column. This will be your input prompt.
    test_df["systemInstruct"] = systemInstruct
    test_df["input_question"] = (
        "\n\n **Below the question with context that you need to answer**"
        + "\n Context: "
        + test_df["context"]
        + "\n Question: "
        + test_df["question"]
    )
    test_systemInstruct = test_df["systemInstruct"].iloc[row_dataset]
    print(test_systemInstruct)
    test_question = test_df["input_question"].iloc[row_dataset]
    print(test_question)

    base_model = "gemini-2.0-flash-001"

    y_true = test_df["answers"].values
    y_pred_question = test_df["input_question"].values
    # Check two pairs of question and answer.
    for i in range(2):  # Loop through the first two indices
        print(f"Pair {i+1}:")
        print(f"  True Answer: {y_true[i]}")
        print(f"  Predicted Question: {y_pred_question[i]}")

    def get_predictions(question: str, model_version: str) -> str:
        prompt = question
        base_model = model_version

        response = client.models.generate_content(
            model=base_model,
            contents=prompt,
            config={
                "system_instruction": systemInstruct,
                "temperature": 0.3,
            },
        )

        return response.text

    test_answer = test_df["answers"].iloc[row_dataset]
    response = get_predictions(test_question, base_model)
    print(f"Gemini response: {response}")
    print(f"Actual answer: {test_answer}")

    # Apply the get_prediction() function to the 'question_column'
    test_df["predicted_answer"] = test_df["input_question"].apply(get_predictions, model_version=base_model)
    print(test_df.head(2))
    test_df["predicted_answer"] = test_df["predicted_answer"].apply(normalize_answer)
    print(test_df.head(4))

    def calculate_em_and_f1(y_true, y_pred):
        """Calculates EM and F1 scores for DataFrame columns."""
        # Ensure inputs are Series
        if not isinstance(y_true, pd.Series):
            y_true = pd.Series(y_true)
        if not isinstance(y_pred, pd.Series):
            y_pred = pd.Series(y_pred)

        em = np.mean(y_true.combine(y_pred, exact_match_score))
        f1 = np.mean(y_true.combine(y_pred, f1_score_squad))
        return em, f1

    em, f1 = calculate_em_and_f1(test_df["answers"], test_df["predicted_answer"])
    print(f"EM score: {em}")
    print(f"F1 score: {f1}")

    # Prepare the data for fine-tuning
    train_df = pd.read_csv("squad_train.csv")
    validation_df = pd.read_csv("squad_validation.csv")

    # combine the systeminstruct + context + question into one column.
    train_df["input_question"] = (
        "\n\n **Below the question with context that you need to answer**"
        + "\n Context: "
        + train_df["context"]
        + "\n Question: "
        + train_df["question"]
    )
    validation_df["input_question"] = (
        "\n\n **Below the question with context that you need to answer**"
        + "\n Context: "
        + validation_df["context"]
        + "\n Question: "
        + validation_df["question"]
    )

    def df_to_jsonl(df, output_file):
        """Converts a Pandas DataFrame to JSONL format and saves it to a file."""
        with open(output_file, "w") as f:
            for row in df.itertuples(index=False):
                jsonl_obj = {
                    "systemInstruction": {"parts": [{"text": f"{systemInstruct}"}]},
                    "contents": [
                        {
                            "role": "user",
                            "parts": [{"text": f"{row.input_question}"}],
                        },
                        {"role": "model", "parts": [{"text": row.answers}]},
                    ],
                }
                f.write(json.dumps(jsonl_obj) + "\n")

    # Process the DataFrames
    df_to_jsonl(train_df, "squad_train.jsonl")
    df_to_jsonl(validation_df, "squad_validation.jsonl")
    print("JSONL data written to squad_train.jsonl")
    print("JSONL data written to squad_validation.jsonl")
    for name in ("squad_train.jsonl", "squad_validation.jsonl"):  # !gsutil cp ./{name} {BUCKET_URI}
        shutil.copy(name, BUCKET_URI)

    # Start fine-tuning job
    train_dataset = f"""{BUCKET_URI}/squad_train.jsonl"""
    validation_dataset = f"""{BUCKET_URI}/squad_train.jsonl"""

    training_dataset = {
        "gcs_uri": train_dataset,
    }

    validation_dataset = types.TuningValidationDataset(gcs_uri=validation_dataset)

    sft_tuning_job = client.tunings.tune(
        base_model=base_model,
        training_dataset=training_dataset,
        config=types.CreateTuningJobConfig(
            adapter_size="ADAPTER_SIZE_EIGHT",
            epoch_count=args.epochs or 1,  # set to one to keep time and cost low
            tuned_model_display_name="gemini-flash-1.5-qa",
        ),
    )
    print(sft_tuning_job)
    print(sft_tuning_job.state)

    tuning_job = client.tunings.get(name=sft_tuning_job.name)
    print(tuning_job)
    import time  # tunery: the notebook re-runs the cell above until the job has ended

    while not tuning_job.has_ended:
        time.sleep(2)
        tuning_job = client.tunings.get(name=sft_tuning_job.name)

    # Model tuning metrics
    experiment_name = tuning_job.experiment
    print(experiment_name)

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
        """Get metrics from Tensorboard."""
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
    print(f"Train loss: {len(train_loss[0])} steps; eval loss: {len(eval_loss[0])} points (no validation set was passed)")

    # Plot the train and eval loss metrics using Plotly python library
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

    # Use the fine-tuned model and evaluation
    prompt = """
Answer the question based on the context

Context: In the 1840s and 50s, there were attempts to overcome this problem by means of various patent valve gears with a separate, variable cutoff expansion valve riding on the back of the main slide valve; the latter usually had fixed or limited cutoff.
The combined setup gave a fair approximation of the ideal events, at the expense of increased friction and wear, and the mechanism tended to be complicated.
The usual compromise solution has been to provide lap by lengthening rubbing surfaces of the valve in such a way as to overlap the port on the admission side, with the effect that the exhaust side remains open for a longer period after cut-off on the admission side has occurred.
This expedient has since been generally considered satisfactory for most purposes and makes possible the use of the simpler Stephenson, Joy and Walschaerts motions.
Corliss, and later, poppet valve gears had separate admission and exhaust valves driven by trip mechanisms or cams profiled so as to give ideal events; most of these gears never succeeded outside of the stationary marketplace due to various other issues including leakage and more delicate mechanisms.

Question: How is lap provided by overlapping the admission side port?
"""
    tuned_model = tuning_job.tuned_model.endpoint
    print(tuned_model)
    print(get_predictions(prompt, tuned_model))

    # Apply the get_prediction() function to the 'question_column'
    test_df["predicted_answer"] = test_df["input_question"].apply(get_predictions, model_version=tuned_model)
    print(test_df.head(2))
    test_df["predicted_answer"] = test_df["predicted_answer"].apply(normalize_answer)

    em, f1 = calculate_em_and_f1(test_df["answers"], test_df["predicted_answer"])
    print(f"EM score: {em}")
    print(f"F1 score: {f1}")


if __name__ == "__main__":
    main()
