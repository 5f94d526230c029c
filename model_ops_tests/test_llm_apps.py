"""LLM applications: a base model, an adapter, a prompt and a retrieval configuration registered as one version,
checked against each other, loaded with their parts resolved, and refused when the parts do not fit."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

import model_ops
from model_ops.cli import main
from model_ops.errors import PolicyError, UsageError
from model_ops.registry import Registry
from model_ops_tests.test_llm import PROMPT, adapter_dir, base_dir, prompt_file
from model_ops_tests.test_serving import free_socket, wait_for


@pytest.fixture
def reg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.delenv("MODEL_OPS_POLICY", raising=False)
    monkeypatch.setenv("MODEL_OPS_CACHE", str(tmp_path / "cache"))
    return Registry.open(tmp_path / "root", actor="alice")


def app_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"a{len(list(tmp_path.glob('a*')))}" / "support.application.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def parts(reg: Registry, tmp_path: Path) -> None:
    """tiny_base v1 and v2 (the same architecture, other weights), wide_base v1 (another architecture),
    support_lora v1 on tiny_base v1 and v2 on wide_base v1, support_reply v1 written for support_lora."""
    reg.register("tiny_base", base_dir(tmp_path / "b1"))
    reg.register("tiny_base", base_dir(tmp_path / "b2", seed=3))
    reg.register("wide_base", base_dir(tmp_path / "w1", hidden=16))
    reg.register("support_lora", adapter_dir(tmp_path / "l1"), base="models:/tiny_base/1")
    reg.register("support_lora", adapter_dir(tmp_path / "l2", hidden=16), base="models:/wide_base/1")
    reg.set_alias("support_lora", "live", 1, reason="the adapter in service")
    reg.register("support_reply", prompt_file(tmp_path, PROMPT + "model: models:/support_lora/1\n"))
    reg.set_alias("support_reply", "live", 1, reason="reviewed wording")


APP = "adapter: models:/support_lora@live\nprompt: prompts:/support_reply@live\n"


def test_an_application_records_its_exact_parts_and_what_each_follows(reg: Registry, tmp_path: Path) -> None:
    parts(reg, tmp_path)
    mv = reg.register("support_app", app_file(tmp_path, APP))
    assert mv.flavor == "application"
    recorded = mv.lineage["application"]
    assert {role: (p["name"], p["version"], p["follows"]) for role, p in recorded.items()} == {
        "base_model": ("tiny_base", 1, None),  # the base the adapter was trained on, pinned
        "adapter": ("support_lora", 1, "@live"),
        "prompt": ("support_reply", 1, "@live"),
    }
    loaded = model_ops.load("models:/support_app/1", registry=reg)
    assert loaded.render(customer="Ada", order_id=7, message="Late.").startswith("Customer Ada writes")
    versions = loaded.model.versions()
    assert versions["application"]["version"] == 1 and versions["adapter"]["version"] == 1


def test_an_adapter_on_a_base_of_another_architecture_is_refused_naming_both(reg: Registry, tmp_path: Path) -> None:
    parts(reg, tmp_path)
    with pytest.raises(PolicyError) as caught:
        reg.register("support_app", app_file(tmp_path, "base_model: models:/wide_base/1\n" + APP))
    message = str(caught.value)
    assert "models:/support_lora/1 was trained on tiny_base v1" in message and "models:/wide_base/1" in message
    # the same architecture under another version is fine: the fingerprint is what must match
    ok = reg.register("support_app", app_file(tmp_path, "base_model: models:/tiny_base/2\n" + APP))
    assert ok.lineage["application"]["base_model"]["version"] == 2
    # loading the adapter itself on the other base is refused the same way
    with pytest.raises(PolicyError, match="loading it on models:/wide_base/1 is refused"):
        model_ops.load("models:/support_lora/1", registry=reg, base="models:/wide_base/1")
    weights = model_ops.load("models:/support_lora/1", registry=reg, base="models:/tiny_base/2").model
    assert (weights.path / "adapter_config.json").is_file() and weights.base.version == 2


def test_an_alias_moved_to_an_adapter_that_does_not_fit_is_refused_when_the_application_loads(
    reg: Registry, tmp_path: Path
) -> None:
    parts(reg, tmp_path)
    reg.register("support_app", app_file(tmp_path, "base_model: models:/tiny_base/1\n" + APP))
    reg.set_alias("support_lora", "live", 2, reason="try the wide adapter")
    with pytest.raises(PolicyError, match="support_lora/2 was trained on wide_base v1"):
        model_ops.load("models:/support_app/1", registry=reg)


def test_a_prompt_written_for_another_model_and_parts_of_the_wrong_flavor_are_refused(
    reg: Registry, tmp_path: Path
) -> None:
    parts(reg, tmp_path)
    reg.register("other_reply", prompt_file(tmp_path, PROMPT + "model: models:/wide_base/1\n", "o.prompt.yaml"))
    with pytest.raises(PolicyError, match="written for wide_base v1, and this application answers with"):
        reg.register(
            "support_app", app_file(tmp_path, "adapter: models:/support_lora/1\nprompt: prompts:/other_reply/1\n")
        )
    with pytest.raises(UsageError, match="adapter: models:/tiny_base/1 is a 'base_model' artifact, not a adapter"):
        reg.register(
            "support_app", app_file(tmp_path, "adapter: models:/tiny_base/1\nprompt: prompts:/support_reply/1\n")
        )
    with pytest.raises(UsageError, match="name the model that answers"):
        reg.register("support_app", app_file(tmp_path, "prompt: prompts:/support_reply/1\n"))
    with pytest.raises(UsageError, match="adaptor: Extra inputs"):
        reg.register(
            "support_app", app_file(tmp_path, "adaptor: models:/support_lora/1\nprompt: prompts:/support_reply/1\n")
        )
    assert "support_app" not in reg.models()


def test_application_versions_bump_by_the_part_that_changed(reg: Registry, tmp_path: Path) -> None:
    from model_ops.ops import provenance

    parts(reg, tmp_path)
    reg.register(
        "support_reply", prompt_file(tmp_path, PROMPT.replace("courteous", "brief") + "model: models:/support_lora/1\n")
    )
    first = reg.register(
        "support_app", app_file(tmp_path, "adapter: models:/support_lora/1\nprompt: prompts:/support_reply/1\n")
    )
    prompt_moved = reg.register(
        "support_app", app_file(tmp_path, "adapter: models:/support_lora/1\nprompt: prompts:/support_reply/2\n")
    )
    assert (first.semver, prompt_moved.semver) == ("1.0.0", "1.1.0")
    assert prompt_moved.bump["reason"] == "prompt support_reply 1 → support_reply 2"
    base_moved = reg.register(
        "support_app",
        app_file(
            tmp_path,
            "base_model: models:/tiny_base/2\nadapter: models:/support_lora/1\nprompt: prompts:/support_reply/2\n",
        ),
    )
    assert base_moved.semver == "2.0.0" and base_moved.bump["reason"] == "base model tiny_base 1 → tiny_base 2"
    d = provenance.diff(reg, "models:/support_app/2", "models:/support_app/3")
    assert d["built_on"]["base_model"][0]["version"] == 1 and d["built_on"]["base_model"][1]["version"] == 2
    assert "+base_model: models:/tiny_base/2" in d["text"]


def test_lineage_shows_the_application_tree(reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parts(reg, tmp_path)
    reg.register("support_app", app_file(tmp_path, APP))
    root = str(tmp_path / "root")
    assert main(["--root", root, "lineage", "models:/support_app/1", "--json"]) == 0
    tree = json.loads(capsys.readouterr().out)["built_on"]
    assert [(b["depth"], b["relation"], b["ref"]) for b in tree] == [
        (0, "uses base model", "models:/tiny_base/1"),
        (0, "uses adapter", "models:/support_lora/1"),
        (1, "adapter of base", "models:/tiny_base/1"),
        (0, "uses prompt", "models:/support_reply/1"),
        (1, "written for", "models:/support_lora/1"),
    ]
    assert main(["--root", root, "lineage", "models:/support_app/1"]) == 0
    text = capsys.readouterr().out
    assert "uses adapter models:/support_lora/1 (adapter, 1.0.0, now" in text and "following @live" in text


# ---------------------------------------------------------------------------------------------------- serving


@contextmanager
def uvicorn_on_loopback(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a thread; its base URL while the block runs."""
    import uvicorn

    sock = free_socket()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 60, "the server start")
        assert thread.is_alive(), "the server did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def chat_backend(seen: list[dict[str, Any]]) -> Any:
    """An OpenAI-compatible chat-completions endpoint standing in for the generation server (vLLM): it records
    each request and answers with the model it was asked for and the last message it was sent."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        seen.append(body)
        text = f"[{body['model']}] {body['messages'][-1]['content'].strip()}"
        return JSONResponse(
            {
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            }
        )

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


def deploy(root: str, *args: str) -> None:
    assert main(["--root", root, "deploy", *args]) == 0


def test_an_application_is_served_with_every_version_named_and_follows_an_adapter_alias(
    reg: Registry, tmp_path: Path
) -> None:
    from model_ops.serving.app import ServeConfig, create_app

    parts(reg, tmp_path)
    reg.register("support_lora", adapter_dir(tmp_path / "l3", seed=7), base="models:/tiny_base/2")  # v3: fits
    reg.register("support_app", app_file(tmp_path, APP))
    root = str(tmp_path / "root")
    reg.transition("models:/support_app/1", "staging", reason="reviewed")
    deploy(root, "support_app", "deploy", "--version", "1", "--reason", "first release")
    seen: list[dict[str, Any]] = []
    lora_dir = tmp_path / "loras"
    variables = {"customer": "Ada", "order_id": 7, "message": "Where is it?"}
    with uvicorn_on_loopback(chat_backend(seen)) as backend:
        config = ServeConfig(
            root=root,
            applications=["support_app"],
            poll_seconds=0.05,
            log_predictions=False,
            lora_dir=str(lora_dir),
            generate_url=backend,
        )
        with uvicorn_on_loopback(create_app(config, specs={})) as url, httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/v2/health/ready").status_code == 200
            r = c.post("/v1/applications/support_app/prompt", json={"variables": variables, "key": "k1"})
            assert r.status_code == 200, r.text
            doc = r.json()
            assert doc["versions"]["adapter"] == {**doc["versions"]["adapter"], "name": "support_lora", "version": 1}
            assert doc["versions"]["base_model"]["version"] == 1 and doc["versions"]["prompt"]["version"] == 1
            assert doc["served_model"] == "support_lora-v1" and r.headers["X-Model-Ops-Adapter"] == "support_lora/1"
            assert doc["messages"][-1]["content"].startswith("Customer Ada writes about order 7")
            peft = lora_dir / "support_lora-v1"
            assert json.loads((peft / "adapter_config.json").read_text())["peft_type"] == "LORA"
            assert (peft / "adapter_model.safetensors").read_bytes() == (
                tmp_path / "l1" / "adapter_model.safetensors"
            ).read_bytes()

            chat = c.post(
                "/v1/applications/support_app/chat/completions", json={"variables": variables, "max_tokens": 50}
            )
            assert chat.status_code == 200, chat.text
            reply = chat.json()
            assert reply["choices"][0]["message"]["content"].startswith("[support_lora-v1] Customer Ada")
            assert reply["model_ops"]["versions"]["prompt"]["version"] == 1
            assert seen[-1]["max_tokens"] == 50 and seen[-1]["temperature"] == 0.2  # the caller's, then the prompt's
            asked = len(seen)
            for refused in ({"stream": True}, {"n": 1000}, {"max_tokens": 10**400}, {"logit_bias": {"1": 5}}):
                r = c.post("/v1/applications/support_app/chat/completions", json={"variables": variables, **refused})
                assert r.status_code == 400, (refused, r.text)
            assert len(seen) == asked  # refused before the backend was asked

            # an adapter switch is an alias move, followed without a restart
            reg.set_alias("support_lora", "live", 3, reason="retrained adapter")
            wait_for(
                lambda: (
                    c.post("/v1/applications/support_app/prompt", json={"variables": variables}).json()["versions"][
                        "adapter"
                    ]["version"]
                    == 3
                ),
                30,
                "the adapter switch",
            )
            switched = c.post("/v1/applications/support_app/prompt", json={"variables": variables}).json()
            # the base stays the one recorded (the new adapter was trained on tiny_base v2: the same architecture)
            assert switched["versions"]["base_model"]["version"] == 1
            assert (lora_dir / "support_lora-v3" / "adapter_config.json").is_file()

            # an alias moved to an adapter for another architecture is reported and never served
            reg.set_alias("support_lora", "live", 2, reason="the wide adapter, by mistake")
            wait_for(lambda: "support_app" in c.get("/status").json()["applications"]["problems"], 30, "the refusal")
            problem = c.get("/status").json()["applications"]["problems"]["support_app"]
            assert "support_lora/2 was trained on wide_base v1" in problem
            still = c.post("/v1/applications/support_app/prompt", json={"variables": variables}).json()
            assert still["versions"]["adapter"]["version"] == 3

            bad = c.post("/v1/applications/support_app/prompt", json={"variables": {"customer": "Ada"}})
            assert bad.status_code == 400 and "missing message, order_id" in bad.json()["error"]
            assert c.post("/v1/applications/nope/prompt", json={"variables": {}}).status_code == 404


def test_an_application_is_canaried_promoted_and_rolled_back_as_a_unit(reg: Registry, tmp_path: Path) -> None:
    from model_ops.serving.app import ServeConfig, create_app

    parts(reg, tmp_path)
    reg.register(
        "support_reply", prompt_file(tmp_path, PROMPT.replace("courteous", "brief") + "model: models:/support_lora/1\n")
    )
    pinned = "adapter: models:/support_lora/1\nprompt: prompts:/support_reply/{}\n"
    reg.register("support_app", app_file(tmp_path, pinned.format(1)))
    reg.register("support_app", app_file(tmp_path, pinned.format(2)))
    root = str(tmp_path / "root")
    reg.transition("models:/support_app/1", "staging", reason="reviewed")
    deploy(root, "support_app", "deploy", "--version", "1")
    reg.transition("models:/support_app/2", "staging", reason="reviewed")
    deploy(root, "support_app", "deploy")  # the newest in staging starts as the canary
    config = ServeConfig(root=root, applications=["support_app"], poll_seconds=0.05, log_predictions=False)
    variables = {"customer": "Ada", "order_id": 7, "message": "Late."}
    with uvicorn_on_loopback(create_app(config, specs={})) as url, httpx.Client(base_url=url, timeout=30) as c:

        def arms() -> dict[str, set[int]]:
            seen: dict[str, set[int]] = {}
            for i in range(60):
                doc = c.post(
                    "/v1/applications/support_app/prompt", json={"variables": variables, "key": f"user{i}"}
                ).json()
                seen.setdefault(doc["arm"], set()).add(doc["versions"]["prompt"]["version"])
            return seen

        assert arms() == {"production": {1}, "canary": {2}}  # 10 % of 60 keys: both arms, each with its parts
        deploy(root, "support_app", "promote")
        wait_for(lambda: arms() == {"production": {2}}, 30, "the promotion")
        deploy(root, "support_app", "rollback_production", "--reason", "answers got worse")
        wait_for(lambda: arms() == {"production": {1}}, 30, "the rollback")
        # withdrawn from production: it stops answering and the server is not ready, rather than serve it still
        reg.transition("models:/support_app/1", "archived", reason="withdrawn")
        wait_for(lambda: c.get("/v2/health/ready").status_code == 503, 30, "the withdrawal")
        gone = c.post("/v1/applications/support_app/prompt", json={"variables": variables})
        assert gone.status_code == 503 and "has no version in production" in gone.json()["error"]


def test_deploy_is_for_applications_and_refuses_parts_that_do_not_fit(
    reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts(reg, tmp_path)
    reg.register("support_app", app_file(tmp_path, "base_model: models:/tiny_base/1\n" + APP))
    root = str(tmp_path / "root")
    assert main(["--root", root, "deploy", "tiny_base", "deploy"]) == 2
    assert "deploys LLM applications" in capsys.readouterr().err
    reg.set_alias("support_lora", "live", 2, reason="the wide adapter")
    reg.transition("models:/support_app/1", "staging", reason="reviewed")
    assert main(["--root", root, "deploy", "support_app", "deploy", "--version", "1"]) == 2
    assert "support_lora/2 was trained on wide_base v1" in capsys.readouterr().err
    assert reg.get("support_app", 1).stage != "production"


def test_a_followed_prompt_must_take_the_recorded_variables_and_so_must_a_canary(
    reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts(reg, tmp_path)
    toned = PROMPT.replace("{{ message }}", "{{ message }} ({{ tone }})").replace("message]", "message, tone]")
    reg.register("support_reply", prompt_file(tmp_path, toned + "model: models:/support_lora/1\n"))  # v2: 2.0.0
    first = reg.register("support_app", app_file(tmp_path, APP))
    reg.set_alias("support_reply", "live", 2, reason="a tone variable")
    with pytest.raises(PolicyError, match="now resolves to models:/support_reply/2, which takes customer, message"):
        model_ops.load("models:/support_app/1", registry=reg)
    reg.set_alias("support_reply", "live", 1, reason="back")
    toned_app = reg.register(
        "support_app", app_file(tmp_path, "adapter: models:/support_lora@live\nprompt: prompts:/support_reply/2\n")
    )
    assert (first.semver, toned_app.semver) == ("1.0.0", "2.0.0")
    assert toned_app.bump["reason"] == "prompt variables changed (added tone)"
    root = str(tmp_path / "root")
    for v in (1, 2):
        reg.transition(f"models:/support_app/{v}", "staging", reason="reviewed")
    deploy(root, "support_app", "deploy", "--version", "1")
    capsys.readouterr()
    assert main(["--root", root, "deploy", "support_app", "deploy", "--version", "2"]) == 2
    assert "a canary would fail the callers routed to it" in capsys.readouterr().err
    deploy(root, "support_app", "promote", "--version", "2")  # the callers moved: straight to production
    assert reg.get("support_app", 2).stage == "production"


def test_adapters_are_placed_once_under_a_lock_and_placed_again_when_removed(reg: Registry, tmp_path: Path) -> None:
    from model_ops.serving.applications import Applications, lora_name

    parts(reg, tmp_path)
    team = reg.register("team/lora", adapter_dir(tmp_path / "t1", seed=9), base="models:/tiny_base/1")
    assert lora_name(team) == "team+lora-v1"
    lora = reg.get("support_lora", 1)
    lora_dir = tmp_path / "loras"
    servers = [Applications(lambda: reg, [], lora_dir=lora_dir) for _ in range(4)]
    errors: list[BaseException] = []

    def place(server: Any) -> None:
        try:
            server._place_adapter(reg, lora)
        except BaseException as e:  # noqa: BLE001 (collected for the assertion)
            errors.append(e)

    fetched: list[str] = []
    real_fetch = reg.artifacts.fetch

    def counted_fetch(digest: str, dest: Any) -> Any:
        fetched.append(digest)
        return real_fetch(digest, dest)

    reg.artifacts.fetch = counted_fetch  # type: ignore[method-assign]
    threads = [threading.Thread(target=place, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and fetched == [lora.digest]  # four servers, one fetch: the others found it placed
    placed = lora_dir / "support_lora-v1"
    expected = (tmp_path / "l1" / "adapter_model.safetensors").read_bytes()
    assert (placed / "adapter_model.safetensors").read_bytes() == expected
    assert sorted(p.name for p in lora_dir.iterdir()) == [".model_ops.lock", "support_lora-v1"]
    (placed / "adapter_model.safetensors").chmod(0o644)
    (placed / "adapter_model.safetensors").write_bytes(b"damaged")
    Applications(lambda: reg, [], lora_dir=lora_dir)._place_adapter(reg, lora)  # a new server checks what it finds
    assert (placed / "adapter_model.safetensors").read_bytes() == expected and len(fetched) == 2

    # a directory removed under a running server is placed again at its next poll, though the registry did not move
    reg.register(
        "support_app", app_file(tmp_path, "adapter: models:/support_lora/1\nprompt: prompts:/support_reply/1\n")
    )
    reg.transition("models:/support_app/1", "staging", reason="reviewed")
    deploy(str(tmp_path / "root"), "support_app", "deploy", "--version", "1")
    server = Applications(lambda: reg, ["support_app"], lora_dir=lora_dir)
    server.refresh()
    assert server.ready and len(fetched) == 2  # what is there was checked, not fetched again
    assert server.refresh() is False and len(fetched) == 2  # nothing moved: nothing read
    import shutil

    shutil.rmtree(placed)
    server.refresh()
    assert (placed / "adapter_model.safetensors").read_bytes() == expected and len(fetched) == 3


def test_the_application_server_refuses_bad_input(
    reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_ops.serving.app import ServeConfig, create_app

    parts(reg, tmp_path)
    reg.register("team/app", app_file(tmp_path, APP))
    reg.transition("models:/team/app/1", "staging", reason="reviewed")
    root = str(tmp_path / "root")
    deploy(root, "team/app", "deploy", "--version", "1")
    capsys.readouterr()
    for argv, message in (
        (["serve", "--application", "tiny_base"], "tiny_base is a 'base_model' model, not an LLM application"),
        (["serve", "--application", "../x"], "invalid model name"),
        (
            ["serve", "--application", "team/app", "--lora-dir", str(tmp_path / "a0" / "support.application.yaml")],
            "cannot be used",
        ),
        (["deploy", "team/app", "promote", "--version", "0"], "is not a version number"),
    ):
        try:
            code = main(["--root", root, *argv])
        except SystemExit as e:  # the argument parser's own refusal
            code = e.code
        assert code == 2, argv
        assert message in capsys.readouterr().err
    variables = {"customer": "Ada", "order_id": 7, "message": "Late."}
    config = ServeConfig(root=root, applications=["team/app"], poll_seconds=0.05, log_predictions=False)
    with uvicorn_on_loopback(create_app(config, specs={})) as url, httpx.Client(base_url=url, timeout=30) as c:
        ok = c.post("/v1/applications/team/app/prompt", json={"variables": variables})
        assert ok.status_code == 200 and ok.json()["application"] == "team/app"
        assert c.get("/v1/applications/team/app").json()["manifest"]["production"] == 1
        no_backend = c.post("/v1/applications/team/app/chat/completions", json={"variables": variables})
        assert no_backend.status_code == 501 and "--generate-url" in no_backend.json()["error"]
        huge = c.post("/v1/applications/team/app/prompt", content=b'{"variables": {}, "key": ' + b"9" * 5000 + b"}")
        assert huge.status_code == 400 and "cannot be read" in huge.json()["error"]
        named_self = c.post("/v1/applications/team/app/prompt", json={"variables": {**variables, "self": 1}})
        assert named_self.status_code == 400 and "unknown self" in named_self.json()["error"]
        for body, status, message in (
            ({"variables": variables, "extra": 1}, 400, "unknown field(s) extra"),
            ({"variables": "Ada"}, 400, "'variables' must be an object"),
            ({"variables": variables, "messages": []}, 400, "come from the application"),
            ({"variables": variables, "max_tokens": 10**400}, 400, "unknown field(s) max_tokens"),
            (
                {"variables": {**variables, "coupon": 1}},
                400,
                "team/app v1 (production, prompt models:/support_reply/1): ",
            ),
        ):
            r = c.post("/v1/applications/team/app/prompt", json=body)
            assert (r.status_code, message in r.json()["error"]) == (status, True), r.text
    from model_ops.serving.applications import generation_fields
    from model_ops.serving.scoring import RequestError

    assert generation_fields({"max_tokens": 50, "temperature": 0.5, "stop": ["\n"]}) == {
        "max_tokens": 50,
        "temperature": 0.5,
        "stop": ["\n"],
    }
    for fields, message in (
        ({"stream": True}, "streaming is not supported"),
        ({"n": 1000}, "'n' must be from 1 to 8"),
        ({"temperature": "hot"}, "'temperature' must be a number"),
        ({"logit_bias": {}}, "unknown field(s) logit_bias"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "at most 4 texts"),
    ):
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            generation_fields(fields)


def test_loads_racing_on_an_empty_or_damaged_cache_all_get_an_intact_directory(reg: Registry, tmp_path: Path) -> None:
    import shutil

    from model_ops.loading import cache_dir, cached_dir

    mv = reg.register("tiny_base", base_dir(tmp_path / "b"))
    entry = cache_dir() / mv.digest
    for attempt in range(12):
        if attempt % 2:  # a damaged entry every other time: each loader must see it replaced once, not twice
            (entry / "files").mkdir(parents=True)
            (entry / "manifest.json").write_bytes(b"damaged")
        found: list[Any] = []

        def one() -> None:
            try:
                path = cached_dir(reg.artifacts, mv.digest)
                found.append(sorted(p.name for p in path.iterdir()))  # still there after every other loader ran
            except BaseException as e:  # noqa: BLE001 (collected for the assertion)
                found.append(e)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(f, list) and "config.json" in f for f in found), found
        assert (entry / "files" / "config.json").is_file()
        assert not [p for p in entry.parent.iterdir() if p.name.endswith((".bad", ".part"))]
        shutil.rmtree(entry)
