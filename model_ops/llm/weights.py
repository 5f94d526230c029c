"""What a directory of LLM weights is, read from safetensors headers and config files, never by loading tensors.

A **base model** is a directory holding one or more ``*.safetensors`` shards and a ``config.json`` (the Hugging
Face layout). Its *tensor table* lists every tensor's name, dtype and shape across the shards; its *architecture
fingerprint* is the SHA-256 of that table with the architecture named in ``config.json``, so two bases with the
same fingerprint accept the same adapters, whatever their weights' values.

An **adapter** (LoRA / QLoRA in the PEFT layout) is a directory with ``adapter_config.json`` (``peft_type``,
``base_model_name_or_path``, ``r``, ``target_modules``) and ``adapter_model.safetensors``; see
:mod:`model_ops.llm.adapters` for how it is checked against a base.

Weight files that unpickle on load (``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl``) can run code when read; they
are refused unless the registry's policy allows them (``allow_pickle_weights: true``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_ops.errors import UsageError
from model_ops.llm.layout import CONFIG_FILE

_MAX_CONFIG_BYTES = 16 << 20


@dataclass(frozen=True)
class Tensor:
    dtype: str
    shape: tuple[int, ...]

    @property
    def elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of one safetensors file by name, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            found = {}
            for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                piece = f.get_slice(key)
                found[key] = Tensor(str(piece.get_dtype()), tuple(int(d) for d in piece.get_shape()))
            return found
    except (SafetensorError, OSError) as e:
        raise UsageError(
            f"{path} is not a readable safetensors file: {e}",
            hint="weights must be in the safetensors format (save them with safetensors' save_file)",
        ) from None


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise UsageError(f"{path} is larger than a {what} can be ({_MAX_CONFIG_BYTES >> 20} MiB)")
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path.parent} has no {path.name}", hint=f"a {what} is read from {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{path} is not valid JSON: {e}", hint=f"fix the {what} file") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path} holds {type(doc).__name__}, not a JSON object", hint=f"fix the {what} file")
    return doc


@dataclass(frozen=True)
class BaseModel:
    """A base model's architecture as read from its directory."""

    architecture: str
    tensors: dict[str, Tensor]

    @classmethod
    def read(cls, directory: Path) -> BaseModel:
        config = read_json(directory / CONFIG_FILE, "base model's config")
        architecture = _architecture(config)
        tensors: dict[str, Tensor] = {}
        shards = sorted(directory.rglob("*.safetensors"))
        if not shards:
            raise UsageError(f"{directory} holds no .safetensors file", hint="a base model's weights are safetensors")
        for shard in shards:
            for name, tensor in read_tensors(shard).items():
                if name in tensors:
                    raise UsageError(
                        f"tensor {name!r} is in more than one shard of {directory} (again in {shard.name})",
                        hint="each tensor belongs to exactly one shard",
                    )
                tensors[name] = tensor
        return cls(architecture, tensors)

    def table(self) -> dict[str, Any]:
        """The canonical tensor table: what the fingerprint is the digest of, and what adapters are checked on."""
        return {
            "architecture": self.architecture,
            "tensors": {name: [t.dtype, list(t.shape)] for name, t in sorted(self.tensors.items())},
        }

    def table_bytes(self) -> bytes:
        return json.dumps(self.table(), sort_keys=True, separators=(",", ":")).encode()

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.table_bytes()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What a base model's version records: enough to show, compare and check without its files."""
        dtypes = sorted({t.dtype for t in self.tensors.values()})
        return {
            "architecture": self.architecture,
            "fingerprint": self.fingerprint,
            "tensors": len(self.tensors),
            "parameters": sum(t.elements for t in self.tensors.values()),
            "dtypes": dtypes,
        }

    @classmethod
    def from_table(cls, data: bytes) -> BaseModel:
        doc = json.loads(data)
        return cls(
            str(doc["architecture"]),
            {name: Tensor(str(dtype), tuple(int(d) for d in shape)) for name, (dtype, shape) in doc["tensors"].items()},
        )


def _architecture(config: Mapping[str, Any]) -> str:
    architectures = config.get("architectures")
    if isinstance(architectures, list) and architectures and all(isinstance(a, str) for a in architectures):
        return ",".join(architectures)
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type:
        return model_type
    raise UsageError(
        "the base model's config.json names no architecture",
        hint='give "architectures": ["LlamaForCausalLM"] (or "model_type") in config.json',
    )
