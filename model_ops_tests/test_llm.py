"""Base models and LoRA adapters: what an adapter was trained on is recorded, checked against the base's tensors at
registration, and a new base is a MAJOR version with its reason. Generated safetensors with real headers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from model_ops.cli import main
from model_ops.errors import PolicyError, UsageError
from model_ops.llm.weights import BaseModel
from model_ops.registry import Registry, relations
from model_ops.registry.policy import default_policy_text

HIDDEN, VOCAB, RANK = 8, 16, 2


def base_dir(
    path: Path, *, hidden: int = HIDDEN, layers: int = 2, seed: int = 0, architecture: str = "TinyLlama"
) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, hidden), dtype=np.float32)}
    for i in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            tensors[f"model.layers.{i}.self_attn.{proj}.weight"] = rng.standard_normal(
                (hidden, hidden), dtype=np.float32
            )
    tensors["lm_head.weight"] = rng.standard_normal((VOCAB, hidden), dtype=np.float32)
    path.mkdir(parents=True)
    names = sorted(tensors)
    save_file({n: tensors[n] for n in names[: len(names) // 2]}, str(path / "model-00001-of-00002.safetensors"))
    save_file({n: tensors[n] for n in names[len(names) // 2 :]}, str(path / "model-00002-of-00002.safetensors"))
    (path / "config.json").write_text(json.dumps({"architectures": [architecture], "hidden_size": hidden}))
    return path


def adapter_dir(
    path: Path, *, hidden: int = HIDDEN, targets: tuple[str, ...] = ("q_proj", "v_proj"), layers: int = 2, seed: int = 1
) -> Path:
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        for proj in targets:
            module = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{module}.lora_A.weight"] = rng.standard_normal((RANK, hidden), dtype=np.float32)
            tensors[f"{module}.lora_B.weight"] = np.zeros((hidden, RANK), dtype=np.float32)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 16,
        "target_modules": list(targets),
        "base_model_name_or_path": "tiny-base",
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    return Registry.open(tmp_path / "root", actor="alice")


def test_a_base_model_records_its_architecture_from_the_headers(reg: Registry, tmp_path: Path) -> None:
    mv = reg.register("tiny_base", base_dir(tmp_path / "base"))
    assert mv.flavor == "base_model"
    arch = mv.record["lineage"]["architecture"]
    expected = BaseModel.read(tmp_path / "base")
    assert arch["fingerprint"] == expected.fingerprint and arch["architecture"] == "TinyLlama"
    assert arch["tensors"] == 2 + 2 * 4 and arch["parameters"] == 2 * VOCAB * HIDDEN + 8 * HIDDEN * HIDDEN
    table = reg.attachment("tiny_base", 1, relations.TABLE_LABEL)
    assert table is not None and BaseModel.from_table(table).fingerprint == arch["fingerprint"]
    # the same architecture with other weights: the same fingerprint
    assert BaseModel.read(base_dir(tmp_path / "other", seed=5)).fingerprint == arch["fingerprint"]


def test_an_adapter_records_the_exact_base_version_it_was_checked_against(reg: Registry, tmp_path: Path) -> None:
    base = reg.register("tiny_base", base_dir(tmp_path / "base"))
    reg.set_alias("tiny_base", "current", 1, reason="the base our adapters train on")
    mv = reg.register("support_lora", adapter_dir(tmp_path / "lora"), base="models:/tiny_base@current")
    assert mv.flavor == "adapter"
    assert mv.record["lineage"]["base_model"] == {
        "name": "tiny_base",
        "version": 1,
        "digest": base.digest,
        "fingerprint": base.record["lineage"]["architecture"]["fingerprint"],
    }
    assert mv.record["lineage"]["adapter"]["r"] == RANK
    assert mv.record["lineage"]["adapter"]["target_modules"] == ["q_proj", "v_proj"]


def test_an_adapter_that_does_not_fit_its_base_is_refused_naming_both(reg: Registry, tmp_path: Path) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "base"))
    with pytest.raises(UsageError) as caught:
        reg.register("lora", adapter_dir(tmp_path / "wide", hidden=2 * HIDDEN), base="models:/tiny_base/1")
    message = caught.value.message
    assert "tiny_base/1" in message and str(tmp_path / "wide") in message
    assert f"lora_A has shape [{RANK}, {2 * HIDDEN}]; the base needs [r, {HIDDEN}]" in message
    with pytest.raises(UsageError, match="target module 'gate_proj' is not a module of the base"):
        reg.register("lora", adapter_dir(tmp_path / "mlp", targets=("gate_proj",)), base="models:/tiny_base/1")
    with pytest.raises(UsageError, match="no tensor model.layers.2"):
        reg.register("lora", adapter_dir(tmp_path / "deep", layers=3), base="models:/tiny_base/1")
    assert "lora" not in reg.models()


def test_an_adapter_needs_a_base_and_the_base_must_be_a_base_model(reg: Registry, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="needs the base model it was trained on"):
        reg.register("lora", adapter_dir(tmp_path / "lora"))
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"not weights")
    reg.register("other", plain)
    with pytest.raises(UsageError, match="not a base model"):
        reg.register("lora", tmp_path / "lora", base="models:/other/1")
    with pytest.raises(UsageError, match="is not an adapter"):
        reg.register("other", plain, base="models:/other/1")


def test_a_new_base_is_a_major_version_and_says_which(reg: Registry, tmp_path: Path) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "b1"))
    reg.register("tiny_base", base_dir(tmp_path / "b2", seed=3))  # retrained base: same architecture
    first = reg.register("lora", adapter_dir(tmp_path / "l1"), base="models:/tiny_base/1")
    moved = reg.register("lora", adapter_dir(tmp_path / "l2", seed=2), base="models:/tiny_base/2")
    assert (first.semver, moved.semver) == ("1.0.0", "2.0.0")
    assert moved.bump["reason"] == "base model tiny_base 1 → tiny_base 2"
    again = reg.register("lora", adapter_dir(tmp_path / "l3", seed=4), base="models:/tiny_base/2")
    assert again.semver.startswith("2.") and again.bump["level"] != "major"


def test_a_base_whose_tensors_change_shape_is_a_major_version(reg: Registry, tmp_path: Path) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "b1"))
    same = reg.register("tiny_base", base_dir(tmp_path / "b2", seed=3))
    wider = reg.register("tiny_base", base_dir(tmp_path / "b3", hidden=2 * HIDDEN))
    assert same.bump["level"] == "patch"
    assert wider.bump["level"] == "major" and wider.bump["reason"].startswith("architecture changed")


def test_pickled_weights_are_refused_unless_the_policy_allows_them(reg: Registry, tmp_path: Path) -> None:
    base = base_dir(tmp_path / "base")
    (base / "pytorch_model.bin").write_bytes(b"\x80\x04pickled")
    with pytest.raises(PolicyError, match="pytorch_model.bin"):
        reg.register("tiny_base", base)
    policy = tmp_path / "root" / "registry" / "policy.yaml"  # the root's own policy: a --policy file only narrows
    policy.write_text(default_policy_text() + "\nallow_pickle_weights: true\n")
    allowed = Registry.open(tmp_path / "root", actor="alice")
    assert allowed.register("tiny_base", base).flavor == "base_model"


def test_a_model_directory_whose_weights_are_pickles_is_refused_too(reg: Registry, tmp_path: Path) -> None:
    only_bin = tmp_path / "hf"
    only_bin.mkdir()
    (only_bin / "config.json").write_text('{"architectures": ["TinyLlama"]}')
    (only_bin / "ckpt").mkdir()
    (only_bin / "ckpt" / "pytorch_model.bin").write_bytes(b"(lp0\nI1\na.")  # protocol 0: no header to sniff
    with pytest.raises(PolicyError, match="runs code when loaded: ckpt/pytorch_model.bin"):
        reg.register("hf_base", only_bin)
    policy = tmp_path / "root" / "registry" / "policy.yaml"
    policy.write_text(default_policy_text() + "\nallow_pickle_weights: true\n")
    allowed = Registry.open(tmp_path / "root", actor="alice")
    mv = allowed.register("hf_base", only_bin)  # allowed, but its tensors cannot be read without unpickling them
    assert mv.flavor == "files"
    with pytest.raises(UsageError, match="is a 'files' artifact, not a base model"):
        allowed.register("lora", adapter_dir(tmp_path / "lora"), base="models:/hf_base/1")


def test_the_command_line_registers_an_adapter_on_its_base_and_refuses_without_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    root = str(tmp_path / "root")
    assert main(["--root", root, "register", "tiny_base", str(base_dir(tmp_path / "base")), "--json"]) == 0
    lora = str(adapter_dir(tmp_path / "lora"))
    capsys.readouterr()
    assert main(["--root", root, "register", "lora", lora]) == 2
    assert "needs the base model" in capsys.readouterr().err
    assert main(["--root", root, "register", "lora", lora, "--base", "models:/tiny_base/1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flavor"] == "adapter" and out["lineage"]["base_model"]["version"] == 1


# ---------------------------------------------------------------------------------------------------- prompts

PROMPT = """\
template: |
  Customer {{ customer }} writes about order {{ order_id }}:
  {{ message }}
