"""The dashboard in a real browser: headless Chromium (Debian's ``chromium``) driven by
Playwright, against a live stack (gunicorn, a Celery worker and beat) and a
simulated agent that reports telemetry over HTTP.

Screenshots of the overview, a node page and a deployment page are saved under
``test-artifacts/`` for a person to look at.

Without Chromium these tests are skipped with a message; CI installs it
(``apt-get install chromium``) and sets FLOTILLA_REQUIRE_BROWSER, so there a
missing browser fails the run instead of skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import running_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("FLOTILLA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM and os.environ.get("FLOTILLA_REQUIRE_BROWSER"):
    raise RuntimeError("FLOTILLA_REQUIRE_BROWSER is set (as in CI) but no Chromium was found")
if not CHROMIUM:
    pytest.skip(
        "browser tests need Chromium: install Debian's package (apt-get install chromium) "
        "or set FLOTILLA_CHROMIUM to a Chromium binary",
        allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")

DEPLOYMENT_YAML = """\
apiVersion: flotilla.dev/v1
kind: Deployment
metadata:
  name: browser-chat
spec:
  model:
    source: builtin:tiny-llama
  replicas: 1
  resources:
    gpusPerReplica: 1
"""
POLL_MS = 20_000  # the pages poll every 5 s; allow a few rounds


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[Any]:
    with running_stack(tmp_path_factory.mktemp("browser")) as running:
        passwords = {}
        for role in ("operator", "viewer"):
            created = running.client.request("POST", "/api/v1/users", json={"name": f"{role}1", "role": role})
            passwords[role] = created["password"]
        running.passwords = passwords
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield chromium
        chromium.close()


def log_in(browser: Any, live: Any, role: str) -> Any:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    page.set_default_timeout(POLL_MS)
    page.goto(f"{live.stack.url}/")
    assert "/login/" in page.url
    page.fill("input[name=username]", f"{role}1")
    page.fill("input[name=password]", live.passwords[role])
    page.click("button:has-text('Log in')")
    page.wait_for_url(f"{live.stack.url}/")
    return page


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def mark_page(page: Any) -> None:
    """A flag in the page's JavaScript state: it survives htmx swaps, not a reload."""
    page.evaluate("window.__notReloaded = true")


def still_same_page(page: Any) -> bool:
    return page.evaluate("window.__notReloaded === true")


def test_an_operator_watches_a_node_appear_applies_scales_and_cordons(browser, live):
    page = log_in(browser, live, "operator")
    assert "operator" in page.inner_text("header")

    # A node's GPUs appear on the open Nodes page, without a reload.
    page.goto(f"{live.stack.url}/nodes/")
    assert "No nodes yet" in page.inner_text("main")
    mark_page(page)
    live.start_agent("gpu-a", "2xH100")
    page.wait_for_selector('[data-gpu="gpu-a/1"]', timeout=POLL_MS)
    assert still_same_page(page)

    # Apply a Deployment through the Apply page, after looking at its plan.
    page.goto(f"{live.stack.url}/apply/")
    page.fill("textarea#yaml", DEPLOYMENT_YAML)
    page.click("#plan-form button[value=plan]")
    plan = page.wait_for_selector("table#plan")
    assert "created" in plan.inner_text() and "browser-chat" in plan.inner_text()
    page.click("#apply-form button[value=apply]")
    page.wait_for_selector("table#results")
    wait_for(
        lambda: (
            live.client.get("deployments", "browser-chat")["status"].get("replicas", {}).get("scheduled") == 1
        ),
        what="browser-chat scheduled",
    )

    # The GPU's telemetry changes on the open Nodes page, without a reload, once a
    # simulated Workload runs on it.
    page.goto(f"{live.stack.url}/nodes/")
    mark_page(page)
    cells = '[data-gpu^="gpu-a/"] .util'
    first = page.eval_on_selector_all(cells, "els => els.map(e => e.textContent.trim())")
    page.wait_for_function(
        "([sel, before]) => JSON.stringify("
        "[...document.querySelectorAll(sel)].map(e => e.textContent.trim())) !== JSON.stringify(before)",
        arg=[cells, first],
        timeout=30_000,
    )
    assert still_same_page(page)
    shot(page, "nodes")

    # Scale it from its page and watch the replicas change.
    page.goto(f"{live.stack.url}/deployments/browser-chat/")
    mark_page(page)
    page.fill("form.scale input[name=replicas]", "2")
    page.click("form.scale button:has-text('Scale')")
    page.wait_for_function(
        "() => (document.querySelector('.replicas') || {}).textContent?.includes('2/2')", timeout=30_000
    )
    shot(page, "deployment")

    # Cordon the node from its page.
    page.goto(f"{live.stack.url}/nodes/gpu-a/")
    page.click("button:has-text('Cordon')")
    page.wait_for_selector("text=cordoned")
    wait_for(lambda: live.client.get("nodes", "gpu-a")["spec"]["unschedulable"] is True, what="cordoned")
    shot(page, "node")

    page.goto(f"{live.stack.url}/")
    page.wait_for_selector("text=H100")
    shot(page, "overview")
    page.close()


