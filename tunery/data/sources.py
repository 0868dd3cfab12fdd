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


def writable_dir(uri: str, field: str, allowed_roots: list[Path]) -> Path:
    """A local directory (a path or file:// URI, made if missing) under an allowed root, after symlinks."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower() if len(parsed.scheme) > 1 else ""
    if scheme not in ("", "file"):
        raise RequestError(field, f"expected a local directory or file:// URI, found {scheme}://")
    raw = unquote(parsed.path) if scheme == "file" else uri
    try:
        path = Path(os.path.realpath(os.path.expanduser(raw)))
    except ValueError as exc:  # a NUL byte
        raise RequestError(field, f"{raw!r:.200}: not a usable path ({exc})") from exc
    if not raw or not any(path == root or root in path.parents for root in allowed_roots):
        roots = ", ".join(str(r) for r in allowed_roots)
        raise RequestError(field, f"{raw or '(empty)'} is outside the directories this server may write ({roots})",
                           status="PERMISSION_DENIED")
    if path.exists() and not path.is_dir():
        raise RequestError(field, f"{raw}: not a directory")
    return path


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
    job its own folder: a train and a validation file may share a basename)."""
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme not in REMOTE_SCHEMES and scheme not in ("http", "https"):
        return uri
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / (Path(parsed.path).name or "dataset.jsonl")
    tmp = target.with_name(f".{target.name}.part")  # a killed copy never passes for the dataset
    try:
        with open(tmp, "wb") as out:
            if scheme in REMOTE_SCHEMES:
                import fsspec

                with fsspec.open(uri, "rb") as src:
                    while block := src.read(1 << 20):
                        out.write(block)
            else:
                _download(uri, out)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return str(target)


MAX_REDIRECTS = 5


def _download(url: str, out) -> None:
    """GET an http(s) dataset, following redirects one by one: every host on the way is checked again (it may
    resolve elsewhere since the job was created, and a public URL may redirect to a private one)."""
    import httpx

    for _ in range(MAX_REDIRECTS + 1):
        public_host(urlparse(url).hostname or "", "dataset")
        with httpx.stream("GET", url, follow_redirects=False, timeout=60) as r:
            if r.is_redirect and "location" in r.headers:
                url = str(r.url.join(r.headers["location"]))
                if urlparse(url).scheme.lower() not in ("http", "https"):
                    raise RequestError("dataset", f"a redirect to {url!r:.200}: only http(s) is followed")
                continue
            r.raise_for_status()
            for block in r.iter_bytes(1 << 20):
                out.write(block)
            return
    raise RequestError("dataset", f"more than {MAX_REDIRECTS} redirects")
