"""A double of the Kubernetes API at the wire level, for Nodes and (namespaced) Pods only.

No kube-apiserver (nor etcd, nor kind) can run in this environment, so the tests of
``controlplane.kube`` point the official ``kubernetes`` client at this instead: an
``http.server`` on a local port, in a thread, that speaks the same JSON over HTTP/1.1
as the real API server does for ``/api/v1/nodes``:

- ``GET /api/v1/nodes``: a ``NodeList`` whose ``metadata.resourceVersion`` is the
  store's current version (items carry their own, as in a real list).
- ``GET /api/v1/nodes?watch=true&resourceVersion=N``: a chunked stream of
  newline-delimited watch events (``{"type": "ADDED|MODIFIED|DELETED|BOOKMARK",
  "object": ...}``) for every change after N, then live changes until
  ``timeoutSeconds``; with ``allowWatchBookmarks=true`` a BOOKMARK with the current
  version ends the stream. A watch with no version (or ``0``) starts with a synthetic
  ADDED per Node, as the real server does.
- A watch from a version older than the retained history (see :meth:`compact`) is
  answered the way the watch cache answers it: HTTP 200 and one ``ERROR`` event whose
  object is a ``Status`` with ``reason: Expired`` and ``code: 410``; with
  ``expired_as="http"`` it is a plain ``410 Gone`` response with that Status as the
  body, as the storage layer answers. The client raises ``ApiException(410)`` for both.
- ``GET``/``PUT``/``PATCH``/``DELETE /api/v1/nodes/{name}`` and ``POST /api/v1/nodes``;
  a ``PUT`` or ``PATCH`` whose ``metadata.resourceVersion`` is stale is answered
  ``409 Conflict`` with a Status, as optimistic concurrency requires. ``PATCH`` takes
  merge and strategic-merge patches, both applied as an RFC 7386 merge patch (lists
  are replaced, which is what strategic merge does for the fields Nodes use here).
- With ``token`` set, a request without ``Authorization: Bearer <token>`` gets 401.
- Pods under ``/api/v1/namespaces/{ns}/pods``: list and watch as above (same version
  counter, same history, same 410), filtered by ``labelSelector`` (``key``, ``key=value``
  and ``key!=value``, comma-separated, as the server's equality-based selectors are);
  ``POST`` creates (201; ``409 AlreadyExists`` on a taken name) with phase Pending;
  ``GET`` and ``DELETE`` one Pod (404 when absent). A ``DELETE`` removes the Pod at once,
  or, with ``graceful_pods=True``, sets ``metadata.deletionTimestamp`` the way the real
  server does for a Pod whose kubelet must stop it; :meth:`finish_pod_deletion` is the
  kubelet confirming. No scheduler or kubelet runs: :meth:`set_pod_state` writes the
  phase, conditions and container statuses a kubelet would report.

Everything else (other kinds, field selectors, set-based label selectors, JSON patch,
server-side apply, protobuf, pod updates) is deliberately absent and answers with a
Status error. It is a test double, not a kube-apiserver: nothing is validated beyond
what the code under test needs.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

NODES = "/api/v1/nodes"
NAMESPACES = "/api/v1/namespaces/"


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    """A ``metav1.Status`` failure, the body of every error the real API server sends."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def gpu_node(
    name: str,
    gpus: int = 8,
    product: str | None = "NVIDIA-H100-80GB-HBM3",
    memory_mib: int | None = 81559,
    ready: bool = True,
    unschedulable: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Node as the NVIDIA GPU operator's feature discovery labels it."""
    node_labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if gpus:
        node_labels["nvidia.com/gpu.present"] = "true"
        node_labels["nvidia.com/gpu.count"] = str(gpus)
    if product:
        node_labels["nvidia.com/gpu.product"] = product
    if memory_mib is not None:
        node_labels["nvidia.com/gpu.memory"] = str(memory_mib)
    node_labels.update(labels or {})
    capacity = {"cpu": "96", "memory": "1056964608Ki", "pods": "110"}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {"podCIDR": "10.244.1.0/24"}
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "metadata": {"name": name, "labels": node_labels},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": dict(capacity),
            "conditions": [ready_condition(ready)],
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": str(uuid.uuid4()),
                "containerRuntimeVersion": "containerd://1.7.22",
                "kernelVersion": "6.8.0-45-generic",
                "kubeProxyVersion": "v1.31.2",
                "kubeletVersion": "v1.31.2",
                "machineID": uuid.uuid4().hex,
                "operatingSystem": "linux",
                "osImage": "Ubuntu 24.04.1 LTS",
                "systemUUID": str(uuid.uuid4()),
            },
        },
    }


