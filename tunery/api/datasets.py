"""Dataset URIs: which ones a server may open, resolved before anything is read."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

from tunery.api.errors import ApiError

REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}


def resolve(uri: str, field: str, allowed_roots: list[Path], allow_http: bool) -> str:
    """A local path under an allowed root (after symlinks), or a remote URI the server is set up to read.
    Raises 400 (malformed or missing), 403 (outside the roots, or a scheme that is off)."""
    if not isinstance(uri, str) or not uri.strip():
        raise ApiError(400, f"{field}: expected a dataset URI, found {uri!r}")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""  # "C:" is not a scheme
    if scheme in REMOTE_SCHEMES:
        if importlib.util.find_spec(REMOTE_SCHEMES[scheme]) is None:
            raise ApiError(400, f"{field}: reading {scheme}:// needs the {REMOTE_SCHEMES[scheme]} package "
                                f"(pip install {REMOTE_SCHEMES[scheme]}) on the server")
        return uri
    if scheme in ("http", "https"):
        if not allow_http:
            raise ApiError(403, f"{field}: http(s) datasets are off; start the server with --allow-http-datasets")
        return uri
    if scheme not in ("", "file"):
        raise ApiError(400, f"{field}: unsupported scheme {scheme}://; use a local path, file://, gs:// or s3://")
    raw = unquote(parsed.path) if scheme == "file" else uri
    path = Path(os.path.realpath(Path(raw).expanduser()))
    if not any(path == root or root in path.parents for root in allowed_roots):
        roots = ", ".join(str(r) for r in allowed_roots)
        raise ApiError(403, f"{field}: {raw} is outside the directories this server may read ({roots}); "
                            "start the server with --allow-path DIR to allow another directory")
    if not path.is_file():
        raise ApiError(400, f"{field}: {raw}: file not found")
    return str(path)


def fetch(uri: str, dest_dir: Path) -> str:
    """A local path for the tuning process: remote URIs are copied into `dest_dir` first (give each dataset of a
    job its own folder: a train and a validation file may share a basename)."""
    scheme = urlparse(uri).scheme.lower()
    if scheme not in REMOTE_SCHEMES and scheme not in ("http", "https"):
        return uri
    import fsspec

    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / (Path(urlparse(uri).path).name or "dataset.jsonl")
    tmp = target.with_name(f".{target.name}.part")  # a killed copy never passes for the dataset
    with fsspec.open(uri, "rb") as src, open(tmp, "wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
    return str(target)
