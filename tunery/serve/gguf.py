"""GGUF files for llama.cpp: a base model at full precision, a tuned LoRA adapter, the two merged, and an Ollama
Modelfile.

A registry model ships as a quantized GGUF, and the weights tunery trains on are that file dequantized to float32.
The base GGUF llama.cpp serves is the same file dequantized tensor by tensor (its metadata and vocabulary copied
as they are), so llama.cpp and training see the same weights: exactly in f32; in f16 with each weight rounded to
11 significant bits. A PEFT adapter becomes a GGUF LoRA adapter (`adapter.gguf`) the way llama.cpp's
`convert_lora_to_gguf.py` writes one: `<tensor>.lora_a` (rank x in) and `<tensor>.lora_b` (out x rank) per adapted
weight, `adapter.lora.alpha`; for the `llama` architecture the rows of q and k are permuted as llama.cpp's
converter permutes the base weights (rotary halves interleaved), which for W = B·A means permuting the rows of B.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunery import models
from tunery.errors import TuneryError
from tunery.train.checkpoints import MANIFEST

log = logging.getLogger("tunery")
ADAPTER_FILE = "adapter.gguf"
DTYPES = ("f16", "f32")
_PERMUTE_QK = {"llama"}  # architectures whose q/k rows llama.cpp's converter permutes (LlamaModel.permute)
_VERSION = 2  # bump when the written files change: cached conversions are rebuilt


class NotConvertible(TuneryError):
    """This base model or adapter cannot become a GGUF file for llama.cpp."""

    code = "failed_precondition"


def convertible(spec: models.BaseModelSpec) -> bool:
    """Whether llama.cpp can serve this base model: it comes from a GGUF file (a registry model or a .gguf path)."""
    return spec.kind == "gguf"


def base_gguf(spec: models.BaseModelSpec, dtype: str = "f16") -> Path:
    """The base model as a GGUF at full precision (f16 or f32), converted once and cached beside its safetensors."""
    if not convertible(spec):
        raise NotConvertible(f"{spec.name}: llama.cpp serves models that come from a GGUF file; this one is a "
                             f"{spec.kind} model", hint="serve it with --engine torch, or name its .gguf file")
    if dtype not in DTYPES:
        raise NotConvertible(f"GGUF dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    source, sha = models.verified_gguf(spec)
    target = models._cache_root(spec, sha) / f"model-{dtype}-v{_VERSION}.gguf"
    if not target.is_file():
        with models.one_builder(target):
            if not target.is_file():
                log.info("writing %s at %s for llama.cpp (once)", source.name, dtype)
                write_file(target, lambda tmp: _dequantized(source, tmp, dtype))
    return target


def _dequantized(source: Path, out: Path, dtype: str) -> None:
    _rewrite(source, out, dtype)


def write_file(target: Path, write) -> Path:
    """`write(tmp)` into a temp file beside `target`, fsync, then one rename: a half-written GGUF is never seen."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass
class _Tensor:
    name: str
    dims: tuple[int, ...]  # ne: the row length first
    kind: int  # GGMLQuantizationType
    offset: int  # from the start of the data section


@dataclass
class _Layout:
    """Where things are in a GGUF file, read straight from its header. gguf's GGUFReader builds a numpy view per
    vocabulary entry: 6.6 s for SmolLM2's 49,152 tokens; this takes 0.1 s."""
    version: int
    n_kv: int
    kv: dict[str, Any]  # scalar values (arrays skipped)
    kv_bytes: tuple[int, int]  # the metadata section, to copy as it is
    file_type_at: int | None  # where general.file_type's uint32 value is
    tensors: list[_Tensor]
    data_start: int


