"""The three plugin kinds the agents run (cache, checkpointer, powercap), each chosen by a
spec and reached where it acts: a third-party plugin installed through a ``flotilla``
entry point, a Policy that selects it, the Workload config the reconciler writes, the
runtime that resolves it on the node; and a power limit a controller asks for, carried
by the heartbeat to a simulated agent's backend and reported back.

Power goes through the ``simulate`` backend only: nothing here may change a real GPU.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents import agent as agent_module
from agents import power as agent_power
from agents.devices import parse_simulate
from agents.runtimes import plugin_choice
from agents.runtimes.train.config import ConfigError, parse_config
from common.ports import free_port
from common.problems import Problem
from controlplane import power, store
from controlplane.apply import apply
from controlplane.auth import create_token
from controlplane.controllers import owners
from controlplane.models import Resource
from plugins import manager, types
from tests.conftest import Api, deployment, simulated_devices
from tests.e2e import wait_for
from tests.test_api import error_of

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCE = ROOT / "tests" / "entrypoint_plugins" / "flotilla_doors_plugin.py"
MODULE = PLUGIN_SOURCE.stem
API_VERSION = "flotilla.dev/v1"
TINY = {"layers": 2, "hidden": 64, "heads": 2, "kvHeads": 1, "intermediate": 128, "maxSeqLen": 64}


# --- a plugin distribution, installed through its entry point ----------------------


@pytest.fixture(scope="module")
def distribution(tmp_path_factory) -> Path:
    """A folder that holds an installed distribution as pip leaves one: the module, and a
    ``.dist-info`` whose ``entry_points.txt`` lists it in the ``flotilla`` group."""
    site = tmp_path_factory.mktemp("site-packages")
    shutil.copy(PLUGIN_SOURCE, site / PLUGIN_SOURCE.name)
    info = site / "flotilla_doors-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flotilla-doors\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[flotilla]\ndoors = {MODULE}\n")
    return site


@pytest.fixture
def installed(monkeypatch, distribution) -> Iterator[Path]:
    """The distribution on sys.path and entry points on (the test settings turn them off)."""
    monkeypatch.syspath_prepend(str(distribution))
    monkeypatch.setenv("FLOTILLA_LOAD_ENTRYPOINTS", "true")
    manager.reset()
    yield distribution
    manager.reset()
    sys.modules.pop(MODULE, None)


@pytest.fixture(autouse=True)
def fresh_plugins() -> Iterator[None]:
    manager.reset()
    yield
    manager.reset()


def runtime_env(site: Path | None) -> dict[str, str]:
    """The environment a node agent gives a runtime, with the plugin installed where ``site`` is."""
    env = {**os.environ, "FLOTILLA_LOAD_ENTRYPOINTS": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


def policy(name: str, kind: str, plugin: str, **params: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Policy",
        "metadata": {"name": name},
        "spec": {"type": kind, "plugin": plugin, "params": params},
    }


def training_job(name: str, **spec: Any) -> dict[str, Any]:
    body = {
        "model": {"source": "builtin:tiny-llama", "config": TINY},
        "data": {"source": "builtin:synthetic"},
        "steps": 2,
        "batchSize": 2,
        "runtime": {"seqLen": 16},
        **spec,
    }
    return {"apiVersion": API_VERSION, "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def workload_config(owner: str) -> dict[str, Any]:
    """The config of the owner's one replica (a cache policy also gives a Deployment a router)."""
    (workload,) = [
        w
        for w in Resource.objects.filter(kind="Workload")
        if w.spec["owner"]["name"] == owner and w.spec["role"] != "router"
    ]
    return workload.spec["config"]


