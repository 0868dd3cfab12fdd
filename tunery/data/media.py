"""Images, documents and audio in examples: what tunery reads, the limits, and the checks made before any compute.

A part is `inlineData {mimeType, data}` (base64) or `fileData {mimeType, fileUri}` (a local path, checked against the
allowed roots), as Vertex has them; OpenAI `image_url` parts (data URLs or paths) become the same. Parsing (pure,
per line) decodes base64 and reads inline images' headers; `check` (with the base model and the roots) adds what
needs them: the model's modalities and the files' headers. Headers only: a file is never read whole to validate it.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from tunery.data.schema import Media

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}
DOCUMENT_TYPES = {"application/pdf"}
AUDIO_TYPES = {"audio/wav": (b"RIFF",), "audio/x-wav": (b"RIFF",), "audio/wave": (b"RIFF",),
               "audio/mpeg": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"), "audio/mp3": (b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"),
               "audio/flac": (b"fLaC",), "audio/ogg": (b"OggS",)}
VIDEO_PREFIX = "video/"

# Limits (Vertex: 300K multimodal examples per training dataset; the per-file limits are the Gemini API's inline ones)
MAX_MULTIMODAL_EXAMPLES = 300_000
MAX_BYTES = {"image": 20 << 20, "document": 50 << 20, "audio": 100 << 20, "video": 100 << 20}
MAX_IMAGES_PER_EXAMPLE = 16  # images, counting each rendered PDF page as one
MAX_PDF_PAGES = 8  # pages of a document rendered to images
MAX_IMAGE_PIXELS = 50_000_000  # a larger header is refused before decoding (a decompression bomb)

MODALITY_NAMES = {"image": "vision encoder", "document": "vision encoder (documents are read as page images)",
                  "audio": "audio encoder tunery can use (audio is validated, not yet tuned or served)",
                  "video": "video encoder tunery can use (video is not read)"}


def modality(mime: str) -> str:
    if mime in IMAGE_TYPES:
        return "image"
    if mime in DOCUMENT_TYPES:
        return "document"
    if mime in AUDIO_TYPES:
        return "audio"
    if mime.startswith(VIDEO_PREFIX):
        return "video"
    return "unknown"


def known_types() -> str:
    return ", ".join(sorted([*IMAGE_TYPES, *DOCUMENT_TYPES, *AUDIO_TYPES]))


Report = Callable[[str, str, str, str], None]  # (pointer, code, message, hint)


def decode_inline(mime: str, data: str, ptr: str, error: Report, url: bool = False) -> Media | None:
    """`inlineData`: base64 (the standard or the URL-safe alphabet, as the SDKs write it) of a type tunery reads.
    `url`: the part is a data URL, whose errors point at the URL itself."""
    data_ptr, mime_ptr = (ptr, ptr) if url else (f"{ptr}/data", f"{ptr}/mimeType")
    if modality(mime) == "unknown":
        error(mime_ptr, "unsupported_mime_type", f"expected one of {known_types()}, found {mime!r}", "")
        return None
    try:
        raw = base64.b64decode(data.replace("-", "+").replace("_", "/") + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        error(data_ptr, "bad_base64", f"expected base64-encoded bytes, found text that does not decode ({exc})",
              "encode the file's bytes with base64 (e.g. base64.b64encode(open(path, 'rb').read()).decode())")
        return None
    media = Media(mime, data=raw, pointer=ptr)
    return media if check_bytes(media, len(raw), io.BytesIO(raw), data_ptr, error) else None


def parse_uri(mime: str, uri: str, ptr: str, error: Report) -> Media | None:
    if modality(mime) == "unknown":
        error(f"{ptr}/mimeType", "unsupported_mime_type", f"expected one of {known_types()}, found {mime!r}", "")
        return None
    return Media(mime, uri=uri, pointer=ptr)


def parse_data_url(url: str, ptr: str, error: Report) -> Media | None:
    """An OpenAI `image_url.url`: `data:<mime>;base64,<data>`, or a path (file:// or absolute)."""
    if url.startswith("data:"):
        head, _, data = url[5:].partition(",")
        mime, _, enc = head.partition(";")
        if enc != "base64":
            error(ptr, "bad_base64", f"expected a data URL 'data:<mime type>;base64,...', found {url[:40]!r}", "")
            return None
        return decode_inline(mime.lower(), data, ptr, error, url=True)
    guess = _mime_of(url)
    if guess is None:
        error(ptr, "unsupported_mime_type", f"expected an image path ending in .png, .jpg, .jpeg, .webp or .gif, "
              f"found {url[:80]!r}", "or send the image inline as a data URL")
        return None
    return Media(guess, uri=url, pointer=ptr)


def _mime_of(path: str) -> str | None:
    ext = os.path.splitext(urlparse(path).path)[1].lower()
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
            ".gif": "image/gif", ".pdf": "application/pdf", ".wav": "audio/wav", ".mp3": "audio/mpeg"}.get(ext)


