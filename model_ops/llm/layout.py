"""Which files make which LLM artifact: the flavors the artifact store recognises by their layout alone.

Kept apart from the readers (:mod:`~model_ops.llm.weights`, :mod:`~model_ops.llm.prompts`) so the artifact store can
name a flavor without importing what parses it.
"""

from __future__ import annotations

from model_ops.registry.refs import KIND_FLAVORS

BASE_MODEL, ADAPTER, PROMPT = "base_model", "adapter", KIND_FLAVORS["prompts"]
CONFIG_FILE = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_FILES = ("prompt.yaml", "prompt.yml")
PROMPT_SUFFIXES = (".prompt.yaml", ".prompt.yml")
# Weight formats that unpickle on load, and so can run code when read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def flavor_of(kind: str, names: list[str]) -> str | None:
    """``adapter``, ``base_model`` or ``prompt`` for an artifact of this kind ("file" or "directory") holding
    these relative file names; None for anything else."""
    if kind == "file":
        return PROMPT if is_prompt_file(names[0]) else None
    top = {n for n in names if "/" not in n}
    if ADAPTER_CONFIG in top:
        return ADAPTER
    if CONFIG_FILE in top and any(n.endswith(".safetensors") for n in top):
        return BASE_MODEL
    return None


def is_prompt_file(name: str) -> bool:
    return name in PROMPT_FILES or name.endswith(PROMPT_SUFFIXES)


def pickle_files(names: list[str]) -> list[str]:
    return sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
