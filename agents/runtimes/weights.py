"""Local safetensors weights for the Transformer: load a file or a directory, save for tests.

Nothing here touches the network. A directory may hold several ``*.safetensors`` shards
and a ``config.json`` whose keys are ModelConfig fields (merged under the spec's config).
"""

from __future__ import annotations

import ctypes
import json
import struct
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

# safetensors' own writer imports numpy, which a serving node need not have; the format
# is simple enough to write directly: u64 header length, JSON header, raw little-endian data.
SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def read_config_json(path: str | Path) -> dict[str, Any]:
    """``config.json`` next to the weights (in the directory, or beside a file), or ``{}``."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"model path {str(path)!r} does not exist")
    candidate = (path if path.is_dir() else path.parent) / "config.json"
    if not candidate.is_file():
        return {}
    try:
        data = json.loads(candidate.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {candidate}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{candidate} must hold a JSON object")
    return data


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files at ``path``: the file itself, or a directory's ``*.safetensors`` sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files
        raise ValueError(f"no *.safetensors files in directory {str(path)!r}")
    raise ValueError(f"model path {str(path)!r} does not exist")


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    """Copy the tensors at ``path`` into ``model``; every parameter must be present with its shape.

    Errors name the missing and unexpected tensor names (a few of each) so that a
    checkpoint from another naming scheme is diagnosed at once.
    """
    tensors: dict[str, torch.Tensor] = {}
    for file in weight_files(path):
        for name, tensor in load_file(str(file), device="cpu").items():
            if name in tensors:
                raise ValueError(f"tensor {name!r} appears in more than one file under {path}")
            tensors[name] = tensor
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors: {_few(unexpected)}")
        raise ValueError(f"weights at {path} do not match the model config; " + "; ".join(parts))
    for name, target in expected.items():
        if tensors[name].shape != target.shape:
            raise ValueError(
                f"tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                f"the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for name, target in expected.items():
            target.copy_(tensors[name].to(target.dtype))


def save_weights(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model``'s state as one safetensors file (``path`` a file, or a directory to put
    ``model.safetensors`` and ``config.json`` in). Returns the weights file."""
    path = Path(path)
    state = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    if path.suffix != ".safetensors":
        path.mkdir(parents=True, exist_ok=True)
        config = getattr(model, "config", None)
        if config is not None:
            from dataclasses import asdict

            (path / "config.json").write_text(json.dumps(asdict(config), indent=2))
        path = path / "model.safetensors"
    write_safetensors(state, path)
    return path


def write_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Write ``tensors`` in the safetensors format without numpy (little-endian hosts)."""
    if sys.byteorder != "little":
        raise RuntimeError("write_safetensors supports little-endian hosts only")
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}, which safetensors cannot store")
        size = tensor.numel() * tensor.element_size()
        blob = ctypes.string_at(tensor.data_ptr(), size) if size else b""
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        blobs.append(blob)
        offset += size
    header["__metadata__"] = {"format": "pt"}
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for blob in blobs:
            out.write(blob)


def _few(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")
