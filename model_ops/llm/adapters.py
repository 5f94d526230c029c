"""LoRA adapters in the PEFT layout, and whether one fits a base model.

An adapter's ``adapter_model.safetensors`` holds, for each adapted module, a pair ``<module>.lora_A.weight`` of
shape ``(r, in_features)`` and ``<module>.lora_B.weight`` of shape ``(out_features, r)``, under PEFT's
``base_model.model.`` prefix; the module's own weight in the base is ``<module>.weight`` of shape
``(out_features, in_features)``. An adapter fits a base when every pair names a module the base has and its
shapes agree with that module's weight, and every module ``target_modules`` asks for exists in the base: the check
vLLM's resolvers leave to the name in ``base_model_name_or_path``, done here on the tensors themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_ops.errors import UsageError
from model_ops.llm.layout import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from model_ops.llm.weights import BaseModel, Tensor, read_json, read_tensors

PEFT_TYPES = ("LORA",)  # QLoRA adapters are LoRA adapters trained over a quantized base: PEFT writes "LORA"
_PREFIX = "base_model.model."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<half>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")
_SHOWN = 5


@dataclass(frozen=True)
class Adapter:
    peft_type: str
    r: int
    alpha: float | None
    target_modules: tuple[str, ...] | str  # a list of module names, or one regular expression (PEFT allows both)
    base_name: str | None  # base_model_name_or_path: what the adapter was trained on, as its trainer named it
    pairs: dict[str, tuple[Tensor, Tensor]]  # module -> (lora_A, lora_B)

    @classmethod
    def read(cls, directory: Path) -> Adapter:
        config = read_json(directory / ADAPTER_CONFIG, "PEFT adapter config")
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type not in PEFT_TYPES:
            raise UsageError(
                f"{directory / ADAPTER_CONFIG} has peft_type {config.get('peft_type')!r}; model_ops checks and "
                "serves LoRA adapters",
                hint='a LoRA or QLoRA adapter saved by PEFT has "peft_type": "LORA"',
            )
        r = config.get("r")
        if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
            raise UsageError(f"{directory / ADAPTER_CONFIG}: r must be a positive integer, not {r!r}")
        targets = config.get("target_modules")
        if isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets):
            target_modules: tuple[str, ...] | str = tuple(sorted(targets))
        elif isinstance(targets, str) and targets:
            target_modules = targets
        else:
            raise UsageError(
                f"{directory / ADAPTER_CONFIG}: target_modules must name the adapted modules, not {targets!r}",
                hint='e.g. "target_modules": ["q_proj", "v_proj"]',
            )
        alpha = config.get("lora_alpha")
        pairs = _pairs(read_tensors(directory / ADAPTER_WEIGHTS), directory / ADAPTER_WEIGHTS)
        base = config.get("base_model_name_or_path")
        return cls(
            peft_type,
            r,
            float(alpha) if isinstance(alpha, int | float) else None,
            target_modules,
            str(base) if base else None,
            pairs,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "peft_type": self.peft_type,
            "r": self.r,
            "lora_alpha": self.alpha,
            "target_modules": list(self.target_modules)
            if isinstance(self.target_modules, tuple)
            else self.target_modules,
            "base_model_name_or_path": self.base_name,
            "modules": len(self.pairs),
        }

    def misfits(self, base: BaseModel) -> list[str]:
        """Every way this adapter does not fit ``base``: empty when it fits."""
        found = []
        modules = [name.removesuffix(".weight") for name in base.tensors if name.endswith(".weight")]
        if isinstance(self.target_modules, tuple):
            for target in self.target_modules:  # PEFT's rule: the module's name is the target or ends with .target
                if not any(m == target or m.endswith("." + target) for m in modules):
                    found.append(f"target module {target!r} is not a module of the base")
        for module, (a, b) in sorted(self.pairs.items()):
            weight = base.tensors.get(f"{module}.weight")
            if weight is None:
                found.append(f"{module}: the base has no tensor {module}.weight")
                continue
            if len(weight.shape) != 2:
                found.append(f"{module}: the base's weight has shape {list(weight.shape)}, not a matrix")
                continue
            out_features, in_features = weight.shape
            if len(a.shape) != 2 or a.shape[1] != in_features:
                found.append(f"{module}.lora_A has shape {list(a.shape)}; the base needs [r, {in_features}]")
            elif len(b.shape) != 2 or b.shape[0] != out_features:
                found.append(f"{module}.lora_B has shape {list(b.shape)}; the base needs [{out_features}, r]")
            elif a.shape[0] != b.shape[1]:
                found.append(f"{module}: lora_A has rank {a.shape[0]} and lora_B rank {b.shape[1]}")
        return found


def check_fits(adapter: Adapter, base: BaseModel, adapter_what: str, base_what: str) -> None:
    """Refuse an adapter that does not fit its base, naming both and the first few misfits."""
    misfits = adapter.misfits(base)
    if not misfits:
        return
    shown = "; ".join(misfits[:_SHOWN]) + (f"; and {len(misfits) - _SHOWN} more" if len(misfits) > _SHOWN else "")
    raise UsageError(
        f"adapter {adapter_what} does not fit base model {base_what}: {shown}",
        hint="register it with the base it was trained on (--base models:/NAME/N), or retrain it on this base",
    )


def _pairs(tensors: dict[str, Tensor], where: Path) -> dict[str, tuple[Tensor, Tensor]]:
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            continue
        module = m.group("module").removeprefix(_PREFIX)
        halves.setdefault(module, {})[m.group("half")] = tensor
    if not halves:
        raise UsageError(
            f"{where} holds no LoRA tensors (<module>.lora_A.weight and <module>.lora_B.weight)",
            hint="save the adapter with PEFT's save_pretrained",
        )
    pairs = {}
    for module, half in halves.items():
        if set(half) != {"A", "B"}:
            missing = "lora_B" if "A" in half else "lora_A"
            raise UsageError(
                f"{where}: {module} has no {missing} tensor", hint="an adapter's LoRA tensors come in pairs"
            )
        pairs[module] = (half["A"], half["B"])
    return pairs