def _layout(path: Path) -> _Layout:
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise NotConvertible(f"{path}: not a GGUF file")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        pos, kv, file_type_at = 24, {}, None

        def string(at: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, at)
            return buf[at + 8:at + 8 + n].decode("utf-8", "replace"), at + 8 + n

        def value(kind: int, at: int) -> tuple[Any, int]:
            if kind == 8:
                return string(at)
            if kind == 9:  # arrays are skipped: only their place is needed
                sub, count = struct.unpack_from("<IQ", buf, at)
                at += 12
                if sub in _SCALARS:
                    return None, at + count * struct.calcsize(_SCALARS[sub])
                for _ in range(count):
                    _, at = value(sub, at)
                return None, at
            fmt = _SCALARS[kind]
            return struct.unpack_from(fmt, buf, at)[0], at + struct.calcsize(fmt)

        for _ in range(n_kv):
            key, pos = string(pos)
            (kind,) = struct.unpack_from("<I", buf, pos)
            if key == "general.file_type" and kind == 4:
                file_type_at = pos + 4
            kv[key], pos = value(kind, pos + 4)
        kv_end, tensors = pos, []
        for _ in range(n_tensors):
            name, pos = string(pos)
            (n_dims,) = struct.unpack_from("<I", buf, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
            kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
            tensors.append(_Tensor(name, tuple(dims), kind, offset))
            pos += 4 + 8 * n_dims + 12
        align = int(kv.get("general.alignment", 32))
    return _Layout(version, n_kv, {k: v for k, v in kv.items() if v is not None}, (24, kv_end), file_type_at,
                   tensors, -(-pos // align) * align)


def header(path: Path) -> tuple[dict[str, Any], list[str]]:
    """A GGUF file's scalar metadata and its tensor names."""
    layout = _layout(path)
    return layout.kv, [t.name for t in layout.tensors]


def _rewrite(source: Path, out: Path, dtype: str, change: Callable[[str, np.ndarray], np.ndarray] | None = None) -> None:
    """Copy a GGUF with every tensor dequantized to `dtype` (1-d ones, norms, kept in f32 as llama.cpp's
    converter keeps them) and `change(name, float32 weights)` applied: the metadata bytes (vocabulary included)
    copied as they are but for general.file_type."""
    import struct

    import gguf

    layout = _layout(source)
    align = int(layout.kv.get("general.alignment", 32))
    f16, f32 = int(gguf.GGMLQuantizationType.F16), int(gguf.GGMLQuantizationType.F32)
    kinds = [f16 if dtype == "f16" and len(t.dims) > 1 else f32 for t in layout.tensors]
    sizes = [int(np.prod(t.dims)) * (2 if k == f16 else 4) for t, k in zip(layout.tensors, kinds)]
    raw = np.memmap(source, dtype=np.uint8, mode="r")
    meta = bytearray(raw[layout.kv_bytes[0]:layout.kv_bytes[1]])
    if layout.file_type_at is not None:
        file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
        struct.pack_into("<I", meta, layout.file_type_at - layout.kv_bytes[0], int(file_type))
    infos, offset = bytearray(), 0
    for t, kind, size in zip(layout.tensors, kinds, sizes):
        name = t.name.encode()
        infos += struct.pack("<Q", len(name)) + name + struct.pack(f"<I{len(t.dims)}Q", len(t.dims), *t.dims)
        infos += struct.pack("<IQ", kind, offset)
        offset += -(-size // align) * align
    with open(out, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", layout.version, len(layout.tensors), layout.n_kv))
        f.write(meta)
        f.write(infos)
        f.write(b"\0" * (-f.tell() % align))
        for t, kind, size in zip(layout.tensors, kinds, sizes):
            w = _dequantize(raw, layout, t)
            if change is not None:
                w = change(t.name, w)
            data = (w.astype(np.float16) if kind == f16 else w.astype(np.float32)).tobytes()
            assert len(data) == size
            f.write(data)
            f.write(b"\0" * (-size % align))


def _dequantize(raw: np.ndarray, layout: _Layout, t: _Tensor) -> np.ndarray:
    """A tensor's weights in float32, shaped as numpy (and torch) order them: the row length last."""
    import gguf

    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(t.kind)]
    row_bytes = t.dims[0] // block * type_size
    rows = int(np.prod(t.dims[1:])) if len(t.dims) > 1 else 1
    start = layout.data_start + t.offset
    w = gguf.dequantize(raw[start:start + rows * row_bytes].reshape(rows, row_bytes), gguf.GGMLQuantizationType(t.kind))
    return w.reshape(tuple(reversed(t.dims)))


def tensors(path: Path) -> tuple[dict[str, Any], Iterator[tuple[str, np.ndarray]]]:
    """A GGUF file's scalar metadata, and its tensors one at a time, dequantized to float32 (what transformers'
    GGUF loader reads, without building a numpy view per vocabulary entry first)."""
    layout = _layout(path)
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    return layout.kv, ((t.name, _dequantize(raw, layout, t)) for t in layout.tensors)


def _write(writer: Any) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()


# ---------------------------------------------------------------- adapters

def adapter_gguf(adapter_dir: Path) -> Path:
    """`adapter_dir/adapter.gguf`, converted from the PEFT adapter when missing or older than it (atomic)."""
    adapter_dir = Path(adapter_dir)
    target = adapter_dir / ADAPTER_FILE
    weights = adapter_dir / "adapter_model.safetensors"
    if target.is_file() and (not weights.is_file() or target.stat().st_mtime >= weights.stat().st_mtime):
        return target
    spec = _adapter_base(adapter_dir)
    source, _ = models.verified_gguf(spec) if convertible(spec) else (None, None)
    if source is None:
        raise NotConvertible(f"{adapter_dir}: its base model {spec.name} is not a GGUF model llama.cpp serves")
    write_file(target, lambda tmp: write_adapter(adapter_dir, source, tmp))
    return target


def _adapter_base(adapter_dir: Path) -> models.BaseModelSpec:
    manifest = adapter_dir / MANIFEST
    if not manifest.is_file():
        raise NotConvertible(f"{adapter_dir}: no {MANIFEST}, so its base model is unknown")
    return models.resolve(json.loads(manifest.read_text())["base_model"]["name"])


def write_adapter(adapter_dir: Path, base: Path, out: Path) -> None:
    """Write the PEFT adapter in `adapter_dir` as a GGUF LoRA adapter for the base model GGUF `base`."""
    import gguf

    lora = lora_tensors(adapter_dir, base)
    writer = gguf.GGUFWriter(out, lora.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, lora.alpha)
    for name, (a, b) in lora.pairs.items():
        writer.add_tensor(f"{name}.lora_a", a)
        writer.add_tensor(f"{name}.lora_b", b)
    _write(writer)


class Lora:
    """An adapter in GGUF terms: {base tensor name: (A rank x in, B out x rank)}, float32, and llama.cpp's alpha."""

    def __init__(self, arch: str, pairs: dict[str, tuple[np.ndarray, np.ndarray]], alpha: float) -> None:
        self.arch, self.pairs, self.alpha = arch, pairs, alpha

    def delta(self, name: str) -> np.ndarray:
        a, b = self.pairs[name]
        return (b @ a) * (self.alpha / a.shape[0])


def lora_tensors(adapter_dir: Path, base: Path) -> Lora:
    """The adapter's A and B matrices under the base GGUF's tensor names, B permuted as the base's q/k are."""
    import gguf
    from safetensors.numpy import load_file

    meta, tensor_names = header(base)
    arch = meta["general.architecture"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank = int(config["r"])
    # llama.cpp scales by alpha / rank; PEFT by alpha / sqrt(rank) with rsLoRA
    alpha = float(config.get("lora_alpha", rank)) * (rank ** 0.5 if config.get("use_rslora") else 1.0)
    blocks, heads = int(meta[f"{arch}.block_count"]), int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    names = gguf.get_tensor_name_map({v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch], blocks)
    known = set(tensor_names)
    halves: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        module, _, part = key.removeprefix("base_model.model.").rpartition(".lora_")
        if part not in ("A.weight", "B.weight"):
            raise NotConvertible(f"{adapter_dir}: tensor {key} is not a LoRA A or B matrix")
        halves.setdefault(module, {})[part[0]] = value.astype(np.float32)
    pairs = {}
    for module, ab in halves.items():
        name = names.get_name(module)
        if name is None or f"{name}.weight" not in known or set(ab) != {"A", "B"}:
            raise NotConvertible(f"{adapter_dir}: adapted layer {module} has no tensor in the base GGUF")
        b = ab["B"]
        if arch in _PERMUTE_QK and name.endswith(("attn_q", "attn_k")):
            b = _permute(b, heads if name.endswith("attn_q") else kv_heads)
        pairs[f"{name}.weight"] = (np.ascontiguousarray(ab["A"]), np.ascontiguousarray(b))
    return Lora(arch, pairs, alpha)


def _permute(rows: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (convert_hf_to_gguf LlamaModel.permute)."""
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


# ---------------------------------------------------------------- export

def write_merged(adapter_dir: Path, base: Path, out: Path, dtype: str = "f16") -> None:
    """One GGUF with the adapter merged into the base weights (what `ollama create` or llama-cli load alone)."""
    lora = lora_tensors(adapter_dir, base)
    _rewrite(base, out, dtype, lambda name, w: w + lora.delta(name) if name in lora.pairs else w)


def modelfile(template_family: str, stop: str, model: str, adapter: str | None, system: str | None) -> str:
    """An Ollama Modelfile: FROM, ADAPTER, TEMPLATE (the chat template tunery trained with), PARAMETER stop."""
    template = _OLLAMA_TEMPLATES[template_family]
    lines = [f"FROM {model}"] + ([f"ADAPTER {adapter}"] if adapter else [])
    lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{stop}"', "PARAMETER temperature 0"]
    return "\n".join(lines) + "\n"


# Ollama's Go templates for the chat formats tunery trains (text/chat_template.py TEMPLATES)
_OLLAMA_TEMPLATES = {
    "chatml": ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
               "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
               "<|im_start|>assistant\n"),
    "gemma": ("{{- range $i, $m := .Messages }}<start_of_turn>{{ if eq $m.Role \"assistant\" }}model{{ else }}"
              "{{ $m.Role }}{{ end }}\n{{ if and $.System (eq $i 0) }}{{ $.System }}\n\n{{ end }}{{ $m.Content }}"
              "<end_of_turn>\n{{ end }}<start_of_turn>model\n"),
}


def export(adapter_dir: Path, out: Path, dtype: str = "f16") -> dict[str, Path]:
    """Everything llama.cpp and Ollama need for a tuned model, in `out` (atomic):
    `adapter.gguf` (the LoRA adapter, for the base GGUF), `model.gguf` (base and adapter merged, standalone),
    `Modelfile` (Ollama: FROM model.gguf) and `Modelfile.adapter` (Ollama: FROM the base GGUF, ADAPTER adapter.gguf)."""
    from tunery.train.checkpoints import write_atomically

    adapter_dir = Path(adapter_dir)
    spec = _adapter_base(adapter_dir)
    base = base_gguf(spec, dtype)
    template = models.load_template(spec).spec
    system = template.default_system

    def write(tmp: Path) -> None:
        write_adapter(adapter_dir, base, tmp / ADAPTER_FILE)
        write_merged(adapter_dir, base, tmp / "model.gguf", dtype)
        (tmp / "Modelfile").write_text(modelfile(template.name, template.end, "./model.gguf", None, system))
        (tmp / "Modelfile.adapter").write_text(modelfile(template.name, template.end, str(base), f"./{ADAPTER_FILE}",
                                                         system))

    write_atomically(Path(out), write)
    return {"adapter": out / ADAPTER_FILE, "merged": out / "model.gguf", "modelfile": out / "Modelfile",
            "base": base}
