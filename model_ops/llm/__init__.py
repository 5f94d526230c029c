"""LLM artifacts: base models, LoRA adapters, and what one was built on, read from files without loading tensors.

Dagster-free, like the registry and the artifact store below it.
"""
