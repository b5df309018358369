"""The image's Dockerfile and entrypoint, checked without Docker (no engine runs here).

The Dockerfile is parsed as text into its stages; the entrypoint's role dispatch runs
in its dry-run mode (``FLOTILLA_ENTRYPOINT_DRY_RUN=1``), which prints the command a
role would execute instead of executing it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
BASH = shutil.which("bash") or "/bin/bash"
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake)\b")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) pairs, with continuation lines joined and comments dropped."""
    result, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += " " + stripped[:-1] if stripped.endswith("\\") else " " + stripped
        if not stripped.endswith("\\"):
            keyword, _, args = current.strip().partition(" ")
            result.append((keyword.upper(), args.strip()))
            current = ""
    return result


def stages() -> list[Stage]:
    found: list[Stage] = []
    for keyword, args in instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            found.append(Stage(parts[0], parts[2] if len(parts) > 2 else None))
        elif found:
            found[-1].instructions.append((keyword, args))
    return found


def dry_run(*argv: str, **env: str) -> str:
    environ = {"PATH": os.environ["PATH"], "FLOTILLA_ENTRYPOINT_DRY_RUN": "1", **env}
    result = subprocess.run(
        [BASH, str(ENTRYPOINT), *argv], env=environ, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_image_is_built_in_at_least_two_stages():
    assert len(stages()) >= 2


def test_the_final_stage_is_python_slim_and_runs_as_a_numeric_non_root_user():
    final = stages()[-1]
    assert final.base == "python:3.11-slim"
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0


def test_only_the_builder_installs_compilers():
    *builders, final = stages()
    for args in final.all("RUN"):
        if "apt-get install" in args:
            assert not COMPILERS.search(args), f"final stage installs a build tool: {args}"
    assert any(COMPILERS.search(args) for stage in builders for args in stage.all("RUN"))


def test_the_final_stage_takes_the_installed_package_from_the_builder():
    builder, final = stages()[0], stages()[-1]
    assert any("pip install" in args and "." in args for args in builder.all("RUN"))
    assert any(f"--from={builder.name}" in args for args in final.all("COPY"))


def test_static_files_are_collected_at_build_time():
    assert any("collectstatic --noinput" in args for args in stages()[-1].all("RUN"))


def test_a_build_argument_selects_the_cuda_variant():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    builder_runs = " ".join(stages()[0].all("RUN"))
    assert "cpu)" in builder_runs and "cuda)" in builder_runs


def test_the_entrypoint_is_the_role_script():
    final = stages()[-1]
    assert any("docker/entrypoint.sh" in args for args in final.all("COPY"))
    assert "flotilla-entrypoint" in final.all("ENTRYPOINT")[-1]
    assert final.all("CMD")[-1] == '["web"]'


def test_every_copied_path_exists():
    for stage in stages():
        for args in stage.all("COPY"):
            if "--from=" in args:
                continue
            sources = [p for p in args.split() if not p.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: no such path"


def test_the_dockerignore_keeps_what_the_build_copies_and_drops_the_rest():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "test-artifacts", "**/__pycache__"} <= ignored
    for needed in ("README.md", "pyproject.toml", "controlplane", "agents", "plugins", "dashboard", "docker"):
        assert needed not in ignored


def test_the_entrypoint_script_is_executable_and_parses():
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR
    subprocess.run([BASH, "-n", str(ENTRYPOINT)], check=True)


@pytest.mark.parametrize("role", ["web", "worker", "beat", "agent", "migrate"])
def test_the_entrypoint_knows_every_role(role):
    assert re.search(rf"^\s+{role}\)", ENTRYPOINT.read_text(), re.M)


def test_web_runs_gunicorn_on_all_interfaces_with_workers_and_threads_from_the_environment():
    command = shlex.split(dry_run("web", FLOTILLA_WEB_WORKERS="3", FLOTILLA_WEB_THREADS="600"))

    assert command[:4] == ["python", "-m", "gunicorn", "controlplane.wsgi:application"]
    flags = dict(zip(command[4::2], command[5::2], strict=False))
    assert flags["--bind"] == "0.0.0.0:8000"
    assert flags["--worker-class"] == "gthread"
    assert flags["--workers"] == "3"
    assert flags["--threads"] == "600"
    assert flags["--worker-connections"] == "1300"


def test_web_is_the_default_role():
    assert dry_run() == dry_run("web")


def test_worker_runs_celery_with_the_same_flags_as_flotilla_up():
    command = dry_run("worker", FLOTILLA_WORKER_CONCURRENCY="4")

    assert command.startswith("python -m celery -A controlplane.celeryapp worker ")
    assert "--concurrency 4" in command
    assert "--without-gossip --without-mingle --without-heartbeat" in command


def test_beat_keeps_its_schedule_in_flotilla_home():
    command = dry_run("beat", FLOTILLA_HOME="/data")

    assert command.startswith("python -m celery -A controlplane.celeryapp beat ")
    assert "--schedule /data/celerybeat-schedule" in command


def test_migrate_applies_migrations_without_prompting():
    assert dry_run("migrate") == "python -m django migrate --noinput"


def test_agent_passes_its_arguments_and_keeps_the_token_off_the_command_line(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("flt_bootstrap_secret\n")

    command = dry_run(
        "agent", "--cluster", "gpu", FLOTILLA_TOKEN_FILE=str(token_file), FLOTILLA_NODE_NAME="gpu-node-1"
    )

    assert command == "flotilla agent --name gpu-node-1 --power-backend off --cluster gpu"
    assert "flt_bootstrap_secret" not in command


def test_the_agent_power_backend_is_off_unless_chosen():
    assert "--power-backend nvml" in dry_run("agent", FLOTILLA_POWER_BACKEND="nvml")


def test_any_other_command_runs_as_given():
    assert dry_run("flotilla", "get", "nodes") == "flotilla get nodes"