def test_pluggy_loads_a_plugin_of_each_new_kind_from_an_entry_point(installed):
    pm = manager.get_manager()

    assert [dist.project_name for _, dist in pm.list_plugin_distinfo()] == ["flotilla-doors"]
    registry = manager.registry()
    cache, checkpointer, powercap = (
        registry["cache"]["doors-lru"],
        registry["checkpointer"]["doors-memory"],
        registry["powercap"]["doors-even"],
    )
    assert isinstance(cache, types.CachePolicy)
    assert isinstance(checkpointer, types.Checkpointer)
    assert isinstance(powercap, types.PowerCap)

    blocks = [types.CachedBlock(block_id=i, hash=i, last_used=float(10 - i)) for i in range(4)]
    assert cache.evict(blocks=blocks, needed=2, now=20.0, total_blocks=8, params=cache.Params()) == [3, 2]
    target = types.CheckpointTarget(owner="TrainingJob/t", local_dir="/unused")
    handle = checkpointer.save(state=types.TrainingState(step=7), target=target, params=checkpointer.Params())
    assert isinstance(handle, types.CheckpointHandle) and handle.wait() and handle.done and handle.step == 7
    assert checkpointer.restore(target=target, params=checkpointer.Params()).step == 7


def test_the_plugin_is_not_there_without_its_entry_points(monkeypatch, distribution):
    monkeypatch.syspath_prepend(str(distribution))

    assert "doors-lru" not in manager.registry()["cache"]


def test_a_node_resolves_a_plugin_choice_without_importing_django(installed):
    code = (
        "import sys\n"
        "from agents.runtimes.plugin_choice import resolve\n"
        "choice = resolve('cache', {'plugin': 'doors-lru', 'params': {'keepFree': 2}}, 'cache')\n"
        "print(choice.name, choice.params.keepFree, 'django' in sys.modules)\n"
    )
    env = {k: v for k, v in runtime_env(installed).items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)

    assert done.stdout.split() == ["doors-lru", "2", "False"], done.stderr


# --- cache: Policy -> Deployment -> Workload config -> serving runtime ----------------


def served_deployment(name: str, cache_policy: str | None) -> dict[str, Any]:
    doc = deployment(name, replicas=1)
    doc["spec"]["model"] = {"source": "builtin:tiny-llama", "config": TINY}
    doc["spec"]["runtime"] = {"kvCacheBlocks": 32, "maxBatch": 4}
    if cache_policy:
        doc["spec"]["policies"] = {"cache": cache_policy}
    return doc


def serve(config: dict[str, Any], tmp_path: Path, site: Path | None) -> subprocess.Popen[str]:
    """The serving runtime as the supervisor starts it, with the Workload's config."""
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(config))
    argv = [
        "-m",
        "agents.runtimes.serve",
        "--config",
        str(path),
        "--port",
        str(free_port()),
        "--device",
        "cpu",
    ]
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=runtime_env(site),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_cache_policy_named_by_a_deployment_reaches_the_serving_runtime(db, add_node, installed, tmp_path):
    add_node("gpu-a", gpus=1)
    apply([policy("short-pins", "cache", "doors-lru", pinSeconds=5)], actor="test")
    apply([served_deployment("chat", "short-pins")], actor="test")
    owners.reconcile("Deployment", "chat")

    config = workload_config("chat")
    assert config["cache"] == {
        "policy": "short-pins",
        "plugin": "doors-lru",
        "params": {"pinSeconds": 5.0, "keepFree": 0},
    }

    process = serve(config, tmp_path, installed)
    try:
        timer = threading.Timer(90, process.kill)
        timer.start()
        line = process.stdout.readline()
        timer.cancel()
        assert line, process.stderr.read()
        url = json.loads(line)["url"]
        stats = httpx.get(f"{url}/stats", timeout=10).json()
        assert stats["cachePolicy"] == "doors-lru"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_serving_runtime_on_a_node_without_the_cache_plugin_fails_at_start_naming_it(tmp_path):
    config = {"model": {"source": "builtin:tiny-llama", "config": TINY}, "cache": {"plugin": "doors-lru"}}

    process = serve(config, tmp_path, site=None)
    out, err = process.communicate(timeout=90)

    assert process.returncode == 1 and out == ""
    assert "cache.plugin: no cache plugin named 'doors-lru' is installed on this node" in err
    assert "install the package that provides 'doors-lru' on the node" in err