def check_bytes(media: Media, size: int, stream, ptr: str, error: Report) -> bool:
    """Size and header of one part's bytes: an image's format and dimensions, a document's or audio file's magic."""
    kind = media.modality
    if size > MAX_BYTES[kind]:
        error(ptr, "media_too_large", f"expected a {kind} of at most {MAX_BYTES[kind] >> 20} MiB, found "
              f"{size / (1 << 20):.1f} MiB", "downscale or split it")
        return False
    if kind == "image":
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():  # the pixel limit is checked below, with an error that says where
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(stream) as im:  # reads the header only
                    found, (w, h) = im.format, im.size
        except Image.DecompressionBombError as exc:
            error(ptr, "media_too_large", f"expected an image of at most {MAX_IMAGE_PIXELS:,} pixels, found {exc}",
                  "downscale it")
            return False
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            error(ptr, "unreadable_image", f"expected {IMAGE_TYPES[media.mime]} image data ({media.mime}), found "
                  f"bytes that are not an image ({type(exc).__name__})", "check the file and its mimeType")
            return False
        if found != IMAGE_TYPES[media.mime]:
            error(ptr, "unreadable_image", f"expected {IMAGE_TYPES[media.mime]} image data ({media.mime}), found "
                  f"{found} data", f"set mimeType to image/{(found or 'unknown').lower()}")
            return False
        if w * h > MAX_IMAGE_PIXELS:
            error(ptr, "media_too_large", f"expected an image of at most {MAX_IMAGE_PIXELS:,} pixels, found {w}x{h}",
                  "downscale it")
            return False
        return True
    head = stream.read(16)
    if kind == "document" and not head.startswith(b"%PDF-"):
        error(ptr, "unreadable_media", f"expected PDF data (application/pdf), found bytes starting {head[:8]!r}", "")
        return False
    if kind == "audio" and not head.startswith(AUDIO_TYPES[media.mime]):
        error(ptr, "unreadable_media", f"expected {media.mime} data, found bytes starting {head[:8]!r}", "")
        return False
    return True


@dataclass(frozen=True)
class Policy:
    """What a dataset's media are checked against: the base model's modalities and the roots files may be under
    (None: any local path, for the CLI on the user's own files)."""

    modalities: frozenset[str]
    roots: tuple[Path, ...] | None = None
    model: str = "the base model"
    base_dir: Path | None = None  # what relative paths are relative to: the dataset's folder


def local_path(uri: str, base_dir: Path | None = None) -> Path | None:
    """The path a fileUri names (file://, absolute, or relative to the dataset's folder), None for remote schemes
    (gs://, s3://, http...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        return None
    path = Path(uri)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def absolute(ex, base_dir: Path):
    """The example with its relative file paths made absolute (training reads them away from the dataset)."""
    from dataclasses import replace

    if not any(m.uri for m in ex.media):
        return ex
    fix = lambda m: replace(m, uri=str(local_path(m.uri, base_dir))) if m.uri and local_path(m.uri, base_dir) else m  # noqa: E731
    return replace(ex, turns=tuple(replace(t, media=tuple(fix(m) for m in t.media)) for t in ex.turns))


def check(media: tuple[Media, ...], policy: Policy, error: Report) -> None:
    """The checks that need the base model and the roots: modality, file location and header, images per example."""
    images = 0
    for m in media:
        kind = m.modality
        if kind not in policy.modalities:
            error(m.pointer, "unsupported_modality",
                  f"{policy.model} has no {MODALITY_NAMES.get(kind, kind)}, so it cannot take {m.mime} parts",
                  "use a vision-language base model (a local Hugging Face directory), or remove the part")
            continue
        images += MAX_PDF_PAGES if kind == "document" else kind == "image"
        if images > MAX_IMAGES_PER_EXAMPLE:
            error(m.pointer, "too_many_images", f"expected at most {MAX_IMAGES_PER_EXAMPLE} images per example "
                  f"(a PDF counts as {MAX_PDF_PAGES} pages), found more from this part on", "split the example")
            return
        if m.uri is None:
            continue
        path = local_path(m.uri, policy.base_dir)
        ptr = f"{m.pointer}/fileUri" if m.pointer.endswith("fileData") or m.pointer.endswith("file_data") else m.pointer
        if path is None:
            error(ptr, "unsupported_uri", f"expected a local path (absolute, relative to the dataset, or file://), "
                  f"found {m.uri!r}", "copy the file under an allowed root and name its path")
            continue
        if policy.roots is not None:
            real = Path(os.path.realpath(path))
            if not any(real == r or r in real.parents for r in policy.roots):
                error(ptr, "file_outside_roots", f"expected a path under {', '.join(map(str, policy.roots))}, "
                      f"found {path}", "the server reads files only under its allowed roots (--allowed-root)")
                continue
        if not path.is_file():
            error(ptr, "file_not_found", f"expected a file at {path}, found none", "")
            continue
        with open(path, "rb") as f:
            check_bytes(m, path.stat().st_size, f, ptr, error)


def read(m: Media) -> bytes:
    if m.data is not None:
        return m.data
    path = local_path(m.uri or "")
    if path is not None and not path.is_absolute():
        raise ValueError(f"{m.uri}: a relative path read without its dataset's folder")
    if path is None:
        raise ValueError(f"{m.uri}: not a local file")
    return path.read_bytes()


def images_of(m: Media) -> list:
    """The PIL images a part stands for: the image, or a document's first MAX_PDF_PAGES pages rendered."""
    from PIL import Image

    if m.modality == "image":
        im = Image.open(io.BytesIO(read(m)))
        im.load()
        return [im.convert("RGB")]
    if m.modality == "document":
        import pypdfium2 as pdfium

        pdf = pdfium.PdfDocument(read(m))
        try:
            return [pdf[i].render(scale=1.0).to_pil().convert("RGB") for i in range(min(len(pdf), MAX_PDF_PAGES))]
        finally:
            pdf.close()
    raise ValueError(f"{m.mime}: not an image or a document")
