"""Preference tuning (DPO): the three data formats with line + pointer + code for each violation, the statistics,
and DPO on the tiny model: the first step's loss is log 2 (the policy starts as its reference), reward accuracy on
the training pairs rises, and a supervised adapter continues into DPO with itself as the reference."""

from __future__ import annotations

import json
import math
import time

import pytest

from tunery import device
from tunery.config import TuningConfig
from tunery.data import preference
from tunery.train import metrics as mt
from tunery.train import preference as pt
from tunery.train.engine import train
from tests.helpers import contents, write_jsonl

GOOD = {"contents": [{"role": "user", "parts": [{"text": "Q?"}]}],
        "completions": [{"score": 1, "completion": {"role": "model", "parts": [{"text": "yes"}]}},
                        {"score": 0, "completion": {"role": "model", "parts": [{"text": "no"}]}}]}


def with_(path: str, value):
    obj = json.loads(json.dumps(GOOD))
    *head, last = path.split("/")[1:]
    target = obj
    for k in head:
        target = target[int(k) if k.isdigit() else k]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    elif isinstance(target, list) and int(last) == len(target):
        target.append(value)
    else:
        target[int(last) if last.isdigit() else last] = value
    return obj


@pytest.mark.parametrize("obj, code, pointer", [
    (with_("/completions/1/score", 1), "invalid_score", "/completions/1/score"),
    (with_("/completions/0/score", 0.5), "invalid_score", "/completions/0/score"),
    (with_("/completions/1", ...), "wrong_completion_count", "/completions"),
    (with_("/completions/0/completion/role", "user"), "completion_not_model", "/completions/0/completion/role"),
    (with_("/completions/0/completion/parts/0/text", ""), "empty_text", "/completions/0/completion/parts/0/text"),
    (with_("/contents/1", {"role": "model", "parts": [{"text": "x"}]}), "prompt_not_ending_with_user", "/contents/1/role"),
    (with_("/contents/0/parts/0", {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}),
     "unreadable_image", "/contents/0/parts/0/inlineData/data"),
    ({"input": {"messages": [{"role": "user", "content": "Q"}]}, "preferred_output": [{"role": "assistant", "content": "A"}],
      "non_preferred_output": [{"role": "user", "content": "B"}]}, "completion_not_model", "/non_preferred_output/0/role"),
    ({"input": {"messages": [{"role": "user", "content": "Q"}]}, "preferred_output": [{"role": "assistant", "content": "A"}]},
     "invalid_completions", "/non_preferred_output"),
    ({"prompt": "Q", "chosen": "A"}, "missing_column", "/rejected"),
    ({"prompt": "Q", "completion": "A"}, "unknown_format", ""),
])
def test_each_preference_error_is_reported_at_its_pointer(obj, code, pointer):
    pair, _, issues = preference.parse(obj, 7)
    assert pair is None
    assert (code, 7, pointer) in [(i.code, i.line, i.pointer) for i in issues if i.severity == "error"], issues


def test_the_three_formats_give_the_same_pair():
    openai = {"input": {"messages": [{"role": "user", "content": "Q?"}]},
              "preferred_output": [{"role": "assistant", "content": "yes"}],
              "non_preferred_output": [{"role": "assistant", "content": "no"}]}
    pairs = [preference.parse(o, 1) for o in (GOOD, openai, {"prompt": "Q?", "chosen": "yes", "rejected": "no"})]
    assert [fmt for _, fmt, _ in pairs] == ["vertex", "openai", "columns"]
    assert pairs[0][0] == pairs[1][0] == pairs[2][0] and preference.to_vertex(pairs[0][0]) == GOOD


def pairs(n: int = 8) -> list[dict]:
    rows = []
    for i in range(n):
        obj = json.loads(json.dumps(GOOD))
        obj["contents"][0]["parts"][0]["text"] = f"Is {i} a number?"
        obj["completions"][0]["completion"]["parts"][0]["text"] = f"yes, {i} is"
        obj["completions"][1]["completion"]["parts"][0]["text"] = f"no, {i} is not"
        rows.append(obj)
    return rows