def test_the_node_validates_the_cache_params_again_with_its_own_copy_of_the_plugin(installed):
    section = {"plugin": "doors-lru", "params": {"pinSeconds": -1}}

    with pytest.raises(plugin_choice.PluginChoiceError) as caught:
        plugin_choice.resolve("cache", section, "cache")

    assert caught.value.field == "cache.params" and "cache.params.pinSeconds" in str(caught.value)


def test_a_deployment_that_names_no_cache_gets_no_cache_config(db, add_node):
    add_node("gpu-a", gpus=1)
    apply([served_deployment("plain", None)], actor="test")
    owners.reconcile("Deployment", "plain")

    assert "cache" not in workload_config("plain")


def test_a_policy_deleted_after_apply_leaves_the_cache_out_instead_of_failing_the_reconcile(
    db, add_node, installed
):
    add_node("gpu-a", gpus=1)
    apply([policy("short-pins", "cache", "doors-lru")], actor="test")
    apply([served_deployment("chat", "short-pins")], actor="test")
    store.request_delete(store.get("Policy", "short-pins"))

    owners.reconcile("Deployment", "chat")

    assert "cache" not in workload_config("chat")


# --- checkpointer: Policy -> TrainingJob -> Workload config -> training runtime -----------


def test_a_checkpointer_policy_named_by_a_training_job_reaches_the_training_runtime(
    db, add_node, installed, tmp_path
):
    add_node("gpu-a", gpus=1)
    apply([policy("keep-three", "checkpointer", "doors-memory", keep=3)], actor="test")
    apply([training_job("pretrain", checkpoint={"policy": "keep-three", "everySteps": 10})], actor="test")
    owners.reconcile("TrainingJob", "pretrain")

    config = workload_config("pretrain")
    assert config["checkpoint"] == {
        "policy": "keep-three",
        "plugin": "doors-memory",
        "params": {"keep": 3},
        "everySteps": 10,
    }
    parsed = parse_config(config)
    assert parsed.checkpointer.name == "doors-memory" and parsed.checkpointer.params.keep == 3
    assert parsed.checkpointer.policy == "keep-three" and parsed.checkpoint["everySteps"] == 10

    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "agents.runtimes.train", "--config", str(path), "--device", "cpu"],
        cwd=ROOT,
        env={**runtime_env(installed), "FLOTILLA_CHECKPOINT_DIR": str(tmp_path / "checkpoints")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert not [e for e in events if e["event"] == "warning"]
    [started] = [e for e in events if e["event"] == "started"]
    assert (started["checkpointer"], started["everySteps"], started["resumedFrom"]) == ("doors-memory", 10, 0)
    assert "checkpointer doors-memory" in done.stderr
    # the third-party plugin's saves ran: its handles finished, so the run could succeed
    assert events[-1]["event"] == "succeeded"


def test_a_training_runtime_without_the_checkpointer_fails_on_its_config_naming_the_field(installed):
    raw = training_job("t", checkpoint={"policy": "p", "plugin": "not-here", "params": {}})["spec"]
    raw.update(raw.pop("runtime"))

    with pytest.raises(ConfigError) as caught:
        parse_config(raw)

    assert caught.value.field == "checkpoint.plugin"
    assert str(caught.value).startswith("checkpoint.plugin: no checkpointer plugin named 'not-here'")
    assert "install the package" in str(caught.value)


def test_a_training_job_without_a_checkpoint_policy_gets_no_checkpoint_config(db, add_node):
    add_node("gpu-a", gpus=1)
    apply([training_job("plain", checkpoint={"everySteps": 5})], actor="test")
    owners.reconcile("TrainingJob", "plain")

    assert "checkpoint" not in workload_config("plain")


# --- powercap: a controller's limit -> heartbeat -> simulated agent -> Node status ---------


def gpu_powers(node_name: str) -> list[types.GpuPower]:
    """The test controller's view of a Node's GPUs, from its registered devices."""
    devices = store.get("Node", node_name).status["devices"]
    return [
        types.GpuPower(
            node=node_name,
            index=d["index"],
            gpu_type=d["type"],
            draw_watts=0.0,
            limit_watts=float(d["powerLimitW"]),
            min_watts=0.0,
            max_watts=float(d["powerLimitW"]),
        )
        for d in devices
    ]


def decide_and_set(node_name: str, budget_watts: float) -> dict[tuple[str, int], float | None]:
    """One pass of a test controller: the powercap plugin decides, the store helper records it."""
    cap = manager.get("powercap", "doors-even")
    decision = cap.decide(
        budget=types.PowerBudget(cluster="lab", watts=budget_watts),
        gpus=gpu_powers(node_name),
        params=manager.validate_params(cap, {}),
    )
    mine = {index: watts for (node, index), watts in decision.limits.items() if node == node_name}
    power.set_desired_limits(node_name, mine, source="powercap/doors-even")
    return decision.limits


def node_power(name: str) -> dict[str, Any]:
    return store.get("Node", name).status.get("power", {})


@pytest.fixture
def simulated_agent(live_server, tmp_path) -> Iterator[agent_module.Agent]:
    """A real agent with two simulated H100s and the simulated power backend, heartbeating
    over HTTP to a live control plane from its own thread."""
    token, _ = create_token("test-bootstrap", "agent")
    agent = agent_module.build(
        live_server.url,
        token,
        "gpu-p",
        None,
        {},
        simulate="2xH100",
        interval=0.1,
        state_dir=str(tmp_path / "agent"),
        power_backend="simulate",
    )
    thread = threading.Thread(target=agent.heartbeat_loop, daemon=True)
    thread.start()
    wait_for(lambda: Resource.objects.filter(kind="Node", name="gpu-p").exists(), what="registered")
    yield agent
    agent.stop_event.set()
    thread.join(timeout=10)


def test_a_power_limit_set_by_a_controller_reaches_a_simulated_agents_backend(simulated_agent, installed):
    limits = decide_and_set("gpu-p", budget_watts=800)
    assert limits == {("gpu-p", 0): 400.0, ("gpu-p", 1): 400.0}

    wait_for(lambda: simulated_agent.power.limits() == {0: 400.0, 1: 400.0}, what="the limits applied")
    applied = wait_for(lambda: node_power("gpu-p").get("applied"), what="the Node's applied limits")
    assert applied == {"0": 400.0, "1": 400.0}
    assert node_power("gpu-p")["backend"] == "simulate" and node_power("gpu-p")["error"] is None
    assert node_power("gpu-p")["desired"] == {"0": 400.0, "1": 400.0}

    # Outside the board's range (an H100 takes 210-700 W): clamped by the backend.
    power.set_desired_limits("gpu-p", {0: 100.0, 1: 5000.0}, source="test")
    wait_for(lambda: simulated_agent.power.limits() == {0: 210.0, 1: 700.0}, what="the clamped limits")
    wait_for(lambda: node_power("gpu-p")["applied"] == {"0": 210.0, "1": 700.0}, what="clamped, reported")

    power.set_desired_limits("gpu-p", {0: 300.0}, source="test")
    wait_for(lambda: node_power("gpu-p")["applied"] == {"0": 300.0, "1": 700.0}, what="one GPU changed")

    # A budget the boards fit: the plugin lifts the caps (None), the agent goes back to the default.
    assert set(decide_and_set("gpu-p", budget_watts=2000).values()) == {None}
    wait_for(lambda: simulated_agent.power.limits() == {0: 700.0, 1: 700.0}, what="the caps lifted")
    wait_for(lambda: node_power("gpu-p")["applied"] == {"0": 700.0, "1": 700.0}, what="lifted, reported")
    assert node_power("gpu-p")["desired"] == {"0": None, "1": None}


def test_an_agent_with_the_power_backend_off_keeps_heartbeating_and_says_it_only_observes(
    live_server, tmp_path, caplog
):
    token, _ = create_token("test-bootstrap", "agent")
    agent = agent_module.build(
        live_server.url, token, "gpu-o", None, {}, simulate="1xH100", interval=1.0, state_dir=str(tmp_path)
    )
    agent.heartbeat()
    power.set_desired_limits("gpu-o", {0: 300.0}, source="test")

    with caplog.at_level(logging.WARNING, logger="flotilla.agent.power"):
        answers = [agent.heartbeat() for _ in range(3)]
        power.set_desired_limits("gpu-o", {0: 350.0}, source="test")
        answers += [agent.heartbeat() for _ in range(2)]

    assert answers[0]["powerLimits"] == {"0": 300.0}
    assert agent.power.limits() == {0: 700.0}
    stored = node_power("gpu-o")
    assert stored["backend"] == "off" and stored["applied"] == {"0": 700.0}
    assert "observe only" in stored["error"]
    assert len([r for r in caplog.records if "power backend is off" in r.getMessage()]) == 1


# --- the store helper and the heartbeat fields, unit by unit ---------------------------


def test_the_agent_reports_a_limit_it_cannot_apply_and_skips_malformed_entries_without_raising():
    follower = agent_power.LimitFollower(agent_power.make_backend("simulate", parse_simulate("1xH100")))
    answer = {"0": 300, "7": 300, "x": 1, "1": "high"}

    follower.follow(answer)

    assert follower.backend.limits() == {0: 300.0}
    report = follower.report
    assert report["appliedPowerLimits"] == {"0": 300.0} and report["powerBackend"] == "simulate"
    assert "GPU 7: device 7 has no power limit" in report["powerError"]
    assert "powerLimits.x" in report["powerError"] and "powerLimits.1" in report["powerError"]
    follower.sent(report)
    follower.follow(answer)
    assert follower.report is None, "an unchanged answer is neither applied nor reported again"


@pytest.fixture
def node_api(token_for) -> Api:
    bootstrap = Api(token_for("agent"))
    response = bootstrap.post("/agent/register", {"name": "gpu-a", "devices": simulated_devices(2)})
    assert response.status_code == 200, response.content
    return Api(response.json()["token"])


def beat(api: Api, **fields: Any):
    return api.post("/agent/heartbeat", {"name": "gpu-a", **fields})


def report(applied: Any, backend: Any = "simulate", **more: Any) -> dict[str, Any]:
    return {"appliedPowerLimits": applied, "powerBackend": backend, **more}


def test_a_heartbeat_answer_carries_power_limits_only_once_a_controller_set_some(node_api):
    assert "powerLimits" not in beat(node_api).json()

    power.set_desired_limits("gpu-a", {1: 350, 0: None}, source="test")

    assert beat(node_api).json()["powerLimits"] == {"0": None, "1": 350.0}


def test_a_power_report_is_stored_once_and_a_repeat_writes_nothing(node_api):
    first = beat(node_api, **report({"0": 350.0, "1": 700}))
    assert first.status_code == 200, first.content
    stored = node_power("gpu-a")
    assert stored["applied"] == {"0": 350.0, "1": 700.0} and stored["backend"] == "simulate"
    assert stored["appliedAt"]
    version = store.get("Node", "gpu-a").resource_version

    assert beat(node_api, **report({"0": 350.0, "1": 700})).status_code == 200

    assert store.get("Node", "gpu-a").resource_version == version


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (report(["350"]), "appliedPowerLimits"),
        (report({str(i): 300 for i in range(257)}), "appliedPowerLimits"),
        (report({"x": 300}), "appliedPowerLimits.x.[key]"),
        (report({"01": 300}), "appliedPowerLimits.01.[key]"),
        (report({"1024": 300}), "appliedPowerLimits.1024.[key]"),
        (report({"0": -5}), "appliedPowerLimits.0"),
        (report({"0": 0}), "appliedPowerLimits.0"),
        (report({"0": 20_000}), "appliedPowerLimits.0"),
        (report({"0": "300"}), "appliedPowerLimits.0"),
        (report({"0": True}), "appliedPowerLimits.0"),
        (report({"0": None}), "appliedPowerLimits.0"),
        (report({"0": 300}, "rapl"), "powerBackend"),
        (report({"0": 300}, powerError="x" * 1001), "powerError"),
        ({"powerBackend": "simulate"}, "appliedPowerLimits"),
        (report({"0": 300}, None), "powerBackend"),
    ],
)
def test_a_malformed_power_report_is_a_422_naming_the_field(node_api, fields, field):
    error = error_of(beat(node_api, **fields), 422)

    assert field in [d["field"] for d in error["details"]]
    assert "power" not in store.get("Node", "gpu-a").status


