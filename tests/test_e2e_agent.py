"""End to end with a real agent running real Workloads: the torch serving runtime on
the CPU (tiny model), behind a control plane of real processes. Simulated devices
stand in for GPUs; the runtimes themselves are real and answer over HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest
import yaml

from common.client import Client, ClientError
from tests.conftest import deployment
from tests.e2e import condition, running_stack, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
TINY = {"layers": 2, "hidden": 64, "heads": 2, "kvHeads": 1, "intermediate": 128, "maxSeqLen": 128}


def tiny(name: str, replicas: int = 1) -> dict:
    doc = deployment(name, replicas=replicas)
    doc["spec"]["model"] = {"source": "builtin:tiny-llama", "config": TINY}
    return doc


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("agent-stack")) as running:
        running.start_agent("cpu-a", "4xL4", run_workloads=True)
        wait_for(lambda: running.node_ready("cpu-a"), what="agent registered")
        yield running


def ready(live, name):
    document = live.client.get("deployments", name)
    return (
        document if condition(document, "Ready") == "True" and document["status"].get("endpoints") else None
    )


def workload(live, owner):
    items = live.client.list("workloads", labelSelector=f"flotilla.dev/owner={owner}")["items"]
    return items[0] if items else None


def complete(url: str, prompt: str = "Hello") -> dict:
    """Greedy: sampled, the random-weight model ends on EOS before max_tokens about 1 time in 40."""
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def test_a_deployment_is_served_over_http_once_ready(live):
    live.client.apply(yaml.safe_dump(tiny("served")))
    document = wait_for(lambda: ready(live, "served"), timeout=90, what="Ready=True with an endpoint")
    (url,) = document["status"]["endpoints"]
    result = complete(url)
    assert result["usage"]["completion_tokens"] == 8
    assert isinstance(result["choices"][0]["text"], str)
    wl = workload(live, "served")
    assert wl["status"]["phase"] == "Running" and wl["status"]["endpoint"] == url


def test_the_workload_logs_reach_the_control_plane(live):
    wait_for(lambda: ready(live, "served"), timeout=90, what="served ready")
    name = workload(live, "served")["metadata"]["name"]

    def logged():
        out = live.cli("logs", f"workload/{name}")
        return out.returncode == 0 and "serving builtin:tiny-llama" in out.stdout

    wait_for(logged, timeout=20, what="the runtime's log in flotilla logs")


def test_a_killed_workload_process_is_restarted_and_the_crash_reported(live):
    wait_for(lambda: ready(live, "served"), timeout=90, what="served ready")
    name = workload(live, "served")["metadata"]["name"]
    config = live.stack.home / "agent" / "cpu-a" / f"{name}.json"
    found = subprocess.run(
        ["pgrep", "-f", f"agents.runtimes.serve.*{config}"], capture_output=True, text=True, check=False
    )
    pid = int(found.stdout.split()[0])
    os.kill(pid, signal.SIGKILL)

    def crashed_and_back():
        status = workload(live, "served")["status"]
        running_again = status.get("phase") == "Running" and condition({"status": status}, "Ready") == "True"
        return status.get("restarts", 0) >= 1 and status.get("lastExitCode") == -9 and running_again

    status = (
        wait_for(crashed_and_back, timeout=90, what="restart after the crash")
        and workload(live, "served")["status"]
    )
    assert status["lastLog"], "the last lines of the log are reported"
    document = wait_for(lambda: ready(live, "served"), timeout=30, what="served again")
    complete(document["status"]["endpoints"][0])


def test_an_agent_killed_and_restarted_keeps_its_node_and_recovers_its_workloads(live):
    wait_for(lambda: ready(live, "served"), timeout=90, what="served ready")
    uid = live.client.get("nodes", "cpu-a")["metadata"]["uid"]
    live.stack.kill("agent-cpu-a", signal.SIGKILL)  # its Workloads die with it (PDEATHSIG)
    live.start_agent("cpu-a", "4xL4", run_workloads=True)
    time.sleep(2)
    document = wait_for(lambda: ready(live, "served"), timeout=120, what="served again after the restart")
    assert live.client.get("nodes", "cpu-a")["metadata"]["uid"] == uid
    complete(document["status"]["endpoints"][0])


def test_a_control_plane_restart_loses_nothing_and_the_agent_reconnects(live):
    wait_for(lambda: ready(live, "served"), timeout=90, what="served ready")
    url = live.client.get("deployments", "served")["status"]["endpoints"][0]
    live.stack.kill("web", signal.SIGTERM)
    complete(url)  # the Workload keeps serving while the control plane is away
    live.stack.start_web()
    live.stack.wait_ready()
    assert live.client.get("deployments", "served")["status"]["endpoints"] == [url]
    live.client.apply(yaml.safe_dump(tiny("after-restart")))
    wait_for(lambda: ready(live, "after-restart"), timeout=120, what="a new deployment served after restart")


def test_the_node_token_kept_by_the_agent_cannot_reach_other_nodes(live):
    token = (live.stack.home / "agent" / "cpu-a" / "node-token").read_text().strip()
    node = Client(live.stack.url, token)
    assert node.get("nodes", "cpu-a")["metadata"]["name"] == "cpu-a"
    for call in (
        lambda: node.get("nodes", "gpu-elsewhere"),
        lambda: node.list("deployments"),
        lambda: node.request("POST", "/api/v1/agent/heartbeat", json={"name": "gpu-elsewhere"}),
    ):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.status == 403


def test_a_training_job_runs_to_succeeded_and_reports_progress(live):
    job = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "tiny-train"},
        "spec": {
            "model": {"source": "builtin:tiny-llama", "config": {**TINY, "maxSeqLen": 64}},
            "data": {"source": "builtin:synthetic"},
            "steps": 20,
            "batchSize": 4,
        },
    }
    live.client.apply(yaml.safe_dump(job))

    def succeeded():
        document = live.client.get("trainingjobs", "tiny-train")
        return document if condition(document, "Succeeded") == "True" else None

    document = wait_for(succeeded, timeout=180, what="Succeeded")
    assert document["status"]["progress"]["step"] == 20
    assert workload(live, "tiny-train") is None, "a finished job releases its GPUs"
    reasons = [e["reason"] for e in live.client.events("trainingjobs", "tiny-train")["items"]]
    assert "CheckpointingNotAvailable" not in reasons  # no checkpoint policy: nothing is said about it
    assert "Checkpointed" not in reasons


def test_a_training_job_killed_with_sigkill_resumes_from_its_checkpoint_and_ends_as_if_never_killed(
    live, tmp_path
):
    """Issue 12's done-when: lazy-async every 5 steps, the runtime killed with SIGKILL mid-run
    by the test, restarted by the agent from its newest complete checkpoint, Succeeded, and
    its final parameters bit-identical to an uninterrupted run of the same config."""
    import json
    import sys
    from pathlib import Path

    import torch

    from plugins import checkpoint_files as files

    steps = 600
    job = {
        "apiVersion": "flotilla.dev/v1",
        "kind": "TrainingJob",
        "metadata": {"name": "resumed-train"},
        "spec": {
            "model": {"source": "builtin:tiny-llama", "config": {**TINY, "maxSeqLen": 64}},
            "data": {"source": "builtin:synthetic"},
            "steps": steps,
            "batchSize": 4,
            "checkpoint": {"policy": "lazy-async", "everySteps": 5},
        },
    }
    live.client.apply(yaml.safe_dump(job))
    running = wait_for(lambda: workload(live, "resumed-train"), timeout=60, what="the training Workload")
    uid = running["spec"]["owner"]["uid"]
    directory = live.stack.home / "agent" / "cpu-a" / "checkpoints" / f"resumed-train-{uid[:8]}"
    wait_for(lambda: files.listing(directory), timeout=120, interval=0.05, what="a first checkpoint")
    config = live.stack.home / "agent" / "cpu-a" / f"{running['metadata']['name']}.json"
    found = subprocess.run(
        ["pgrep", "-f", f"agents.runtimes.train.*{config}"], capture_output=True, text=True, check=False
    )
    os.kill(int(found.stdout.split()[0]), signal.SIGKILL)
    killed_at = files.step_of(files.listing(directory)[0])
    assert killed_at is not None and killed_at < steps, "killed mid-run"

    def succeeded():
        document = live.client.get("trainingjobs", "resumed-train")
        return document if condition(document, "Succeeded") == "True" else None

    document = wait_for(succeeded, timeout=300, what="Succeeded after the kill")
    status = document["status"]
    assert status["restoredFrom"]["step"] >= 5 and status["lastCheckpoint"]["step"] == steps
    assert condition(document, "Checkpointed") == "True"
    reasons = {e["reason"] for e in live.client.events("trainingjobs", "resumed-train", limit=1000)["items"]}
    assert {"Resumed", "Checkpointed"} <= reasons

    # the same config, never killed
    reference = tmp_path / "reference"
    (tmp_path / "config.json").write_text(json.dumps(running["spec"]["config"]))
    subprocess.run(
        [sys.executable, "-m", "agents.runtimes.train", "--config", str(tmp_path / "config.json"),
         "--device", "cpu"],
        env={**os.environ, "FLOTILLA_CHECKPOINT_DIR": str(reference)},
        capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    skipped: list[str] = []
    resumed = files.load(files.newest([Path(directory)], lambda path, why: skipped.append(why)))
    uninterrupted = files.load(files.newest([reference], lambda path, why: skipped.append(why)))
    assert resumed.step == uninterrupted.step == steps and not skipped
    for name, tensor in uninterrupted.model.items():
        assert torch.equal(resumed.model[name], tensor), name
    for index, state in uninterrupted.optimizer["state"].items():
        for key, tensor in state.items():
            assert torch.equal(resumed.optimizer["state"][index][key], tensor), (index, key)


def test_heartbeat_telemetry_is_stored_and_served(live):
    wait_for(lambda: ready(live, "served"), timeout=90, what="served ready")

    def sampled():
        items = live.client.request("GET", "/api/v1/nodes/cpu-a/telemetry", params={"resolution": "raw"})[
            "items"
        ]
        return items if items and any(item.get("workloads") for item in items) else None

    items = wait_for(sampled, timeout=30, what="telemetry with workload metrics")
    latest = items[-1]
    devices = latest.get("devices", [])
    assert {d["index"] for d in devices} == {0, 1, 2, 3}
    busy = [d for d in devices if (d.get("utilization") or 0) > 0]
    assert busy, "the simulated GPU running a Workload reports load"


ROUTER_KEY = "e2e-router-key-" + "0123456789abcdef"


def routed(live):
    """The Deployment ``routed`` once Ready with a router URL, else None."""
    document = live.client.get("deployments", "routed")
    url = document.get("status", {}).get("url")
    return document if condition(document, "Ready") == "True" and url else None


def test_a_deployment_with_a_cache_policy_is_served_through_its_router_to_the_openai_client(live):
    """Two replicas behind a router that the agent runs: the official openai client gets a
    completion, a chat and a stream at status.url; the key is required; the replicas'
    prefix-cache figures reach the control plane with telemetry."""
    import openai

    doc = tiny("routed", replicas=2)
    doc["spec"]["model"]["config"] = {**TINY, "maxSeqLen": 512}
    doc["spec"]["policies"] = {"cache": "prefix-aware"}
    doc["spec"]["serving"] = {"apiKeys": [ROUTER_KEY]}
    live.client.apply(yaml.safe_dump(doc))
    document = wait_for(lambda: routed(live), timeout=180, what="routed Ready with status.url")
    url = document["status"]["url"]
    assert url not in document["status"]["endpoints"] and len(document["status"]["endpoints"]) == 2
    stored = yaml.safe_dump(live.client.get("deployments", "routed"))
    assert ROUTER_KEY not in stored, "only the key's digest is stored"

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=ROUTER_KEY, max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    system = "You are a terse assistant. " * 8
    # greedy: sampled at temperature 1, the random-weight model ends early on EOS now and then
    completion = client.completions.create(model=model, prompt=system + "Hi", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 4
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Hello"}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=4, user="s-1")
    assert isinstance(chat.choices[0].message.content, str)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=6, stream=True)
    chunks = list(stream)
    assert chunks and chunks[-1].choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong-key-" + "x" * 16, max_retries=0).models.list()

    def hit_tokens():
        items = live.client.request("GET", "/api/v1/nodes/cpu-a/telemetry", params={"resolution": "raw"})
        total = 0.0
        for item in items["items"][-1:]:
            for name, metrics in (item.get("workloads") or {}).items():
                if name.startswith("routed-serve-"):
                    total += metrics.get("prefixCache.hitTokens", 0)
        return total or None

    # The same conversation again: prefix-aware routing sends it where its prefix is cached.
    client.chat.completions.create(model=model, messages=messages, max_tokens=4, user="s-1")
    assert wait_for(hit_tokens, timeout=30, what="prefix-cache hits in telemetry") > 0


def test_sigterm_drains_the_agent_stops_its_workloads_and_exits_cleanly(live):
    live.start_agent("cpu-drain", "1xL4", run_workloads=True, labels="pool=drain")
    wait_for(lambda: live.node_ready("cpu-drain"), what="cpu-drain registered")
    doc = tiny("drained")
    doc["spec"]["resources"] = {"gpusPerReplica": 1, "nodeSelector": {"pool": "drain"}}
    live.client.apply(yaml.safe_dump(doc))
    wait_for(lambda: ready(live, "drained"), timeout=90, what="drained served")
    name = workload(live, "drained")["metadata"]["name"]
    config = live.stack.home / "agent" / "cpu-drain" / f"{name}.json"
    assert subprocess.run(["pgrep", "-f", f"agents.runtimes.serve.*{config}"], check=False).returncode == 0
    agent = live.agents.pop("cpu-drain")
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=45) == 0, "the agent exits cleanly after draining"
    assert subprocess.run(["pgrep", "-f", f"agents.runtimes.serve.*{config}"], check=False).returncode == 1
    # The runtime's shutdown lines were shipped before the agent exited.
    logs = live.cli("logs", f"workload/{name}").stdout
    assert "shutting down" in logs and "stopped" in logs
    # The node now goes NotReady and the replica may be moved away at any moment; while
    # the Workload is still there, it must read Stopped, not crashed.
    remaining = workload(live, "drained")
    if remaining is not None and remaining["metadata"]["name"] == name:
        status = remaining["status"]
        assert status["phase"] == "Stopped" and condition({"status": status}, "Ready") == "False"
