"""Images and documents end to end on a tiny random SmolVLM (tunery.tiny_vlm: the Idefics3 architecture, SmolLM2's
real tokenizer, SmolVLM's chat template): validation against the model's modalities, LoRA tuning of the language
model with the vision tower frozen, and a tuning job and image prompts through the real google-genai SDK."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tunery import models, tiny_vlm
from tunery.cli import cli
from tunery.config import TuningConfig
from tunery.train.engine import train
from tests.helpers import tunery_home, write_jsonl
from tests.test_api import LiveServer, sdk, wait_done

IMAGES = Path(__file__).parent / "fixtures" / "images"
RED, BLUE = (IMAGES / "red.png").read_bytes(), (IMAGES / "blue.png").read_bytes()


def inline(data: bytes, mime: str = "image/png") -> dict:
    return {"inlineData": {"mimeType": mime, "data": base64.b64encode(data).decode()}}


def colour_rows(folder: Path, n: int = 8) -> list[dict]:
    """Half red images sent inline, half blue ones by path (relative to the dataset, and absolute), one as a PDF."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    shutil.copy(IMAGES / "blue.png", folder / "images" / "blue.png")
    from PIL import Image

    Image.open(IMAGES / "red.png").convert("RGB").save(folder / "images" / "red.pdf")
    rows = []
    for i in range(n):
        if i % 2 == 0:
            part, answer = inline(RED), "red"
        else:
            uri = "images/blue.png" if i % 4 == 1 else str(folder / "images" / "blue.png")
            part, answer = {"fileData": {"mimeType": "image/png", "fileUri": uri}}, "blue"
        rows.append({"contents": [{"role": "user", "parts": [part, {"text": "Which colour?"}]},
                                  {"role": "model", "parts": [{"text": answer}]}]})
    rows.append({"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "application/pdf",
                                                                         "fileUri": "images/red.pdf"}},
                                                         {"text": "Which colour?"}]},
                              {"role": "model", "parts": [{"text": "red"}]}]})
    return rows


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory, hf_tokenizer) -> Path:
    return tiny_vlm.build(tmp_path_factory.mktemp("home") / "tiny-smolvlm", tokenizer=hf_tokenizer)


