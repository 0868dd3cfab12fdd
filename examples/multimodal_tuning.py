"""Tune a vision-language model on images and a PDF through the google-genai SDK, then ask it about an image.

    python examples/multimodal_tuning.py                  # no arguments: everything below, then it stops its server
    python examples/multimodal_tuning.py --base-model /path/to/SmolVLM-256M-Instruct   # a real model's directory

1. Builds a tiny random SmolVLM (tunery.tiny_vlm; no model hub is needed) unless --base-model names a real one.
2. Writes a JSONL of colour questions: images inline (base64) and by path, and one PDF page.
3. Starts `tunery serve` on a free port with a home of its own, and tunes through the google-genai SDK (Vertex AI).
4. Asks the tuned endpoint `generate_content([image, "Which colour?"])` and counts the image's tokens.
5. Stops the server (by its process id) and removes its home unless --keep.

With the tiny random model the answers only show the flow works (it learns "red"/"blue" from 9 examples, no more).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_data(folder: Path) -> tuple[Path, bytes]:
    from PIL import Image, ImageDraw

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    png = {}
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 60, 220))):
        im = Image.new("RGB", (40, 32), colour)
        ImageDraw.Draw(im).ellipse((8, 6, 30, 26), fill=(250, 250, 250))
        im.save(images / f"{name}.png")
        png[name] = (images / f"{name}.png").read_bytes()
    Image.open(images / "red.png").convert("RGB").save(images / "red.pdf")  # a one-page PDF
    rows = []
    for i in range(8):
        if i % 2 == 0:  # inline, as types.Part.from_bytes sends it
            part = {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png["red"]).decode()}}
            answer = "red"
        else:  # by path, relative to the dataset file
            part, answer = {"fileData": {"mimeType": "image/png", "fileUri": "images/blue.png"}}, "blue"
        rows.append({"contents": [{"role": "user", "parts": [part, {"text": "Which colour?"}]},
                                  {"role": "model", "parts": [{"text": answer}]}]})
    rows.append({"contents": [{"role": "user", "parts": [
        {"fileData": {"mimeType": "application/pdf", "fileUri": "images/red.pdf"}}, {"text": "Which colour?"}]},
        {"role": "model", "parts": [{"text": "red"}]}]})
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, png["blue"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-model", help="a vision-language model's Hugging Face directory (default: a tiny random SmolVLM)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--learning-rate-multiplier", type=float, default=5.0)
    ap.add_argument("--keep", action="store_true", help="keep the server's home (jobs, adapters) afterwards")
    args = ap.parse_args()

    import google.oauth2.credentials
    from google import genai
    from google.genai import types

    home = Path(tempfile.mkdtemp(prefix="tunery-multimodal-"))
    if args.base_model:
        model_dir = Path(args.base_model).resolve()
    else:
        from tunery import tiny_vlm

        model_dir = tiny_vlm.build(home / "tiny-smolvlm")
        print(f"built a tiny random SmolVLM in {model_dir}", flush=True)
    train, blue = write_data(home / "data")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tunery.cli", "serve", "--port", str(port), "--home", str(home),
                               "--allow-path", str(model_dir), "--engine", "torch"],
                              env={**os.environ, "TUNERY_HOME": str(home)}, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        client = genai.Client(vertexai=True, project="my-project", location="us-central1",
                              credentials=google.oauth2.credentials.Credentials(token="local-dev"),
                              http_options=types.HttpOptions(base_url=url))
        deadline = time.monotonic() + 120
        while True:
            try:
                client.tunings.list()
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
        job = client.tunings.tune(base_model=str(model_dir), training_dataset=types.TuningDataset(gcs_uri=str(train)),
                                  config=types.CreateTuningJobConfig(
                                      epoch_count=args.epochs, learning_rate_multiplier=args.learning_rate_multiplier,
                                      tuned_model_display_name="colours"))
        print(f"tuning job {job.name}", flush=True)
        while not job.has_ended:
            time.sleep(1)
            job = client.tunings.get(name=job.name)
        print(f"state: {job.state.name}", flush=True)
        if job.state.name != "JOB_STATE_SUCCEEDED":
            print(f"error: {job.error}", file=sys.stderr)
            return 1
        image = types.Part.from_bytes(data=blue, mime_type="image/png")
        answer = client.models.generate_content(model=job.tuned_model.endpoint, contents=[image, "Which colour?"])
        tokens = client.models.count_tokens(model=job.tuned_model.endpoint, contents=[image, "Which colour?"])
        print(f"tuned endpoint, blue image: {answer.text.strip()!r} ({tokens.total_tokens} prompt tokens with the image)")
        return 0
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the tuning processes it started
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept {home}")


if __name__ == "__main__":
    sys.exit(main())