def test_set_desired_limits_merges_gpus_and_writes_nothing_when_unchanged(add_node):
    add_node("gpu-a", gpus=2)
    power.set_desired_limits("gpu-a", {0: 300.0}, source="powercap/x")
    power.set_desired_limits("gpu-a", {1: None}, source="powercap/x")
    version = store.get("Node", "gpu-a").resource_version

    power.set_desired_limits("gpu-a", {0: 300}, source="powercap/x")

    node = store.get("Node", "gpu-a")
    assert node.status["power"]["desired"] == {"0": 300.0, "1": None}
    assert node.status["power"]["desiredBy"] == "powercap/x" and node.resource_version == version


@pytest.mark.parametrize(
    "limits",
    [{0: -1.0}, {0: 0.0}, {0: 1e6}, {0: float("nan")}, {-1: 300.0}, {True: 300.0}, {"0": 300.0}, {0: "300"}],
)
def test_set_desired_limits_refuses_what_is_not_an_index_and_watts(add_node, limits):
    add_node("gpu-a", gpus=2)

    with pytest.raises(Problem) as caught:
        power.set_desired_limits("gpu-a", limits, source="test")

    assert caught.value.field == "limits" and caught.value.errors[0]["field"].startswith("limits")
    assert "power" not in store.get("Node", "gpu-a").status