def test_an_image_example_against_the_default_text_model_names_the_missing_modality(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", colour_rows(tmp_path, 2))
    res = CliRunner().invoke(cli, ["validate", str(path), "--no-tokens", "--json"])
    assert res.exit_code == 1
    errors = [(i["code"], i["line"], i["pointer"]) for i in json.loads(res.stdout)["issues"] if i["severity"] == "error"]
    assert errors == [("unsupported_modality", 1, "/contents/0/parts/0/inlineData"),
                      ("unsupported_modality", 2, "/contents/0/parts/0/fileData"),
                      ("unsupported_modality", 3, "/contents/0/parts/0/fileData")]
    issue = next(i for i in json.loads(res.stdout)["issues"] if i["severity"] == "error")
    assert "has no vision encoder, so it cannot take image/png parts" in issue["message"]


def test_the_vision_model_validates_and_counts_the_image_tokens(tmp_path, vlm_dir):
    path = write_jsonl(tmp_path / "train.jsonl", colour_rows(tmp_path, 4))
    res = CliRunner().invoke(cli, ["validate", str(path), "--base-model", str(vlm_dir), "--json"])
    assert res.exit_code == 0, res.stdout
    report = json.loads(res.stdout)
    assert report["valid"] and report["stats"]["tuningDatasetExampleCount"] == 5
    assert report["stats"]["multimodalExampleCount"] == 5
    assert report["stats"]["mediaPartCounts"] == {"document": 1, "image": 4}
    samples = json.dumps(report["stats"]["userDatasetExamples"])
    assert "inlineData" not in samples and "images/blue.png" in samples  # no image bytes in every job record
    template = models.load_template(models.resolve(str(vlm_dir)))
    text_only = template.measure_batch([models_example("Which colour?", "red")])[0].total
    # one 32x32 image: 4 image tokens between <fake_token_around_image><global-img> ... <fake_token_around_image>
    assert report["stats"]["userInputTokenDistribution"]["max"] == pytest.approx(
        report["stats"]["userInputTokenDistribution"]["min"])
    assert template.measure_batch([_with_image("Which colour?", "red")])[0].total == text_only + 7


def models_example(question: str, answer: str):
    from tunery.data.schema import Example, Turn

    return Example((Turn("user", question), Turn("model", answer)))


def _with_image(question: str, answer: str):
    from tunery.data.schema import Example, Media, Turn

    return Example((Turn("user", question, (Media("image/png", data=RED),)), Turn("model", answer)))


@pytest.fixture(scope="module")
def vlm_run(tmp_path_factory, vlm_dir):
    folder = tmp_path_factory.mktemp("vlm-run")
    path = write_jsonl(folder / "train.jsonl", colour_rows(folder))
    res = train(TuningConfig(train=str(path), base_model=str(vlm_dir), output=str(folder / "run"), epochs=4,
                             batch_size=3, learning_rate=2e-2, adapter_size=4))
    return res


def test_tuning_lowers_the_loss_and_adapts_only_the_language_model(vlm_run):
    from safetensors.torch import load_file

    run = vlm_run.output
    losses = [json.loads(line)["/train_total_loss"] for line in (run / "metrics.jsonl").open()]
    assert vlm_run.steps == 12 and losses[-1] < losses[0] / 2
    weights = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert weights and all(".text_model." in k for k in weights)  # vision tower and connector frozen
    assert any(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)  # B starts at zero: it moved


# an image's tokens: Gemma 3 "\n\n<start_of_image>" 4 x <image_soft_token> "<end_of_image>\n\n"; Qwen2.5-VL
# <|vision_start|> 6 x <|image_pad|> (a 4x6 patch grid merged 2x2) <|vision_end|>
@pytest.mark.parametrize("family, image_tokens, end", [("gemma3", 8, "<end_of_turn>"), ("qwen2.5-vl", 8, "<|im_end|>")])
def test_gemma3_and_qwen25vl_render_tune_and_answer_through_the_same_code(family, image_tokens, end, tmp_path,
                                                                          hf_tokenizer):
    """Tiny random models of two more families (tunery.tiny_vlm), with their real chat templates and end-of-sequence
    lists: the answer and its end-of-turn token are the supervised tokens; right-padded batches of rows of different
    lengths (and per-token tensors: Gemma 3's token_type_ids, Qwen's mm_token_type_ids) train; the tuned adapter
    answers and stops at the end of its turn."""
    from tunery.data.schema import Turn
    from tunery.device import Runtime
    from tunery.serve.generate import GenerationConfig, Prompt
    from tunery.serve.registry import Registry

    model_dir = tiny_vlm.build(tmp_path / family, tokenizer=hf_tokenizer, family=family)
    spec = models.resolve(str(model_dir))
    template = models.load_template(spec)
    assert template.decode([template.end_id]) == end
    rendered = template.render(_with_image("Which colour?", "red"))
    assert template.decode([i for i, l in zip(rendered.input_ids, rendered.labels) if l != -100]).strip() == f"red{end}"
    assert template.measure_batch([_with_image("Which colour?", "red")])[0].total == \
        template.measure_batch([models_example("Which colour?", "red")])[0].total + image_tokens
    rows = colour_rows(tmp_path)
    rows[0]["contents"][0]["parts"][1]["text"] = "Which colour is this picture, please?"  # rows of different lengths
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    res = train(TuningConfig(train=str(data), base_model=str(model_dir), output=str(tmp_path / "run"), epochs=3,
                             batch_size=3, learning_rate=2e-2, adapter_size=4))
    losses = [json.loads(line)["/train_total_loss"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert losses[-1] < losses[0] / 2
    from safetensors.torch import load_file

    assert all(".language_model." in k for k in load_file(str(res.output / "adapter" / "adapter_model.safetensors")))
    answer = Registry(runtime=Runtime("cpu", None)).generate(spec, str(res.output / "adapter"), [Prompt((Turn(
        "user", "Which colour?", (_with_image("", "").turns[0].media)),))], GenerationConfig(max_output_tokens=8))[0]
    assert answer.finish_reason == "STOP" and answer.text.strip() in ("red", "blue")


def test_compare_on_a_test_set_of_images(vlm_run, tmp_path):
    """The before/after report on image prompts: the test set's relative image paths are read from its folder."""
    data = write_jsonl(tmp_path / "test.jsonl", colour_rows(tmp_path, 4))
    html = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["compare", "--tuned", str(vlm_run.output), "--data", str(data), "--task",
                                 "classification", "--max-output-tokens", "4", "--report", str(html)])
    assert r.exit_code == 0, r.output
    report = json.loads(html.with_suffix(".json").read_text())
    assert report["examples"] == 5 and set(report["metrics"]) == {"base", "tuned"}
    # the random base model never says a colour; the tuned one answers with one of the two it was taught
    assert report["metrics"]["base"]["accuracy"] == 0 and report["metrics"]["tuned"]["accuracy"] > 0


def test_a_tuning_job_through_google_genai_answers_image_prompts(tmp_path_factory, vlm_dir, tiny_model_dir):
    from google.genai import types

    home = vlm_dir.parent
    rows = colour_rows(home / "data")
    write_jsonl(home / "data" / "train.jsonl", rows)
    with tunery_home(home, tiny_model_dir), LiveServer(home) as server:
        client = sdk(server.url)
        job = client.tunings.tune(base_model=str(vlm_dir),
                                  training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "train.jsonl")),
                                  config=types.CreateTuningJobConfig(epoch_count=8, learning_rate_multiplier=5.0))
        job = wait_done(client, job.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
        endpoint = job.tuned_model.endpoint
        image = types.Part.from_bytes(data=BLUE, mime_type="image/png")
        answer = client.models.generate_content(model=endpoint, contents=[image, "Which colour?"])
        assert answer.text.strip() in ("red", "blue") and answer.candidates[0].finish_reason.name == "STOP"
        with_image = client.models.count_tokens(model=endpoint, contents=[image, "Which colour?"]).total_tokens
        text = client.models.count_tokens(model=endpoint, contents=["Which colour?"]).total_tokens
        assert with_image == text + 7
        # the vertexai SDK (google-cloud-aiplatform): Part.from_data on the same endpoint
        from vertexai.generative_models import GenerativeModel, Part

        from tests.test_vertex_sdk import vertex_init

        vertex_init(server)
        legacy = GenerativeModel(endpoint).generate_content([Part.from_data(data=BLUE, mime_type="image/png"),
                                                             "Which colour?"])
        assert legacy.text == answer.text
        # the OpenAI chat route: an image_url data URL, on the same tuned model
        import openai

        oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key="local-dev")
        url = "data:image/png;base64," + base64.b64encode(BLUE).decode()
        chat = oa.chat.completions.create(model=job.tuned_model.model, max_tokens=5, temperature=0, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Which colour?"}]}])
        assert chat.choices[0].message.content == answer.text and chat.usage.prompt_tokens == with_image
        # a path outside the allowed roots, and an image for the text-only default model: 400s that say why
        outside = types.Part.from_uri(file_uri="/etc/hostname", mime_type="image/png")
        r = httpx.post(f"{server.url}/v1beta1/{endpoint}:generateContent", json={"contents": [{"role": "user", "parts": [
            {"fileData": {"mimeType": "image/png", "fileUri": "/etc/hostname"}}, {"text": "?"}]}]})
        assert r.status_code == 400 and "contents[0].parts[0].fileData.fileUri: expected a path under" in r.json()["error"]["message"]
        assert outside.file_data.file_uri == "/etc/hostname"
        with pytest.raises(Exception) as err:
            client.models.generate_content(model="gemini-2.0-flash-001", contents=[image, "Which colour?"])
        assert getattr(err.value, "code", None) == 400 and "has no vision encoder" in str(err.value)

    # a dataset too big to check when the job is created (here: any) is checked by the job, against the same roots
    rows[1]["contents"][0]["parts"][0]["fileData"]["fileUri"] = str(IMAGES / "blue.png")  # outside the home
    write_jsonl(home / "data" / "outside.jsonl", rows)
    with tunery_home(home, tiny_model_dir), LiveServer(home, validate_on_create_bytes=0) as server:
        client = sdk(server.url)
        job = client.tunings.tune(base_model=str(vlm_dir),
                                  training_dataset=types.TuningDataset(gcs_uri=str(home / "data" / "outside.jsonl")))
        job = wait_done(client, job.name)
        assert job.state.name == "JOB_STATE_FAILED"
        assert "file_outside_roots" in job.error.message and "/contents/0/parts/0/fileData/fileUri" in job.error.message


def test_the_multimodal_example_runs_the_whole_flow_with_no_arguments():
    """examples/multimodal_tuning.py as a user runs it: builds its tiny VLM, starts and stops its own server."""
    import subprocess
    import sys

    example = Path(__file__).parent.parent / "examples" / "multimodal_tuning.py"
    proc = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "state: JOB_STATE_SUCCEEDED" in proc.stdout
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("tuned endpoint, blue image:"))
    assert line.endswith("(18 prompt tokens with the image)")  # 11 of text and chat markup, 7 for the image
