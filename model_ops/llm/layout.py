"""Which files make which LLM artifact: the flavors the artifact store recognises by their layout alone.

Kept apart from the readers (:mod:`~model_ops.llm.weights`, :mod:`~model_ops.llm.prompts`) so the artifact store can
name a flavor without importing what parses it.
"""

from __future__ import annotations

BASE_MODEL, ADAPTER, PROMPT, RETRIEVAL = "base_model", "adapter", "prompt", "retrieval"
APPLICATION = "application"
CONFIG_FILE = "config.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PROMPT_FILES = ("prompt.yaml", "prompt.yml")
PROMPT_SUFFIXES = (".prompt.yaml", ".prompt.yml")
RETRIEVAL_FILES = ("retrieval.yaml", "retrieval.yml")
RETRIEVAL_SUFFIXES = (".retrieval.yaml", ".retrieval.yml")
APPLICATION_FILES = ("application.yaml", "application.yml")
APPLICATION_SUFFIXES = (".application.yaml", ".application.yml")
# Weight formats that unpickle on load, and so can run code when read.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def flavor_of(kind: str, names: list[str]) -> str | None:
    """``adapter``, ``base_model``, ``prompt``, ``retrieval`` or ``application`` for an artifact of this kind ("file" or
    "directory") holding these relative file names; None for anything else."""
    if kind == "file":
        name = names[0]
        if name in PROMPT_FILES or name.endswith(PROMPT_SUFFIXES):
            return PROMPT
        if name in RETRIEVAL_FILES or name.endswith(RETRIEVAL_SUFFIXES):
            return RETRIEVAL
        if name in APPLICATION_FILES or name.endswith(APPLICATION_SUFFIXES):
            return APPLICATION
        return None
    top = {n for n in names if "/" not in n}
    if ADAPTER_CONFIG in top:
        return ADAPTER
    if CONFIG_FILE in top and any(n.endswith(".safetensors") for n in top):
        return BASE_MODEL
    return None


def pickle_files(names: list[str]) -> list[str]:
    return sorted(n for n in names if n.lower().endswith(PICKLE_SUFFIXES))
