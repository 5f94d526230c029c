"""An adapter switch on a live `model-ops serve --application`: how long from the alias move returning to the first
answer that names the new adapter (goal: within 1 s).

A base model (generated safetensors shards with real headers, ``--hidden`` × ``--layers``), ``--adapters`` LoRA
adapters on it (rank ``--rank`` on q_proj and v_proj, float16: the PEFT layout), a prompt and an application that
follows ``models:/support_lora@live`` are registered; the application is deployed and served by the real command
(``model-ops serve --application support_app --lora-dir DIR``, a separate process, polling every ``--poll`` s).
Then ``--switches`` times: the alias moves to the next adapter (a registry write, as ``model-ops alias set`` does)
and the benchmark asks ``/v1/applications/support_app/prompt`` every 5 ms until the answer names the new adapter.
The first switch to each adapter is cold (it is fetched, verified and written to the LoRA directory); later
switches find the directory the server placed. Printed: cold and warm, the median, p90 and max seconds, and the
adapter's size.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import eprint, machine, table  # noqa: E402

PROMPT = """\
template: "Customer {{ customer }} asks: {{ message }}"
variables: [customer, message]
system: You are a courteous support agent.
parameters: {temperature: 0.2, max_tokens: 200}
"""


def base_dir(path: Path, hidden: int, layers: int) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    for i in range(layers):
        shard = {
            f"model.layers.{i}.self_attn.{proj}.weight": rng.standard_normal((hidden, hidden)).astype(np.float16)
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj")
        }
        save_file(shard, str(path / f"model-{i + 1:05d}-of-{layers:05d}.safetensors"))
    (path / "config.json").write_text(json.dumps({"architectures": ["BenchLlama"], "hidden_size": hidden}))
    return path


def adapter_dir(path: Path, hidden: int, layers: int, rank: int, seed: int) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            module = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{module}.lora_A.weight"] = rng.standard_normal((rank, hidden)).astype(np.float16)
            tensors[f"{module}.lora_B.weight"] = rng.standard_normal((hidden, rank)).astype(np.float16)
    path.mkdir(parents=True)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": 2 * rank,
        "target_modules": ["q_proj", "v_proj"],
        "base_model_name_or_path": "bench-base",
    }
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--adapters", type=int, default=4)
    p.add_argument("--switches", type=int, default=24)
    p.add_argument("--poll", type=float, default=0.2, help="the server's registry poll (its default)")
    args = p.parse_args()
    from model_ops.registry import Registry

    with tempfile.TemporaryDirectory(prefix="bench_adapter_switch_") as tmp:
        work = Path(tmp)
        root = work / "root"
        env = {**os.environ, "MODEL_OPS_ACTOR": "bench", "MODEL_OPS_CACHE": str(work / "cache")}
        env.pop("MODEL_OPS_POLICY", None)
        os.environ.update({"MODEL_OPS_CACHE": env["MODEL_OPS_CACHE"]})
        reg = Registry.open(root, actor="bench")
        reg.register("bench_base", base_dir(work / "base", args.hidden, args.layers))
        for n in range(args.adapters):
            adapter = adapter_dir(work / f"lora{n}", args.hidden, args.layers, args.rank, seed=n + 1)
            reg.register("support_lora", adapter, base="models:/bench_base/1")
        adapter_mb = (work / "lora0" / "adapter_model.safetensors").stat().st_size / 2**20
        reg.set_alias("support_lora", "live", 1, reason="first adapter")
        (work / "p").mkdir()
        (work / "p" / "support.prompt.yaml").write_text(PROMPT)
        reg.register("support_reply", work / "p" / "support.prompt.yaml")
        (work / "a").mkdir()
        (work / "a" / "support.application.yaml").write_text(
            "adapter: models:/support_lora@live\nprompt: prompts:/support_reply/1\n"
        )
        reg.register("support_app", work / "a" / "support.application.yaml")
        reg.transition("models:/support_app/1", "staging", reason="benchmark")
        cli = [sys.executable, "-m", "model_ops.cli", "--root", str(root)]
        subprocess.run([*cli, "deploy", "support_app", "deploy", "--version", "1"], env=env, check=True)
        port = free_port()
        lora_dir = work / "loras"
        log = (work / "serve.log").open("wb")
        serve = [*cli, "serve", "--application", "support_app", "--lora-dir", str(lora_dir), "--port", str(port)]
        proc = subprocess.Popen([*serve, "--poll", str(args.poll), "--no-log"], env=env, stdout=log, stderr=log)
        url = f"http://127.0.0.1:{port}/v1/applications/support_app/prompt"
        body = {"variables": {"customer": "Ada", "message": "Where is my parcel?"}}
        passes: dict[str, list[float]] = {"cold": [], "warm": []}
        try:
            with httpx.Client(timeout=30) as client:
                deadline = time.monotonic() + 180
                while True:
                    if proc.poll() is not None:
                        raise SystemExit(f"model-ops serve exited with {proc.returncode}: see {log.name}")
                    try:
                        if client.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit("model-ops serve was not ready within 180 s")
                    time.sleep(0.1)
                current = 1
                for i in range(args.switches):
                    target = current % args.adapters + 1
                    reg.set_alias("support_lora", "live", target, reason=f"switch {i}")
                    t0 = time.perf_counter()
                    while True:
                        doc = client.post(url, json=body).json()
                        if doc["versions"]["adapter"]["version"] == target:
                            break
                        if time.perf_counter() - t0 > 60:
                            raise SystemExit(f"the server did not switch to adapter v{target} within 60 s")
                        time.sleep(0.005)
                    passes["cold" if i < args.adapters - 1 else "warm"].append(time.perf_counter() - t0)
                    current = target
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    rows = []
    result: dict[str, Any] = {"machine": machine(), "args": vars(args), "adapter_mb": round(adapter_mb, 1)}
    for label, xs in passes.items():
        if not xs:
            continue
        a = np.asarray(xs)
        figures = {
            "n": len(a),
            "median_s": round(float(np.median(a)), 3),
            "p90_s": round(float(np.percentile(a, 90)), 3),
            "max_s": round(float(a.max()), 3),
        }
        result[label] = figures
        rows.append([label, figures["n"], figures["median_s"], figures["p90_s"], figures["max_s"]])
    eprint(f"adapter switch on a live server ({adapter_mb:.1f} MiB adapters, poll {args.poll} s; goal <= 1 s):")
    eprint(table(rows, ["pass", "n", "median s", "p90 s", "max s"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