def test_an_operator_applying_the_node_spec_keeps_the_controllers_desired_limits(add_node):
    add_node("gpu-a", gpus=2)
    power.set_desired_limits("gpu-a", {0: 300.0}, source="test")

    node_doc = {"apiVersion": API_VERSION, "kind": "Node", "metadata": {"name": "gpu-a"}}
    apply([{**node_doc, "spec": {"unschedulable": True, "labels": {"rack": "r1"}}}], actor="operator")

    node = store.get("Node", "gpu-a")
    assert node.spec["unschedulable"] is True and node.status["power"]["desired"] == {"0": 300.0}


@pytest.mark.parametrize("source", ["", "x" * 65, None])
def test_set_desired_limits_needs_a_source_that_names_the_controller(add_node, source):
    add_node("gpu-a", gpus=1)

    with pytest.raises(Problem) as caught:
        power.set_desired_limits("gpu-a", {0: 300.0}, source=source)

    assert caught.value.field == "source"


def test_a_node_token_writing_its_nodes_status_cannot_drop_or_change_the_desired_limits(node_api):
    power.set_desired_limits("gpu-a", {0: 300.0}, source="test")
    forged = {"phase": "Ready", "power": {"desired": {"0": 5000.0}, "applied": {"0": 300.0}}}

    assert node_api.put("/nodes/gpu-a/status", {"status": forged}).status_code == 200
    stored = node_power("gpu-a")
    assert stored["desired"] == {"0": 300.0} and stored["desiredBy"] == "test"
    assert stored["applied"] == {"0": 300.0}

    assert node_api.put("/nodes/gpu-a/status", {"status": {"phase": "Ready"}}).status_code == 200
    assert node_power("gpu-a")["desired"] == {"0": 300.0}
    assert beat(node_api).json()["powerLimits"] == {"0": 300.0}