def test_dpo_starts_at_log_2_and_learns_the_preferred_answers(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    res = train(TuningConfig(train=str(data), validation=str(data), base_model=str(tiny_model_dir),
                             output=str(tmp_path / "run"), epochs=6, batch_size=4, learning_rate=2e-2,
                             adapter_size=4, method="preference", beta=0.5))
    records = mt.read_metrics(tmp_path / "run")
    first, last = records[0], records[-1]
    # step 1 runs the starting weights, which are the reference: every margin is 0 and the loss is log 2, up to
    # float32 sums of ~10 token log-probs of magnitude ~10 computed in batches of other widths (~1e-5 nats, x beta)
    assert abs(first[mt.TRAIN_LOSS] - math.log(2)) < 1e-3
    assert first[pt.TRAIN_PAIRS] == 4 and last[pt.TRAIN_REWARD_ACCURACY] == 1.0
    assert last[mt.EVAL_LOSS] < 0.5 * math.log(2) and last[pt.EVAL_REWARD_ACCURACY] == 1.0
    assert last[pt.TRAIN_CHOSEN_LOGPS] > first[pt.TRAIN_CHOSEN_LOGPS]  # the preferred answers became more likely
    assert res.steps == 12 and [c["checkpointId"] for c in res.checkpoints] == [str(k) for k in range(1, 7)]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["hyperparameters"]["method"] == "preference" and manifest["hyperparameters"]["beta"] == 0.5


def test_supervised_then_preference_continues_from_the_supervised_adapter(tmp_path, tiny_model_dir):
    """SFT, then DPO from its adapter: the reference is the SFT model, so DPO's first loss is log 2 again."""
    sft_data = write_jsonl(tmp_path / "sft.jsonl", [contents(("user", f"Is {i} a number?"), ("model", f"yes, {i} is"))
                                                    for i in range(8)])
    train(TuningConfig(train=str(sft_data), base_model=str(tiny_model_dir), output=str(tmp_path / "sft"), epochs=2,
                       batch_size=4, learning_rate=2e-2, adapter_size=4))
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs())
    train(TuningConfig(train=str(data), base_model=str(tiny_model_dir), output=str(tmp_path / "dpo"), epochs=2,
                       batch_size=4, learning_rate=2e-2, adapter_size=4, method="preference",
                       init_adapter=str(tmp_path / "sft" / "adapter")))
    first = mt.read_metrics(tmp_path / "dpo")[0]
    assert abs(first[mt.TRAIN_LOSS] - math.log(2)) < 1e-3
    # the SFT model already prefers its own answers over the base model's view of them
    assert first[pt.TRAIN_CHOSEN_LOGPS] > first[pt.TRAIN_REJECTED_LOGPS]