def ready_condition(ready: bool) -> dict[str, Any]:
    stamp = "2026-01-01T00:00:00Z"
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": "KubeletReady" if ready else "KubeletNotReady",
        "message": "kubelet is posting ready status" if ready else "container runtime network not ready",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }


def selector_matches(labels: dict[str, str], selector: str) -> bool:
    """An equality-based label selector: ``a=b,c,d!=e`` (``==`` is ``=``)."""
    for term in filter(None, (part.strip() for part in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term not in labels:
            return False
    return True


def container_status(
    name: str = "workload",
    state: dict[str, Any] | None = None,
    ready: bool = False,
    restarts: int = 0,
    last_state: dict[str, Any] | None = None,
    image: str = "flotilla:test",
) -> dict[str, Any]:
    """One ``containerStatuses`` entry as a kubelet reports it."""
    return {
        "name": name,
        "state": state or {"waiting": {"reason": "ContainerCreating"}},
        "lastState": last_state or {},
        "ready": ready,
        "restartCount": restarts,
        "image": image,
        "imageID": "",
        "started": "running" in (state or {}),
    }


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeApiDouble:
    """The Node store, its change history and the HTTP server in front of them."""

    def __init__(self, token: str | None = None, expired_as: str = "event") -> None:
        self.token = token
        self.expired_as = expired_as
        self.version = 100  # a real cluster's versions are large; 0 means "any" to a watch
        self.nodes: dict[str, dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name)
        self.graceful_pods = False
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.oldest = self.version + 1  # the oldest version the history still holds
        self.requests: list[tuple[str, str]] = []  # (method, path with query), for assertions
        self.headers: list[dict[str, str]] = []  # lower-cased names
        self.changed = threading.Condition()
        self.closing = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="kube-double", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubeApiDouble:
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self.closing = True
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # The store. Each write takes the next version and is appended to the history.

    def _write(self, type_: str, obj: dict[str, Any], kind: str = "Node") -> dict[str, Any]:
        with self.changed:
            self.version += 1
            obj = copy.deepcopy(obj)
            obj["kind"], obj["apiVersion"] = kind, "v1"
            obj["metadata"]["resourceVersion"] = str(self.version)
            name = obj["metadata"]["name"]
            store: dict[Any, dict[str, Any]] = self.nodes if kind == "Node" else self.pods
            key: Any = name if kind == "Node" else (obj["metadata"]["namespace"], name)
            if type_ == "DELETED":
                store.pop(key, None)
            else:
                store[key] = obj
            self.history.append((self.version, type_, copy.deepcopy(obj)))
            self.changed.notify_all()
            return copy.deepcopy(obj)

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return self._write("ADDED", obj)

    def modify(self, name: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        with self.changed:
            obj = copy.deepcopy(self.nodes[name])
            change(obj)
            return self._write("MODIFIED", obj)

    def delete(self, name: str) -> dict[str, Any]:
        with self.changed:
            return self._write("DELETED", self.nodes[name])

    # Pods (namespaced). The kubelet's part is played by the test through set_pod_state.

    def add_pod(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        metadata = obj.setdefault("metadata", {})
        metadata.setdefault("namespace", "default")
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        return self._write("ADDED", obj, "Pod")

    def modify_pod(
        self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        with self.changed:
            obj = copy.deepcopy(self.pods[namespace, name])
            change(obj)
            return self._write("MODIFIED", obj, "Pod")

    def delete_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """The API's DELETE: at once, or (``graceful_pods``) marked until the kubelet confirms."""
        with self.changed:
            pod = self.pods[namespace, name]
            if not self.graceful_pods:
                return self._write("DELETED", pod, "Pod")
            if pod["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(pod)

            def mark(obj: dict[str, Any]) -> None:
                obj["metadata"]["deletionTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                obj["metadata"]["deletionGracePeriodSeconds"] = 30

            return self.modify_pod(namespace, name, mark)

    def finish_pod_deletion(self, namespace: str, name: str) -> dict[str, Any]:
        """The kubelet has stopped the containers of a Pod marked for deletion."""
        with self.changed:
            return self._write("DELETED", self.pods[namespace, name], "Pod")

    def set_pod_state(
        self,
        namespace: str,
        name: str,
        phase: str,
        containers: list[dict[str, Any]] | None = None,
        conditions: list[dict[str, Any]] | None = None,
        pod_ip: str | None = None,
        reason: str | None = None,
        message: str | None = None,
    ) -> dict[str, Any]:
        """Write ``status`` as the kubelet (or the scheduler, for PodScheduled) reports it."""

        def report(obj: dict[str, Any]) -> None:
            status: dict[str, Any] = {"phase": phase, "qosClass": "BestEffort"}
            if containers is not None:
                status["containerStatuses"] = containers
            if conditions is not None:
                status["conditions"] = conditions
            if pod_ip:
                status["podIP"] = pod_ip
                status["podIPs"] = [{"ip": pod_ip}]
                status["hostIP"] = "10.0.0.1"
            if reason:
                status["reason"] = reason
            if message:
                status["message"] = message
            obj["status"] = status

        return self.modify_pod(namespace, name, report)

    def pod_list(self, namespace: str, selector: str = "") -> dict[str, Any]:
        with self.changed:
            items = []
            for (ns, _), pod in sorted(self.pods.items()):
                if ns != namespace or not selector_matches(pod["metadata"].get("labels") or {}, selector):
                    continue
                item = copy.deepcopy(pod)
                del item["kind"], item["apiVersion"]
                items.append(item)
            return {
                "kind": "PodList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }

    def compact(self) -> None:
        """Forget the history, as etcd compaction does: older watches now get 410."""
        with self.changed:
            self.history.clear()
            self.oldest = self.version + 1

    def node_list(self) -> dict[str, Any]:
        with self.changed:
            items = []
            for name in sorted(self.nodes):
                item = copy.deepcopy(self.nodes[name])
                del item["kind"], item["apiVersion"]  # list items carry neither, as on the wire
                items.append(item)
            return {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }

    def events_after(self, version: int) -> list[tuple[int, str, dict[str, Any]]] | None:
        """Changes after ``version``, or None when the history no longer reaches back to it."""
        if version < self.oldest - 1:
            return None
        return [entry for entry in self.history if entry[0] > version]


def _handler(double: KubeApiDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
            pass

        def _send_json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, reason: str, message: str) -> None:
            self._send_json(code, status_object(code, reason, message))

        def _route(self) -> tuple[str | None, dict[str, list[str]]] | None:
            """(node name or None for the collection, query), or None once answered."""
            double.requests.append((self.command, self.path))
            double.headers.append({key.lower(): value for key, value in self.headers.items()})
            if double.token and self.headers.get("Authorization") != f"Bearer {double.token}":
                self._error(401, "Unauthorized", "Unauthorized")
                return None
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            if parts.path.startswith(NAMESPACES):
                self._pods(parts.path[len(NAMESPACES) :].split("/"), query)
                return None
            if parts.path == NODES:
                return None, query
            if parts.path.startswith(NODES + "/") and "/" not in parts.path[len(NODES) + 1 :]:
                return parts.path[len(NODES) + 1 :], query
            self._error(404, "NotFound", f"the server could not find the requested resource ({parts.path})")
            return None

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"null")

        def do_GET(self) -> None:
            route = self._route()
            if route is None:
                return
            name, query = route
            if name is not None:
                with double.changed:
                    node = copy.deepcopy(double.nodes.get(name))
                if node is None:
                    self._error(404, "NotFound", f'nodes "{name}" not found')
                else:
                    self._send_json(200, node)
            elif query.get("watch", [""])[0].lower() in {"true", "1"}:
                self._watch(query)
            else:
                self._send_json(200, double.node_list())

        def _chunk(self, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode() + b"\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def _watch(
            self, query: dict[str, list[str]], kind: str = "Node", namespace: str | None = None
        ) -> None:
            import time

            since = query.get("resourceVersion", [""])[0]
            timeout = float(query.get("timeoutSeconds", ["30"])[0])
            bookmarks = query.get("allowWatchBookmarks", [""])[0].lower() in {"true", "1"}
            selector = query.get("labelSelector", [""])[0]

            def wanted(entries: list[tuple[int, str, dict[str, Any]]] | None) -> Any:
                if entries is None:
                    return None
                return [
                    entry
                    for entry in entries
                    if entry[2]["kind"] == kind
                    and (namespace is None or entry[2]["metadata"].get("namespace") == namespace)
                    and selector_matches(entry[2]["metadata"].get("labels") or {}, selector)
                ]

            with double.changed:
                if since in {"", "0"}:
                    start = double.version
                    store = double.nodes if kind == "Node" else double.pods
                    pending = wanted([(start, "ADDED", copy.deepcopy(n)) for _, n in sorted(store.items())])
                else:
                    start = int(since)
                    pending = wanted(double.events_after(start))
            expired = status_object(
                410, "Expired", f"too old resource version: {since} ({double.oldest - 1})"
            )
            if pending is None and double.expired_as == "http":
                self._send_json(410, expired)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                if pending is None:
                    self._chunk({"type": "ERROR", "object": expired})
                else:
                    last = start
                    deadline = time.monotonic() + timeout
                    while True:
                        for version, type_, obj in pending:
                            self._chunk({"type": type_, "object": obj})
                            last = max(last, version)
                        with double.changed:
                            remaining = deadline - time.monotonic()
                            if remaining > 0 and not double.closing and double.version == last:
                                double.changed.wait(remaining)
                            everything = double.events_after(last)
                            if everything is None:  # compacted meanwhile: nothing more to send
                                pending, last = [], double.version
                            else:
                                pending = wanted(everything)
                                # Others' changes move the version on without an event.
                                last = max([last, *(entry[0] for entry in everything)])
                            if not pending and (time.monotonic() >= deadline or double.closing):
                                break
                    if bookmarks:
                        marker = {
                            "kind": kind,
                            "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(last)},
                        }
                        self._chunk({"type": "BOOKMARK", "object": marker})
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped watching
            self.close_connection = True

        def _pods(self, path: list[str], query: dict[str, list[str]]) -> None:
            """``{ns}/pods`` and ``{ns}/pods/{name}``: list, watch, create, get, delete."""
            if (
                len(path) not in {2, 3}
                or path[1] != "pods"
                or not path[0]
                or (len(path) == 3 and not path[2])
            ):
                self._error(
                    404, "NotFound", f"the server could not find the requested resource ({self.path})"
                )
                return
            namespace, name = path[0], (path[2] if len(path) == 3 else None)
            method = self.command
            if name is None and method == "GET":
                if query.get("watch", [""])[0].lower() in {"true", "1"}:
                    self._watch(query, "Pod", namespace)
                else:
                    self._send_json(200, double.pod_list(namespace, query.get("labelSelector", [""])[0]))
            elif name is None and method == "POST":
                body = self._body()
                new = body["metadata"]["name"]
                body["metadata"]["namespace"] = namespace
                with double.changed:
                    if (namespace, new) in double.pods:
                        self._error(409, "AlreadyExists", f'pods "{new}" already exists')
                        return
                    body.pop("status", None)  # the server owns status
                    created = double.add_pod(body)
                self._send_json(201, created)
            elif name is not None and method in {"GET", "DELETE"}:
                if method == "DELETE":
                    self._body()  # DeleteOptions, if sent: read, so the connection stays usable
                with double.changed:
                    pod = double.pods.get((namespace, name))
                    if pod is not None and method == "DELETE":
                        pod = double.delete_pod(namespace, name)
                    pod = copy.deepcopy(pod)
                if pod is None:
                    self._error(404, "NotFound", f'pods "{name}" not found')
                else:
                    self._send_json(200, pod)
            else:
                self._error(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )

        def do_POST(self) -> None:
            route = self._route()
            if route is None:
                return
            name, _ = route
            body = self._body()
            if name is not None:
                self._error(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
                return
            new = body["metadata"]["name"]
            with double.changed:
                if new in double.nodes:
                    self._error(409, "AlreadyExists", f'nodes "{new}" already exists')
                    return
                created = double.add(body)
            self._send_json(201, created)

        def _update(self, name: str, make: Callable[[dict[str, Any]], dict[str, Any]], sent: Any) -> None:
            with double.changed:
                current = double.nodes.get(name)
                if current is None:
                    self._error(404, "NotFound", f'nodes "{name}" not found')
                    return
                wanted = ((sent or {}).get("metadata") or {}).get("resourceVersion")
                if wanted and wanted != current["metadata"]["resourceVersion"]:
                    self._error(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
                        "please apply your changes to the latest version and try again",
                    )
                    return
                new = make(copy.deepcopy(current))
                new["metadata"]["uid"] = current["metadata"]["uid"]
                new["metadata"]["name"] = name
                written = double._write("MODIFIED", new)
            self._send_json(200, written)

        def do_PUT(self) -> None:
            route = self._route()
            if route is None:
                return
            name, _ = route
            body = self._body()
            if name is None:
                self._error(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
                return
            self._update(name, lambda current: copy.deepcopy(body), body)

        def do_PATCH(self) -> None:
            route = self._route()
            if route is None:
                return
            name, _ = route
            kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            body = self._body()
            if name is None:
                self._error(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
            elif kind not in {"application/merge-patch+json", "application/strategic-merge-patch+json"}:
                self._error(415, "UnsupportedMediaType", f"the double does not implement {kind!r} patches")
            else:
                self._update(name, lambda current: merge_patch(current, body), body)

        def do_DELETE(self) -> None:
            route = self._route()
            if route is None:
                return
            name, _ = route
            with double.changed:
                if name is None or name not in double.nodes:
                    self._error(404, "NotFound", f'nodes "{name}" not found')
                    return
                gone = double.delete(name)
            self._send_json(200, gone)

    return Handler
