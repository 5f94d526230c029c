"""A walk through the Dagster UI after a replay, in headless Chromium driven by Playwright.

The browser test (``test_ui.py``) and the README's screenshots come from this one walk, so the pictures show what
the test checked. Chromium is the system's (``/usr/bin/chromium``, installed by ``.ci/run``): Playwright's own
browser download cannot work on a machine without the internet.

    python -m model_ops_tests.ui_tour --out docs/ui      # replays 2013-01..2013-10, then takes the screenshots
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from model_ops_tests.helpers import free_port

PROJECT = Path(__file__).parents[1]
CHROMIUM = os.environ.get("MODEL_OPS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying hosts a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1920, "height": 1000}
UNTIL = "2013-10"  # the replay the walk reads: a retrain, a promotion, the faulty canary and its rollback


@dataclass(frozen=True)
class Stop:
    """One page of the walk: where it is, what it shows once its data has arrived, and its screenshot's name.

    ``then``: ``"plots"`` switches the metadata to its plots; ``"each_event"`` opens every event of the asset's
    Events tab in turn, so the walk reads what each one says, not only the newest."""

    name: str
    path: str
    wait_for: str
    shot: str
    then: str | None = None


@dataclass
class Seen:
    """What one page showed: its visible text (and each opened event's), and what its console said."""

    stop: Stop
    text: str
    arrived: bool  # the page showed ``stop.wait_for`` in time
    events: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def stops(model: str = "flight_delay", location: str = "model_ops") -> list[Stop]:
    sensors = f"/locations/{location}/sensors"
    return [
        Stop("registry", f"/assets/{model}/registry", "version_count", "registry.png"),
        Stop("versions", f"/assets/{model}/versions", "roc_auc", "versions-plots.png", then="plots"),
        Stop(
            "deployment",
            f"/assets/{model}/deployment?view=events",
            "Materialized in run",
            "deployment-events.png",
            then="each_event",
        ),
        Stop("drift_sensor", f"{sensors}/{model}_drift_sensor", "1 run requested", "drift-sensor.png"),
        Stop("registry_sensor", f"{sensors}/{model}_registry_sensor", "runs requested", "registry-sensor.png"),
        Stop("runs", "/runs", f"{model}_monthly", "runs.png"),
    ]


@contextlib.contextmanager
def webserver(dagster_home: Path, root: Path, log: Path, *, start_s: float = 180) -> Iterator[str]:
    """``dagster-webserver`` on loopback over the project's workspace, up within ``start_s`` and stopped on exit;
    yields its address."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "MODEL_OPS_ROOT": str(root)}
    command = [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "-h", "127.0.0.1", "-p", str(port)],
            cwd=PROJECT,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,  # its own process group: the code server it starts is stopped with it
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_s
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError as e:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the webserver did not start; its log: {log}") from e
                time.sleep(0.5)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def walk(base: str, out: Path | None = None, *, timeout_s: float = 120) -> dict[str, Seen]:
    """Open every :func:`stops` page in headless Chromium; wait for its data; keep its text, console errors and
    (with ``out``) a screenshot."""
    from playwright.sync_api import TimeoutError as Timeout
    from playwright.sync_api import sync_playwright

    seen: dict[str, Seen] = {}
    wait_ms = timeout_s * 1000
    with tempfile.TemporaryDirectory(prefix="model-ops-chromium-") as profile, sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, viewport=VIEWPORT
        )
        # A new profile is greeted by Dagster's community sign-up dialog a second after a page loads, over whatever
        # the walk is reading; the UI skips it once its "communityNux" entry is set, as a click on Skip would.
        browser.add_init_script("window.localStorage.setItem('communityNux', '1')")
        try:
            page = browser.new_page()
            page.set_default_timeout(wait_ms)  # a loaded machine is slow; every wait gets the same patience
            page.set_default_navigation_timeout(wait_ms)
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            for stop in stops():
                errors.clear()
                events: list[str] = []
                try:
                    page.goto(base + stop.path, wait_until="domcontentloaded")
                    if stop.then == "plots":
                        page.get_by_role("button", name="Plots").first.click()
                    page.get_by_text(stop.wait_for, exact=False).first.wait_for(timeout=wait_ms)
                    page.wait_for_load_state("networkidle", timeout=wait_ms)
                    if stop.then == "each_event":
                        rows = page.locator("[class*='AssetEventList_assetListRow']")
                        for i in range(rows.count()):
                            rows.nth(i).click()
                            page.wait_for_load_state("networkidle", timeout=wait_ms)
                            events.append(page.inner_text("body"))
                        rows.first.click()
                    arrived = True
                except Timeout:
                    arrived = False
                shot = None
                if out is not None:
                    out.mkdir(parents=True, exist_ok=True)
                    shot = out / stop.shot
                    page.screenshot(path=str(shot))
                seen[stop.name] = Seen(stop, page.inner_text("body"), arrived, events, list(errors), shot)
        finally:
            browser.close()
    return seen


def replay(base: Path, until: str = UNTIL) -> tuple[Path, Path]:
    """The demo's replay into ``base``; returns its Dagster home and registry root."""
    from model_ops.defs.replay import run_demo

    home, root = base / "home", base / "root"
    os.environ["DAGSTER_HOME"], os.environ["MODEL_OPS_ROOT"] = str(home), str(root)
    run_demo(root=str(root), dagster_home=str(home), until=until, progress=print)
    return home, root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROJECT / "docs" / "ui", help="where the screenshots go")
    parser.add_argument("--dagster-home", type=Path, help="an instance a replay already filled (else a new one)")
    parser.add_argument("--root", type=Path, help="that replay's registry root")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="model-ops-ui-") as tmp:
        if args.dagster_home is None:
            home, root = replay(Path(tmp))
        else:
            home, root = args.dagster_home, args.root
        with webserver(home, root, Path(tmp) / "webserver.log") as url:
            seen = walk(url, args.out)
    missing = [name for name, page in seen.items() if not page.arrived]
    for name, page in seen.items():
        state = "shown" if page.arrived else f"did not show {page.stop.wait_for!r}"
        print(f"{name}: {state}, {page.screenshot} ({len(page.console_errors)} console errors)")
        for error in page.console_errors:
            print(f"  {error}")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
