"""Progress for long transfers: a bar on a terminal, silence everywhere else (pipes, CI, Dagster runs)."""

from __future__ import annotations

import os
import sys
import threading
from types import TracebackType

SHOW_FROM_BYTES = 64 << 20


class Progress:
    """Counts bytes; draws a tqdm bar on stderr only for transfers of 64 MiB or more on a terminal.

    ``MODEL_OPS_PROGRESS=0`` silences it, ``=1`` forces it. Thread-safe: multipart uploads update it from workers.
    """

    def __init__(self, total: int, label: str | None) -> None:
        self.total = total
        self.done = 0
        self._lock = threading.Lock()
        self._bar = None
        if label and self._wanted(total):
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
            )

    @staticmethod
    def _wanted(total: int) -> bool:
        setting = os.environ.get("MODEL_OPS_PROGRESS", "")
        if setting == "0":
            return False
        if setting == "1":
            return True
        return total >= SHOW_FROM_BYTES and sys.stderr.isatty()

    def update(self, n: int) -> None:
        with self._lock:
            self.done += n
            if self._bar is not None:
                self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