def test_a_viewer_sees_no_actions_and_a_forged_post_is_refused(browser, live):
    live.client.apply(DEPLOYMENT_YAML.replace("browser-chat", "viewer-chat"))
    page = log_in(browser, live, "viewer")
    page.goto(f"{live.stack.url}/deployments/viewer-chat/")
    assert page.locator("button:has-text('Scale')").count() == 0
    assert page.locator("a:has-text('Apply')").count() == 0
    # The same POST the Scale button would send, with a valid CSRF token: the role is refused.
    status = page.evaluate(
        """async () => {
            const token = JSON.parse(document.body.getAttribute('hx-headers'))['X-CSRFToken'];
            const r = await fetch(location.pathname + 'scale', {method: 'POST',
                headers: {'X-CSRFToken': token, 'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'replicas=5'});
            return r.status;
        }"""
    )
    assert status == 403
    assert live.client.get("deployments", "viewer-chat")["spec"]["replicas"] == 1
    page.close()


def test_a_post_without_its_csrf_token_is_refused(browser, live):
    page = log_in(browser, live, "operator")
    page.goto(f"{live.stack.url}/nodes/")
    status = page.evaluate("""async () => (await fetch('/nodes/gpu-a/uncordon', {method: 'POST'})).status""")
    assert status == 403
    page.close()


def test_a_sized_deployment_shows_its_plan(browser, live):
    live.start_agent("gpu-plan", "2xH100")
    sized = DEPLOYMENT_YAML.replace("browser-chat", "plan-chat") + (
        "  workload: {requestsPerSecond: 2, inputTokens: 256, outputTokens: 64}\n"
        "  slo: {ttftMs: 2000, tpotMs: 100}\n"
        "  policies: {scheduler: melange}\n"
    )
    live.client.apply(sized)
    wait_for(lambda: live.client.get("deployments", "plan-chat")["status"].get("plan"), what="a plan")
    page = log_in(browser, live, "viewer")
    page.goto(f"{live.stack.url}/deployments/plan-chat/")
    assert "melange" in page.wait_for_selector("#schedule-plan[data-policy=melange]").inner_text()
    page.close()


def test_a_clusters_power_page_shows_caps_on_batch_work_and_the_draw_against_the_budget(browser, live):
    """A Cluster over its budget (two simulated H100s running a training job at full power,
    1,400 W against 1,000 W): the polca controller caps it, the agent's ``simulate`` backend
    applies the caps, and the Cluster page shows them live, with the draw chart."""
    cluster = {"apiVersion": "flotilla.dev/v1", "kind": "Cluster", "metadata": {"name": "row-p"},
               "spec": {"powerBudgetWatts": 1000, "policies": {"powercap": "polca"}}}  # fmt: skip
    live.client.apply(json.dumps(cluster))
    live.start_agent("gpu-power", "2xH100", cluster="row-p", extra_args=("--power-backend", "simulate"))
    wait_for(lambda: live.node_ready("gpu-power"), what="the agent of row-p")
    page = log_in(browser, live, "viewer")
    page.goto(f"{live.stack.url}/clusters/row-p/")
    mark_page(page)
    job = {"apiVersion": "flotilla.dev/v1", "kind": "TrainingJob", "metadata": {"name": "hot-train"},
           "spec": {"model": {"source": "builtin:tiny-llama"}, "data": {"source": "builtin:tiny-shakespeare"},
                    "steps": 100, "resources": {"gpusPerReplica": 2}, "cluster": "row-p"}}  # fmt: skip
    live.client.apply(json.dumps(job))
    row = page.wait_for_selector("#cluster-power tr[data-capped]", timeout=90_000)
    assert "TrainingJob" in row.inner_text() or "hot-train" in row.inner_text()
    assert "1,000 W" in page.inner_text("#power-summary")
    page.wait_for_selector("#cluster-power-chart svg")
    assert still_same_page(page)  # the card came by htmx, not a reload
    shot(page, "cluster-power")
    live.client.delete("trainingjobs", "hot-train")
    page.close()
