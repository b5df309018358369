"""End to end: a Cluster's power budget held by the ``polca`` power-cap controller, with
real processes -- the web server, a Celery worker and beat, and two agents whose GPUs are
simulated (``--simulate 2xH100 --power-backend simulate``: nothing touches a real GPU's
limit, DESIGN §6). Load rises when a training job starts, the batch work is capped first,
the Cluster's draw is brought back under the budget; the job stops, the caps lift.

The simulated boards draw what their Workloads ask (agents/telemetry.py: training keeps a
GPU fully busy, serving at 60%) and never more than the limit the agent applied.
"""

from __future__ import annotations

import time

import pytest
import yaml

from tests.conftest import deployment
from tests.e2e import condition, running_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
BUDGET = 1900.0


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    env = {"FLOTILLA_POWERCAP_SECONDS": "1", "FLOTILLA_POWERCAP_MIN_INTERVAL": "0.5"}
    with running_stack(tmp_path_factory.mktemp("powercap-stack"), extra_env=env) as running:
        cluster = {"apiVersion": "flotilla.dev/v1", "kind": "Cluster", "metadata": {"name": "row-a"},
                   "spec": {"powerBudgetWatts": BUDGET, "policies": {"powercap": "polca"}}}  # fmt: skip
        running.client.apply(yaml.safe_dump(cluster))
        for name in ("gpu-a", "gpu-b"):
            running.start_agent(name, "2xH100", cluster="row-a", extra_args=("--power-backend", "simulate"))
        wait_for(lambda: running.node_ready("gpu-a") and running.node_ready("gpu-b"), what="agents")
        yield running


def power(live) -> dict:
    return live.client.get("clusters", "row-a")["status"].get("power") or {}


def training(name: str) -> dict:
    spec = {
        "model": {"source": "builtin:tiny-llama"},
        "data": {"source": "builtin:tiny-shakespeare"},
        "steps": 100,
        "resources": {"gpusPerReplica": 2},
        "cluster": "row-a",
    }
    return {"apiVersion": "flotilla.dev/v1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def test_caps_fall_on_batch_work_first_keep_the_draw_under_budget_and_lift_when_load_falls(live):
    chat = deployment("chat", replicas=2, cluster="row-a", priority="critical")
    live.client.apply(yaml.safe_dump(chat))
    wait_for(lambda: condition(live.client.get("deployments", "chat"), "Ready") == "True", what="chat ready")
    quiet = wait_for(
        lambda: (p := power(live)) and p["gpus"] == 4 and p["drawWatts"] > 600 and p, what="draw"
    )
    assert quiet["cappedGpus"] == 0 and quiet["drawWatts"] < BUDGET

    live.client.apply(yaml.safe_dump(training("pretrain")))  # two GPUs at full power: over budget
    capped = wait_for(lambda: (p := power(live))["cappedGpus"] > 0 and p["drawWatts"] <= BUDGET and p,
                      what="caps applied and the draw back under the budget", timeout=90)  # fmt: skip
    assert {c["owner"] for c in capped["capped"]} == {"TrainingJob/pretrain"}, capped["capped"]
    assert condition(live.client.get("clusters", "row-a"), "PowerWithinBudget") == "True"
    reasons = [e["reason"] for e in live.client.events("clusters", "row-a")["items"]]
    assert "PowerCapsApplied" in reasons, reasons
    # held: the serving GPUs keep their power and the draw stays under the budget
    for _ in range(5):
        time.sleep(1)
        held = power(live)
        assert held["drawWatts"] <= BUDGET, held
        assert all(c["owner"] == "TrainingJob/pretrain" for c in held["capped"]), held["capped"]
    # the agent of the training job's node applied the caps through its simulated backend
    capped_node = held["capped"][0]["node"]
    node_power = wait_for(lambda: (p := live.client.get("nodes", capped_node)["status"].get("power")) and
                          p.get("applied") and p, what="the caps applied")  # fmt: skip
    assert node_power["backend"] == "simulate" and node_power["error"] is None
    assert {int(i) for i, w in node_power["applied"].items() if w < 700} == {
        c["gpu"] for c in held["capped"] if c["node"] == capped_node
    }

    live.client.delete("trainingjobs", "pretrain")
    lifted = wait_for(lambda: (p := power(live))["cappedGpus"] == 0 and p, what="caps lifted", timeout=90)
    assert lifted["drawWatts"] < BUDGET
    reasons = [e["reason"] for e in live.client.events("clusters", "row-a")["items"]]
    assert "PowerCapsLifted" in reasons, reasons
