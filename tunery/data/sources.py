"""Dataset URIs: which ones a server may open, resolved before anything is read; and the copy a tuning process
reads. Local paths only under the allowed roots; gs:// and s3:// only from allowed buckets; http(s) only when
turned on, and never to this machine or its private network (SSRF)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlparse

from tunery.errors import RequestError

REMOTE_SCHEMES = {"gs": "gcsfs", "s3": "s3fs"}


def resolve(uri: str, field: str, allowed_roots: list[Path], allow_http: bool,
            allowed_buckets: tuple[str, ...] = ()) -> str:
    """A local path under an allowed root (after symlinks), or a remote URI the server is set up to read.
    Raises RequestError: INVALID_ARGUMENT (malformed or missing), PERMISSION_DENIED (outside the roots or the
    buckets, a scheme that is off, an address that is not public)."""
    if not isinstance(uri, str) or not uri.strip():
        raise RequestError(field, f"expected a dataset URI, found {uri!r}")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""  # "C:" is not a scheme
    if scheme in REMOTE_SCHEMES:
        if parsed.netloc not in allowed_buckets and "*" not in allowed_buckets:
            raise RequestError(field, f"bucket {scheme}://{parsed.netloc} is not one this server may read; start it "
                                      f"with --allow-bucket {parsed.netloc}", status="PERMISSION_DENIED")
        if importlib.util.find_spec(REMOTE_SCHEMES[scheme]) is None:
            raise RequestError(field, f"reading {scheme}:// needs the {REMOTE_SCHEMES[scheme]} package "
                                      f"(pip install {REMOTE_SCHEMES[scheme]}) on the server")
        return uri
    if scheme in ("http", "https"):
        if not allow_http:
            raise RequestError(field, "http(s) datasets are off; start the server with --allow-http-datasets",
                               status="PERMISSION_DENIED")
        public_host(parsed.hostname or "", field)
        return uri
    if scheme not in ("", "file"):
        raise RequestError(field, f"unsupported scheme {scheme}://; use a local path, file://, gs:// or s3://")
    raw = unquote(parsed.path) if scheme == "file" else uri
    if raw.startswith("~") and os.path.expanduser(raw) == raw:  # ~user of no such user: not a path in the cwd
        raise RequestError(field, f"{raw}: no such user's home directory")
    try:
        path = Path(os.path.realpath(os.path.expanduser(raw)))
    except ValueError as exc:  # a NUL byte
        raise RequestError(field, f"{raw!r:.200}: not a usable path ({exc})") from exc
    if not any(path == root or root in path.parents for root in allowed_roots):
        roots = ", ".join(str(r) for r in allowed_roots)
        raise RequestError(field, f"{raw} is outside the directories this server may read ({roots}); start the "
                                  "server with --allow-path DIR to allow another directory", status="PERMISSION_DENIED")
    if not path.is_file():
        raise RequestError(field, f"{raw}: file not found")
    return str(path)


def public_host(host: str, field: str) -> list[str]:
    """The addresses `host` resolves to, refused when any is loopback, link-local, private or otherwise not a
    public address: a dataset URL must not make the server read from itself or its private network."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise RequestError(field, f"cannot resolve the host {host!r:.200}: {exc}") from exc
    addresses = sorted({info[4][0] for info in infos})
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if not ip.is_global:
            raise RequestError(field, f"{host} resolves to {address}, which is not a public address; dataset URLs "
                                      "may not point at this machine or its private network", status="PERMISSION_DENIED")
    return addresses


def fetch(uri: str, dest_dir: Path) -> str:
    """A local path for the tuning process: remote URIs are copied into `dest_dir` first (give each dataset of a
    job its own folder: a train and a validation file may share a basename). An http(s) host is checked again
    here, as it may resolve elsewhere since the job was created."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme not in REMOTE_SCHEMES and scheme not in ("http", "https"):
        return uri
    if scheme in ("http", "https"):
        public_host(parsed.hostname or "", "dataset")
    import fsspec

    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / (Path(parsed.path).name or "dataset.jsonl")
    tmp = target.with_name(f".{target.name}.part")  # a killed copy never passes for the dataset
    with fsspec.open(uri, "rb") as src, open(tmp, "wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
    return str(target)