def test_preference_jobs_through_google_genai_and_openai(tmp_path_factory, tiny_model_dir):
    """A preference job created with the real google-genai SDK (PREFERENCE_TUNING) and one with the real openai SDK
    (method dpo): each succeeds, reports preference metrics and statistics, and its tuned model answers."""
    import openai
    from google.genai import types

    from tests.helpers import tunery_home
    from tests.test_api import LiveServer, sdk, wait_done

    home = tmp_path_factory.mktemp("preference-home")
    with tunery_home(home, tiny_model_dir):
        (home / "data").mkdir()
        data = write_jsonl(home / "data" / "pairs.jsonl", pairs())
        with LiveServer(home) as server:
            client = sdk(server.url)
            job = client.tunings.tune(base_model="gemini-2.0-flash-001", training_dataset=types.TuningDataset(
                gcs_uri=str(data)), config=types.CreateTuningJobConfig(method="PREFERENCE_TUNING", epoch_count=3,
                                                                       beta=0.5, learning_rate_multiplier=100.0))
            job = wait_done(client, job.name)
            assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
            assert job.preference_optimization_spec.hyper_parameters.beta == 0.5 and job.supervised_tuning_spec is None
            stats = job.tuning_data_stats.preference_optimization_data_stats
            assert stats.tuning_dataset_example_count == 8 and stats.user_dataset_examples[0].completions[0].score == 1
            run = home / "jobs" / job.name.rsplit("/", 1)[1] / "run"
            records = mt.read_metrics(run)
            assert records[-1][pt.TRAIN_REWARD_ACCURACY] == 1.0 and records[-1][mt.TRAIN_LOSS] < math.log(2)
            answer = client.models.generate_content(model=job.tuned_model.endpoint, contents="Is 3 a number?",
                                                    config=types.GenerateContentConfig(max_output_tokens=4))
            assert answer.text

            oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key="local-dev")
            openai_pairs = [{"input": {"messages": [{"role": "user", "content": p["contents"][0]["parts"][0]["text"]}]},
                             "preferred_output": [{"role": "assistant", "content": p["completions"][0]["completion"]["parts"][0]["text"]}],
                             "non_preferred_output": [{"role": "assistant", "content": p["completions"][1]["completion"]["parts"][0]["text"]}]}
                            for p in pairs()]
            upload = oa.files.create(file=("pairs.jsonl", write_jsonl(home / "data" / "oa.jsonl", openai_pairs).read_bytes()),
                                     purpose="fine-tune")
            ft = oa.fine_tuning.jobs.create(model="gemini-2.0-flash-001", training_file=upload.id, method={
                "type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "n_epochs": 2, "learning_rate_multiplier": 10}}})
            deadline = time.monotonic() + 180
            while (ft := oa.fine_tuning.jobs.retrieve(ft.id)).status not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline
                time.sleep(0.3)
            assert ft.status == "succeeded", ft.error
            assert ft.method.type == "dpo" and ft.method.dpo.hyperparameters.beta == 0.5
            events = oa.fine_tuning.jobs.list_events(ft.id, limit=100).data
            assert any(e.type == "metrics" and "train_reward_accuracy" in (e.data or {}) for e in events)
            chat = oa.chat.completions.create(model=ft.fine_tuned_model, max_tokens=4, temperature=0,
                                              messages=[{"role": "user", "content": "Is 3 a number?"}])
            assert chat.choices[0].message.content
            # a bad beta is a 400 naming the field
            with pytest.raises(openai.BadRequestError) as err:
                oa.fine_tuning.jobs.create(model="gemini-2.0-flash-001", training_file=upload.id, method={
                    "type": "dpo", "dpo": {"hyperparameters": {"beta": 5}}})
            assert "method.dpo.hyperparameters.beta" in str(err.value)
            # the job service's errors name the preference spec's fields, not the supervised spec's
            import httpx

            r = httpx.post(f"{server.url}/v1beta1/projects/p/locations/l/tuningJobs", json={
                "baseModel": "gemini-2.0-flash-001",
                "preferenceOptimizationSpec": {"trainingDatasetUri": str(home / "data" / "missing.jsonl")}})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["message"].startswith("preferenceOptimizationSpec.trainingDatasetUri: "), r.text


def test_a_killed_preference_run_resumes_to_the_same_adapter(tmp_path, tiny_model_dir, monkeypatch):
    """kill -9 mid-run, then the same command again: every step once, and the adapter of an uninterrupted run (the
    reference log-probs are recomputed from the starting weights, so the resumed steps see the same ones)."""
    import os
    import signal
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(16))

    def cmd(out):
        return [sys.executable, "-m", "tunery.cli", "tune", "--local", "--train", str(data), "--base-model",
                str(tiny_model_dir), "--method", "preference", "--beta", "0.5", "--epochs", "6", "--batch-size", "4",
                "--learning-rate", "2e-2", "--adapter-size", "4", "--save-interval-seconds", "0", "--output", str(out)]

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNERY_PRECISION": "float32"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(mt.read_metrics(killed)) < 9:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 9 <= len(mt.read_metrics(killed)) < 24 and not (killed / "manifest.json").exists()
    rerun = subprocess.run(cmd(killed), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "resuming from step" in rerun.stderr, rerun.stderr[-2000:]
    straight = tmp_path / "straight"  # uninterrupted, in this process (the same train() the command runs)
    monkeypatch.setenv("TUNERY_PRECISION", "float32")
    device.pick.cache_clear()
    try:
        train(TuningConfig(train=str(data), base_model=str(tiny_model_dir), method="preference", beta=0.5, epochs=6,
                           batch_size=4, learning_rate=2e-2, adapter_size=4, output=str(straight)))
    finally:
        device.pick.cache_clear()
    assert [r["step"] for r in mt.read_metrics(killed)] == list(range(1, 25))
    a = load_file(killed / "adapter" / "adapter_model.safetensors")
    b = load_file(straight / "adapter" / "adapter_model.safetensors")
    # float32 and the same batches in the same order: equal up to summation order (updates of ~1e-2, ~1e-6 apart)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_dpo_loss_equals_one_computed_by_hand(tiny_model_dir):
    """Two pairs through tunery's DPO loss against the formula written out with full logits and log_softmax."""
    import torch
    import torch.nn.functional as F

    from tunery import models
    from tunery.device import Runtime
    from tunery.train.engine import _attach_lora

    spec = models.resolve(str(tiny_model_dir))
    template = models.load_template(spec)
    torch.manual_seed(0)
    model = _attach_lora(models.load_model_fresh(spec), 4, 0)
    for name, p in model.named_parameters():  # a policy away from its reference: B is zero at the start
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    ps = [preference.parse(o, 1)[0] for o in pairs(2)]
    rows = pt.render_pairs(ps, template, 1024)
    for r, ref in zip(rows, ((-30.0, -31.5), (-28.25, -27.0))):
        r.reference = ref
    runtime, beta = Runtime("cpu", None), 0.3
    with torch.no_grad():
        total, sums = pt.loss(model, rows, template.end_id, runtime, beta)

        def logp(row) -> float:  # one row alone, unpadded: every logit, then the answer's tokens
            ids = torch.tensor([row.input_ids])
            logits = model(input_ids=ids).logits[0, :-1].double()
            targets = torch.tensor(row.labels[1:])
            keep = targets != -100
            return float(F.log_softmax(logits, -1)[keep].gather(1, targets[keep][:, None]).sum())

        by_hand = 0.0
        for r in rows:
            margin = beta * ((logp(r.chosen) - r.reference[0]) - (logp(r.rejected) - r.reference[1]))
            by_hand += -math.log(1 / (1 + math.exp(-margin)))
    # float32 log-probs of ~10 tokens (sums of magnitude ~30, relative error ~1e-6) against float64: 1e-4 is wide
    assert float(total) == pytest.approx(by_hand, abs=1e-4) and sums["correct"] in (0.0, 1.0, 2.0)


def test_the_preference_example_runs_sft_then_dpo_then_compare(tiny_model_dir):
    """examples/preference_tuning.py as a user runs it (on the tiny model, a few examples): its own server, a
    supervised job, a preference job from its tuned model, and `tunery compare` of the two."""
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parent.parent / "examples" / "preference_tuning.py"
    proc = subprocess.run([sys.executable, str(example), "--base-model", str(tiny_model_dir), "--examples", "8",
                           "--epochs", "1", "--test", "4"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("JOB_STATE_SUCCEEDED") == 2 and "8 pairs; tuned model projects/" in proc.stdout
    assert "rougeL" in proc.stdout.replace("ROUGE-L", "rougeL") and "improvement" in proc.stdout.lower()
