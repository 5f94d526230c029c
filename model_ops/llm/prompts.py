"""Prompt templates as versioned artifacts: a template, its declared variables, a system prompt, few-shot examples
and generation parameters, in one YAML file (``prompt.yaml`` or ``NAME.prompt.yaml``).

A prompt changes what an LLM application does as much as its weights, so it is registered, aliased, staged,
diffed and rolled back like any model (``prompts:/support_reply/production``). Templates are rendered in Jinja2's
sandbox (no attribute access to Python internals, no imports) with every variable required, or as Python format
strings restricted to plain names; either way :meth:`Prompt.render` refuses a missing or an unknown variable by
name, and registration refuses a template that uses a variable it does not declare, or declares one it never
uses, so what the file says it needs is what it needs.

Example::

    template: |
      Customer {{ customer }} writes about order {{ order_id }}:
      {{ message }}
    variables: [customer, order_id, message]
    system: You are a courteous support agent. Answer in two sentences.
    examples:
      - {input: "Where is my parcel?", output: "It left our depot today; tracking follows by email."}
    parameters: {temperature: 0.2, max_tokens: 200}
    model: models:/support_lora/production
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from model_ops.errors import UsageError
from model_ops.llm import yaml_files


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str
    output: str


class Prompt(BaseModel):
    """One prompt file, validated: render it with :meth:`render` or :meth:`messages`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    template: str = Field(min_length=1)
    variables: list[str] = Field(default_factory=list)
    engine: Literal["jinja2", "format"] = "jinja2"
    system: str | None = None
    examples: list[Example] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    model: str | None = None  # the model or adapter it was written for, as a reference

    @classmethod
    def parse(cls, data: bytes, what: str) -> Prompt:
        prompt = yaml_files.parse(cls, data, what, kind="prompt file", documented_in="model_ops.llm.prompts")
        prompt.check(what)
        return prompt

    def used_variables(self) -> set[str]:
        """The variables the template (and the system prompt) refer to."""
        used = set()
        for text in (self.template, self.system or ""):
            used |= _jinja_variables(text) if self.engine == "jinja2" else _format_variables(text)
        return used

    def check(self, what: str) -> None:
        declared = set(self.variables)
        if len(declared) != len(self.variables):
            raise UsageError(f"{what}: a variable is declared twice in {self.variables}")
        used = self.used_variables()
        if used - declared:
            raise UsageError(
                f"{what}: the template uses {', '.join(sorted(used - declared))}, which variables does not declare",
                hint="add them to variables:, so whoever renders the prompt knows what it needs",
            )
        if declared - used:
            raise UsageError(
                f"{what}: variables declares {', '.join(sorted(declared - used))}, which the template never uses",
                hint="remove them from variables:, or use them in the template",
            )

    def render(self, /, **values: Any) -> str:
        """The template filled in. Refuses a missing or an unknown variable by name."""
        return self._fill(self.template, values)

    def messages(self, /, **values: Any) -> list[dict[str, str]]:
        """Chat messages: the system prompt, the few-shot examples as user/assistant turns, then the template."""
        out = []
        if self.system:
            out.append({"role": "system", "content": self._fill(self.system, values)})
        for example in self.examples:
            out += [{"role": "user", "content": example.input}, {"role": "assistant", "content": example.output}]
        out.append({"role": "user", "content": self._fill(self.template, values)})
        return out

    def _fill(self, text: str, values: Mapping[str, Any]) -> str:
        declared = set(self.variables)
        missing, unknown = declared - set(values), set(values) - declared
        if missing or unknown:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(sorted(missing)))
            if unknown:
                parts.append("unknown " + ", ".join(sorted(unknown)))
            raise UsageError(
                "cannot render the prompt: " + "; ".join(parts),
                hint="pass exactly its variables: " + ", ".join(sorted(declared)) if declared else "it takes none",
            )
        try:
            if self.engine == "format":
                return text.format_map(dict(values))
            return _environment().from_string(text).render(**values)
        except UsageError:
            raise
        except Exception as e:  # a value the template cannot use (a string formatted as a number, a sandbox refusal)
            raise UsageError(
                f"cannot render the prompt: {type(e).__name__}: {e}", hint="check the values passed for its variables"
            ) from None

    def summary(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "variables": sorted(self.variables),
            "examples": len(self.examples),
            "parameters": dict(sorted(self.parameters.items())),
        }


def _environment() -> Any:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


_MAX_WIDTH = 1000


def _too_wide(spec: str) -> bool:
    return any(int(n) > _MAX_WIDTH for n in re.findall(r"\d+", spec))


def _jinja_variables(text: str) -> set[str]:
    from jinja2 import TemplateSyntaxError, meta

    try:
        return set(meta.find_undeclared_variables(_environment().parse(text)))
    except TemplateSyntaxError as e:
        raise UsageError(f"the template is not valid Jinja2: {e.message} (line {e.lineno})") from None


def _format_variables(text: str) -> set[str]:
    found = set()
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as e:
        raise UsageError(f"the template is not a valid format string: {e}", hint="write {{ and }} for braces") from None
    for _, field, spec, _ in fields:
        if field is None:
            continue
        if spec and ("{" in spec or _too_wide(spec)):
            raise UsageError(
                f"format field {{{field}:{spec}}} has a nested field or a width above {_MAX_WIDTH}",
                hint="a format-string prompt takes plain {name} fields with simple specs (e.g. {price:.2f})",
            )
        if not field.isidentifier():
            raise UsageError(
                f"format field {{{field}}} is not a plain variable name",
                hint="a format-string prompt takes {name} fields only (no attributes, indexes or positions)",
            )
        found.add(field)
    return found
