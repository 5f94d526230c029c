"""``model-ops serve``: the application on uvicorn.

uvicorn turns SIGTERM and SIGINT into a graceful shutdown: it stops accepting connections, lets the requests in
flight (and their background shadow scoring) finish, then runs the application's shutdown, which writes every
queued prediction-log row before the process exits. With ``workers > 1`` each worker process has its own follower
and its own log writer (appends to a Delta table from several processes are safe); the configuration reaches them
through ``MODEL_OPS_SERVE``.
"""

from __future__ import annotations

import logging
import os
import signal

from model_ops.errors import UsageError
from model_ops.serving.app import ServeConfig, create_app

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8080, workers: int = 1) -> None:
    import uvicorn

    if workers < 1:
        raise UsageError(f"--workers must be 1 or more, got {workers}")
    if not 0 <= port <= 65535:
        raise UsageError(f"--port must be within 0..65535, got {port}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    common = {"host": host, "port": port, "log_level": "warning", "timeout_graceful_shutdown": 30}
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; with these handlers in place
    # that ends here, so a server stopped by SIGTERM or Ctrl-C after writing its log exits 0, not killed by it.
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _frame: received.append(s)) for sig in STOP_SIGNALS}
    try:
        if workers == 1:
            uvicorn.run(create_app(config, own_process=True), **common)  # type: ignore[arg-type]
        else:
            os.environ["MODEL_OPS_SERVE"] = config.to_json()
            uvicorn.run("model_ops.serving.app:app_from_env", factory=True, workers=workers, **common)  # type: ignore[arg-type]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        logging.getLogger("model_ops.serving").info("model_ops serve: stopped by signal %d", received[-1])
