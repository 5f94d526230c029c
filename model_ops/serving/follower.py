"""The thread that keeps a server's state in step with the registry: one :meth:`Follower.refresh` now, then one
every ``poll_seconds`` until stopped. Shared by the model slots (:mod:`model_ops.serving.fleet`) and the LLM
applications (:mod:`model_ops.serving.applications`), so both start, poll, survive a failing poll and stop alike."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("model_ops.serving")


class Follower:
    """Subclasses say what one poll does (:meth:`refresh`), the thread's name and what a failed poll is called."""

    thread_name = "model-ops-serve-follower"
    failure = "refreshing from the registry failed"

    def __init__(self, poll_seconds: float) -> None:
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        """One poll: True when what is served changed."""
        raise NotImplementedError

    def start(self) -> None:
        """Refresh once (as far as the registry allows), then follow the registry in a daemon thread."""
        self.refresh()
        self._thread = threading.Thread(target=self._follow, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # a bug in one poll must not end the following; what is in force keeps serving
                log.exception("model_ops serve: %s", self.failure)
