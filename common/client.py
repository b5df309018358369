"""A small HTTP client for the Flotilla API, shared by the CLI, agents and benchmarks.

Pure httpx, no Django. The server URL and token come from flags, then
``FLOTILLA_SERVER`` / ``FLOTILLA_TOKEN``, then ``$FLOTILLA_HOME/config.yml``
(keys ``server`` and ``token``), which ``flotilla up`` writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import yaml

from common.envhelpers import flotilla_home

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientError(Exception):
    """The server said no, or could not be reached; the message says what to do."""

    def __init__(self, message: str, status: int = 0, body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


def config_path() -> Path:
    return flotilla_home() / "config.yml"


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    loaded = yaml.safe_load(path.read_text()) or {}
    return loaded if isinstance(loaded, dict) else {}


def write_config(server: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(yaml.safe_dump({"server": server, "token": token}))
    return path


def format_error(status: int, body: dict[str, Any]) -> str:
    error = body.get("error", {}) if isinstance(body, dict) else {}
    lines = [f"error: {error.get('message') or f'HTTP {status}'}"]
    for detail in error.get("details", [])[:50]:
        where = []
        if "document" in detail:
            where.append(f"document {detail['document']}")
        if detail.get("field"):
            where.append(detail["field"])
        text = ": ".join(filter(None, [", ".join(where), detail.get("message", "")]))
        if detail.get("fix"):
            text += f" (fix: {detail['fix']})"
        lines.append(f"  - {text}")
    return "\n".join(lines)


class Client:
    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 30.0):
        config = load_config()
        self.server = (
            server or os.environ.get("FLOTILLA_SERVER") or config.get("server") or DEFAULT_SERVER
        ).rstrip("/")
        self.token = token or os.environ.get("FLOTILLA_TOKEN") or config.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ClientError(f"{self.server} did not answer in time") from None
        except httpx.TransportError as exc:
            raise ClientError(
                f"cannot reach {self.server} ({exc}); is it running? start one with `flotilla up`"
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {"error": {"message": f"HTTP {response.status_code}: {response.text[:200]}"}}
        if response.status_code >= 400:
            if response.status_code == 401 and not self.token:
                body.setdefault("error", {})["message"] = (
                    "no token: pass --token, set FLOTILLA_TOKEN, or run `flotilla up` once"
                )
            raise ClientError(format_error(response.status_code, body), response.status_code, body)
        body["_status"] = response.status_code
        return body

    def apply(self, text: str, dry_run: bool = False) -> dict[str, Any]:
        params = {"dryRun": "true"} if dry_run else {}
        return self.request(
            "POST",
            "/api/v1/apply",
            content=text.encode(),
            params=params,
            headers={"Content-Type": "application/yaml"},
        )

    def list(self, plural: str, **params: Any) -> dict[str, Any]:
        return self.request(
            "GET", f"/api/v1/{plural}", params={k: v for k, v in params.items() if v is not None}
        )

    def get(self, plural: str, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/{plural}/{name}")

    def delete(self, plural: str, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/v1/{plural}/{name}")

    def watch(self, plural: str, since: int | str, timeout: int = 30, **params: Any) -> dict[str, Any]:
        query = {
            "watch": "true",
            "resourceVersion": str(since),
            "timeoutSeconds": str(timeout),
            **params,
        }
        return self.request("GET", f"/api/v1/{plural}", params=query, timeout=timeout + 15)

    def events(self, plural: str | None = None, name: str | None = None, limit: int = 50) -> dict[str, Any]:
        if plural and name:
            return self.request("GET", f"/api/v1/{plural}/{name}/events", params={"limit": limit})
        return self.request("GET", "/api/v1/events", params={"limit": limit})