variables: [customer, order_id, message]
system: You are a courteous support agent for {{ customer }}.
examples:
  - {input: "Where is my parcel?", output: "It left our depot today."}
parameters: {temperature: 0.2, max_tokens: 200}
"""


def prompt_file(tmp_path: Path, text: str, name: str = "support_reply.prompt.yaml") -> Path:
    path = tmp_path / f"p{len(list(tmp_path.glob('p*')))}" / name
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_a_prompt_registers_loads_by_prompts_ref_and_renders_exactly_its_variables(
    reg: Registry, tmp_path: Path
) -> None:
    import model_ops

    mv = reg.register("support_reply", prompt_file(tmp_path, PROMPT))
    assert mv.flavor == "prompt" and mv.record["lineage"]["prompt"]["variables"] == ["customer", "message", "order_id"]
    reg.set_alias("support_reply", "live", 1, reason="first reviewed wording")
    prompt = model_ops.load("prompts:/support_reply@live", registry=reg)
    text = prompt.render(customer="Ada", order_id=7, message="It is late.")
    assert text == "Customer Ada writes about order 7:\nIt is late.\n"
    messages = prompt.messages(customer="Ada", order_id=7, message="It is late.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == "You are a courteous support agent for Ada."
    with pytest.raises(UsageError, match="missing message, order_id"):
        prompt.render(customer="Ada")
    with pytest.raises(UsageError, match="unknown coupon"):
        prompt.render(customer="Ada", order_id=7, message="x", coupon="FREE")


def test_a_prompts_ref_to_a_model_is_refused_and_a_model_is_not_rendered(reg: Registry, tmp_path: Path) -> None:

    plain = tmp_path / "weights.bin"
    plain.write_bytes(b"bytes")
    reg.register("scorer", plain)
    with pytest.raises(UsageError, match="not a prompt"):
        reg.resolve("prompts:/scorer/1")
    reg.register("support_reply", prompt_file(tmp_path, PROMPT))
    assert reg.resolve("models:/support_reply/1").flavor == "prompt"  # models:/ names anything


def test_a_template_must_use_exactly_the_variables_it_declares(reg: Registry, tmp_path: Path) -> None:
    undeclared = PROMPT.replace("variables: [customer, order_id, message]", "variables: [customer, order_id]")
    with pytest.raises(UsageError, match="uses message, which variables does not declare"):
        reg.register("p", prompt_file(tmp_path, undeclared))
    unused = PROMPT.replace("[customer, order_id, message]", "[customer, order_id, message, tone]")
    with pytest.raises(UsageError, match="declares tone, which the template never uses"):
        reg.register("p", prompt_file(tmp_path, unused))
    with pytest.raises(UsageError, match="not valid Jinja2"):
        reg.register("p", prompt_file(tmp_path, "template: '{{ customer '\nvariables: [customer]\n"))
    with pytest.raises(UsageError, match="not a plain variable name"):
        reg.register("p", prompt_file(tmp_path, "template: '{x.__class__}'\nvariables: [x]\nengine: format\n"))
    with pytest.raises(UsageError, match="temperatur"):
        reg.register("p", prompt_file(tmp_path, PROMPT + "temperatur: 0.3\n"))


def test_the_sandbox_refuses_to_reach_python_internals(reg: Registry, tmp_path: Path) -> None:

    import model_ops

    escape = "template: '{{ name.__class__.__mro__[1].__subclasses__() }}'\nvariables: [name]\n"
    reg.register("evil", prompt_file(tmp_path, escape))
    with pytest.raises(UsageError, match="SecurityError"):
        model_ops.load("prompts:/evil/1", registry=reg).render(name="x")


def test_prompt_versions_bump_by_what_changed_and_diff_shows_the_text(reg: Registry, tmp_path: Path) -> None:
    from model_ops.ops import provenance

    reg.register("support_reply", prompt_file(tmp_path, PROMPT))
    worded = reg.register("support_reply", prompt_file(tmp_path, PROMPT.replace("courteous", "friendly")))
    warmer = reg.register(
        "support_reply", prompt_file(tmp_path, PROMPT.replace("temperature: 0.2", "temperature: 0.7"))
    )
    more = PROMPT.replace("[customer, order_id, message]", "[customer, order_id, message, tone]").replace(
        "{{ message }}", "{{ message }} (tone: {{ tone }})"
    )
    widened = reg.register("support_reply", prompt_file(tmp_path, more))
    assert (worded.semver, worded.bump["reason"]) == (
        "1.0.1",
        "same variables and parameters; the prompt's text changed",
    )
    assert warmer.semver == "1.1.0" and warmer.bump["reason"] == "generation parameters changed (temperature)"
    assert widened.semver == "2.0.0" and widened.bump["reason"] == "prompt variables changed (added tone)"

    d = provenance.diff(reg, "prompts:/support_reply/1", "prompts:/support_reply/2")
    assert "-system: You are a courteous support agent for {{ customer }}." in d["text"]
    assert "+system: You are a friendly support agent for {{ customer }}." in d["text"]
    assert list(d["files"]) == ["support_reply.prompt.yaml"]
    assert "friendly" in provenance.render_diff(d)


def test_a_prompt_records_the_exact_version_of_the_model_it_was_written_for(reg: Registry, tmp_path: Path) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "base"))
    reg.register("support_lora", adapter_dir(tmp_path / "lora"), base="models:/tiny_base/1")
    reg.set_alias("support_lora", "live", 1, reason="first adapter")
    mv = reg.register("support_reply", prompt_file(tmp_path, PROMPT + "model: models:/support_lora@live\n"))
    assert mv.record["lineage"]["written_for"]["name"] == "support_lora"
    assert mv.record["lineage"]["written_for"]["version"] == 1
    reg.register("support_lora", adapter_dir(tmp_path / "lora2", seed=9), base="models:/tiny_base/1")
    reg.set_alias("support_lora", "live", 2, reason="retrained")
    moved = reg.register(
        "support_reply",
        prompt_file(tmp_path, PROMPT.replace("courteous", "kind") + "model: models:/support_lora@live\n"),
    )
    assert moved.bump["reason"] == "written for support_lora 1 → support_lora 2" and moved.semver == "2.0.0"


def test_lineage_walks_from_a_prompt_to_its_adapter_to_its_base(
    reg: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "base"))
    reg.register("support_lora", adapter_dir(tmp_path / "lora"), base="models:/tiny_base/1")
    reg.register("support_reply", prompt_file(tmp_path, PROMPT + "model: models:/support_lora/1\n"))
    root = str(tmp_path / "root")
    assert main(["--root", root, "lineage", "prompts:/support_reply/1", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)["built_on"]
    assert [(b["relation"], b["ref"], b["flavor"]) for b in chain] == [
        ("written for", "models:/support_lora/1", "adapter"),
        ("adapter of base", "models:/tiny_base/1", "base_model"),
    ]
    assert all(b["digest_as_recorded"] for b in chain)
    assert main(["--root", root, "lineage", "prompts:/support_reply/1"]) == 0
    text = capsys.readouterr().out
    assert "built on written for models:/support_lora/1 (adapter, 1.0.0" in text
    assert "adapter of base models:/tiny_base/1 (base_model" in text


# ---------------------------------------------------------------------------------------------------- retrieval


def retrieval_file(tmp_path: Path, index: str, *, top_k: int = 5, embedder: str = "models:/text_embedder@live") -> Path:
    text = (
        f"embedding_model: {embedder}\n"
        "chunking: {strategy: recursive, size: 512, overlap: 64}\n"
        f"top_k: {top_k}\n"
        f"index: {index}\n"
    )
    path = tmp_path / f"r{len(list(tmp_path.glob('r*')))}" / "support.retrieval.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def index_table(tmp_path: Path, versions: int) -> str:
    import pyarrow as pa
    from deltalake import write_deltalake

    uri = str(tmp_path / "lake" / "support_docs_index")
    for v in range(versions):
        write_deltalake(uri, pa.table({"passage": [f"doc {v}"], "vector": [[0.1 * v, 0.2]]}), mode="append")
    return uri


def test_a_retrieval_configuration_pins_its_embedding_model_and_index_version(reg: Registry, tmp_path: Path) -> None:
    import model_ops
    from model_ops.ops import provenance

    embedder = tmp_path / "embedder.bin"
    embedder.write_bytes(b"embedding weights v1")
    reg.register("text_embedder", embedder)
    reg.set_alias("text_embedder", "live", 1, reason="first embedder")
    uri = index_table(tmp_path, 2)
    first = reg.register("support_rag", retrieval_file(tmp_path, f"{uri}@0"))
    assert first.flavor == "retrieval"
    assert first.record["lineage"]["embedding_model"]["version"] == 1
    assert first.record["lineage"]["retrieval"]["index"] == {"uri": uri, "version": 0}
    assert model_ops.load("models:/support_rag/1", registry=reg).model.top_k == 5

    reindexed = reg.register("support_rag", retrieval_file(tmp_path, f"{uri}@1"))
    assert reindexed.semver == "1.1.0" and reindexed.bump["reason"] == f"index table changed ({uri}@0 → {uri}@1)"
    wider = reg.register("support_rag", retrieval_file(tmp_path, f"{uri}@1", top_k=8))
    assert wider.semver == "1.1.1" and wider.bump["reason"].endswith("changed: top_k")
    embedder.write_bytes(b"embedding weights v2")
    reg.register("text_embedder", embedder)
    reg.set_alias("text_embedder", "live", 2, reason="new embedder")
    with pytest.raises(UsageError, match="registered when its embedding model was text_embedder 1"):
        reg.register("support_rag", retrieval_file(tmp_path, f"{uri}@1", top_k=8))  # the same bytes as v3
    pinned = retrieval_file(tmp_path, f"{uri}@1", top_k=8, embedder="models:/text_embedder/2")
    moved = reg.register("support_rag", pinned)
    assert moved.semver == "2.0.0" and moved.bump["reason"] == "embedding model text_embedder 1 → text_embedder 2"
    d = provenance.diff(reg, "models:/support_rag/2", "models:/support_rag/3")
    assert "-top_k: 5" in d["text"] and "+top_k: 8" in d["text"]


def test_a_retrieval_configuration_naming_an_index_version_that_does_not_exist_is_refused(
    reg: Registry, tmp_path: Path
) -> None:
    embedder = tmp_path / "embedder.bin"
    embedder.write_bytes(b"embedding weights")
    reg.register("text_embedder", embedder)
    uri = index_table(tmp_path, 1)
    with pytest.raises(UsageError, match="cannot be opened at version 7"):
        reg.register("support_rag", retrieval_file(tmp_path, f"{uri}@7", embedder="models:/text_embedder/1"))
    with pytest.raises(UsageError, match="must be URI@VERSION"):
        reg.register("support_rag", retrieval_file(tmp_path, uri, embedder="models:/text_embedder/1"))
    bad = retrieval_file(tmp_path, f"{uri}@0", embedder="models:/text_embedder/1")
    bad.write_text(bad.read_text().replace("overlap: 64", "overlap: 600"))
    with pytest.raises(UsageError, match="overlap"):
        reg.register("support_rag", bad)


def test_the_same_adapter_bytes_on_another_base_are_refused_not_silently_returned(
    reg: Registry, tmp_path: Path
) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "b1"))
    reg.register("tiny_base", base_dir(tmp_path / "b2", seed=3))
    lora = adapter_dir(tmp_path / "lora")
    assert reg.register("lora", lora, base="models:/tiny_base/1").version == 1
    assert reg.register("lora", lora, base="models:/tiny_base/1").version == 1  # idempotent as before
    with pytest.raises(UsageError, match="registered when its base model was tiny_base 1; it resolves to tiny_base 2"):
        reg.register("lora", lora, base="models:/tiny_base/2")


# ---------------------------------------------------------------------------------------------------- review fixes


def test_lineage_the_registry_reads_from_files_cannot_be_given(reg: Registry, tmp_path: Path) -> None:
    plain = tmp_path / "m.txt"
    plain.write_text("x")
    with pytest.raises(UsageError, match="lineage may not set base_model"):
        reg.register("plain", plain, lineage={"base_model": {"name": "tiny_base", "version": 1}})


def test_target_modules_match_as_peft_matches_them(reg: Registry, tmp_path: Path) -> None:
    reg.register("tiny_base", base_dir(tmp_path / "base"))
    lora = adapter_dir(tmp_path / "lora")
    config = json.loads((lora / "adapter_config.json").read_text())
    config["target_modules"] = ["self_attn.q_proj", "model.layers.0.self_attn.v_proj"]
    (lora / "adapter_config.json").write_text(json.dumps(config))
    assert reg.register("lora", lora, base="models:/tiny_base/1").flavor == "adapter"


def test_a_prompts_ref_is_checked_by_every_write_and_by_as_of(reg: Registry, tmp_path: Path) -> None:
    from datetime import datetime, timezone

    plain = tmp_path / "m.txt"
    plain.write_text("x")
    reg.register("m", plain)
    with pytest.raises(UsageError, match="not a prompt"):
        reg.set_tag("prompts:/m/1", "team", "x")
    with pytest.raises(UsageError, match="not a prompt"):
        reg.resolve_as_of("prompts:/m/1", datetime.now(timezone.utc))


def test_format_prompts_refuse_nested_and_huge_fields_and_render_errors_are_usage_errors(
    reg: Registry, tmp_path: Path
) -> None:
    import model_ops

    with pytest.raises(UsageError, match="nested field"):
        reg.register("p", prompt_file(tmp_path, "template: '{x:{y}}'\nvariables: [x]\nengine: format\n"))
    with pytest.raises(UsageError, match="width above"):
        reg.register("p", prompt_file(tmp_path, "template: '{x:>300000000}'\nvariables: [x]\nengine: format\n"))
    reg.register("p", prompt_file(tmp_path, "template: 'n={x:d}'\nvariables: [x]\nengine: format\n"))
    with pytest.raises(UsageError, match="cannot render the prompt: ValueError"):
        model_ops.load("prompts:/p/1", registry=reg).render(x="seven")
    with pytest.raises(UsageError, match="not a model that predicts"):
        model_ops.load("prompts:/p/1", registry=reg).predict(None)


def test_yaml_aliases_are_refused_in_prompt_files(reg: Registry, tmp_path: Path) -> None:
    bomb = "template: 'hi'\nparameters:\n  a: &a [1, 1, 1]\n  b: [*a, *a, *a]\n"
    with pytest.raises(UsageError, match="anchors"):
        reg.register("p", prompt_file(tmp_path, bomb))
