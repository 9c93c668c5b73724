"""A stand-in for the Kubernetes API's ``apps/v1`` Deployments, for the restart tests.

This is NOT a Kubernetes API server, and no cluster is involved: there is none in the
test environment. It is a small real HTTP(S) server on 127.0.0.1 that answers the three
requests the rotation job makes (rotation/restarts.py), the way kube-apiserver answers
them, so that the client's requests, the patch it sends and its decisions are tested
over the wire:

    GET   /apis/apps/v1/namespaces/{ns}/deployments          (list; limit/continue)
    GET   /apis/apps/v1/namespaces/{ns}/deployments/{name}
    PATCH /apis/apps/v1/namespaces/{ns}/deployments/{name}   (strategic-merge or merge
                                                              patch; others: 415)

* Authentication: a bearer token of a known service account, else ``401`` with a
  ``metav1.Status``. Authorization: the RBAC of ``deploy/k8s/base/rbac.yaml`` (its Roles
  and RoleBindings are loaded, so the tests exercise the manifest that ships), or rules
  given explicitly; a request outside them gets ``403`` with kube-apiserver's message
  (``deployments.apps "x" is forbidden: User "..." cannot patch resource ...``).
* A patch is applied as a JSON merge patch (for the maps a restart touches, a strategic
  merge patch is the same); a change of ``spec`` bumps ``metadata.generation``.
* The Deployment controller is simulated, deterministically and without real time:
  after a template change, every GET of that Deployment advances its rollout by one
  step (first the controller observes the new generation, then replicas are replaced)
  and the rollout is complete after ``rollout_reads`` reads. ``stuck=True`` never
  completes (one new pod never becomes available); ``deadline_after=n`` additionally
  reports ``ProgressDeadlineExceeded`` after n reads, as the controller does once
  ``progressDeadlineSeconds`` passed.

Every request is recorded (``requests``: method, path, content type, body, status; the
token is not kept, only whether it was accepted), and ``events`` lists ``("patch", key)``
and ``("complete", key)`` in the order they happened, so a test can tell that the second
patch came only after the first rollout completed. ``on_patch`` (called in the server's
thread before a patch is applied) lets a test look at the world at that instant.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .k8s_standin import _status
from .kit.certs import self_signed, server_tls_context
from .kit.threaded_app import ThreadedApp

ROOT = Path(__file__).resolve().parents[1]
RBAC_YAML = ROOT / "deploy" / "k8s" / "base" / "rbac.yaml"
ROTATOR = "system:serviceaccount:vault:vault-secret-rotation"
PATCH_TYPES = ("application/strategic-merge-patch+json", "application/merge-patch+json")
Rule = tuple[str, str, str, str]  # (namespace, apiGroup, resource, verb)


def rbac_rules(path: Path = RBAC_YAML) -> dict[str, set[Rule]]:
    """Username -> what the Roles bound to it allow, from a manifest file."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]): d["rules"]
        for d in docs
        if d["kind"] == "Role"
    }
    out: dict[str, set[Rule]] = {}
    for d in docs:
        if d["kind"] != "RoleBinding" or d["roleRef"]["kind"] != "Role":
            continue
        ns = d["metadata"]["namespace"]
        for rule in roles.get((ns, d["roleRef"]["name"]), []):
            for s in d["subjects"]:
                if s["kind"] != "ServiceAccount":
                    continue
                user = f"system:serviceaccount:{s['namespace']}:{s['name']}"
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        for v in rule["verbs"]:
                            out.setdefault(user, set()).add((ns, g, r, v))
    return out


@dataclass
class StandinDeployment:
    namespace: str
    name: str
    replicas: int = 2
    annotations: dict[str, str] = field(default_factory=dict)
    paused: bool = False
    rollout_reads: int = 2  # GETs until a rollout is complete (0: at once)
    stuck: bool = False  # a rollout never completes
    deadline_after: int | None = None  # reads after which ProgressDeadlineExceeded
    # the object itself
    generation: int = 1
    observed: int = 1
    template_annotations: dict[str, str] = field(default_factory=dict)
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    resource_version: int = 1
    _reads: int = 0  # reads since the last template change
    _rolling: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def spec(self) -> dict[str, Any]:
        labels = {"app.kubernetes.io/name": self.name}
        spec: dict[str, Any] = {
            "replicas": self.replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(self.template_annotations)},
                "spec": {"containers": [{"name": "app", "image": f"example/{self.name}:1"}]},
            },
        }
        if self.paused:
            spec["paused"] = True
        return spec

    def status(self) -> dict[str, Any]:
        r = self.replicas
        if not self._rolling:
            return {
                "observedGeneration": self.observed,
                "replicas": r,
                "updatedReplicas": r,
                "readyReplicas": r,
                "availableReplicas": r,
            }
        st: dict[str, Any] = {
            "observedGeneration": self.observed,
            "replicas": r + 1,  # maxSurge 1: one new pod beside the old ones
            "updatedReplicas": 1,
            "readyReplicas": r,
            "availableReplicas": r,
            "unavailableReplicas": 1,
        }
        if self.deadline_after is not None and self._reads >= self.deadline_after:
            st["conditions"] = [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{self.name}-7d9c" has timed out progressing.',
                }
            ]
        return st

    def doc(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
            "generation": self.generation,
            "resourceVersion": str(self.resource_version),
        }
        if self.annotations:
            meta["annotations"] = dict(self.annotations)
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": self.spec(),
            "status": self.status(),
        }


@dataclass
class StandinRequest:
    method: str
    path: str
    status: int
    content_type: str | None = None
    body: Any = None
    authenticated: bool = False


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


class AppsStandin(ThreadedApp):
    """Deployments API stand-in. ``tokens``: token -> username. Use as a context manager."""

    thread_name = "k8s-apps-standin"

    def __init__(
        self,
        tokens: dict[str, str],
        *,
        rules: dict[str, set[Rule]] | None = None,
        tls: bool = False,
    ) -> None:
        super().__init__(tls=tls, tmp_prefix="k8s-apps-standin-")
        self._tokens = dict(tokens)
        self.rules = rbac_rules() if rules is None else rules
        self.deployments: dict[tuple[str, str], StandinDeployment] = {}
        self.requests: list[StandinRequest] = []
        self.events: list[tuple[str, str]] = []
        self.on_patch: Callable[[str], None] | None = None
        self._lock = threading.Lock()
        self.ca_file: Path | None = None

    def __repr__(self) -> str:  # the tokens are never shown
        return f"AppsStandin({self.url!r}, deployments={len(self.deployments)})"

    def add(self, dep: StandinDeployment) -> StandinDeployment:
        with self._lock:
            self.deployments[(dep.namespace, dep.name)] = dep
        return dep

    def patches(self) -> list[StandinRequest]:
        with self._lock:
            return [r for r in self.requests if r.method == "PATCH"]

    def reads_of(self, key: str) -> int:
        ns, name = key.split("/")
        path = f"/apis/apps/v1/namespaces/{ns}/deployments/{name}"
        with self._lock:
            return sum(1 for r in self.requests if r.method == "GET" and r.path == path)

    # ------------------------------------------------------------------ HTTP
    def _user(self, request: web.Request) -> str | None:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return None
        return self._tokens.get(auth[len("Bearer ") :].strip())

    def _record(self, request: web.Request, status: int, body: Any, authed: bool) -> None:
        with self._lock:
            self.requests.append(
                StandinRequest(
                    request.method,
                    request.path,
                    status,
                    request.headers.get("Content-Type"),
                    body,
                    authed,
                )
            )

    def _forbidden(self, user: str, verb: str, ns: str, name: str | None) -> web.Response:
        what = f'deployments.apps "{name}"' if name else "deployments.apps"
        return _status(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{user}" cannot {verb} resource "deployments"'
            f' in API group "apps" in the namespace "{ns}"',
        )

    async def _handle(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        name = request.match_info.get("name")
        body: Any = None
        if request.method == "PATCH":
            raw = await request.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode(errors="replace")
        user = self._user(request)
        resp = self._answer(request, user, ns, name, body)
        self._record(request, resp.status, body, user is not None)
        return resp

    def _answer(
        self, request: web.Request, user: str | None, ns: str, name: str | None, body: Any
    ) -> web.Response:
        if user is None:
            return _status(401, "Unauthorized", "Unauthorized")
        verb = {"GET": "get" if name else "list", "PATCH": "patch"}.get(request.method)
        if verb is None or (verb == "patch" and name is None):
            return _status(405, "MethodNotAllowed", "the server does not allow this method")
        if (ns, "apps", "deployments", verb) not in self.rules.get(user, set()):
            return self._forbidden(user, verb, ns, name)
        if verb == "list":
            return self._list(request, ns)
        with self._lock:
            dep = self.deployments.get((ns, str(name)))
        if dep is None:
            return _status(404, "NotFound", f'deployments.apps "{name}" not found')
        if verb == "get":
            return web.json_response(self._read(dep))
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype not in PATCH_TYPES:
            return _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {ctype}",
            )
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the patch is not a JSON object")
        if self.on_patch is not None:
            self.on_patch(dep.key)
        return web.json_response(self._patch(dep, body))

    def _list(self, request: web.Request, ns: str) -> web.Response:
        with self._lock:
            items = [d.doc() for (n, _), d in sorted(self.deployments.items()) if n == ns]
        for it in items:  # a list's items carry no kind/apiVersion
            it.pop("kind", None)
            it.pop("apiVersion", None)
        start = int(request.query.get("continue") or 0)
        limit = int(request.query.get("limit") or 0) or len(items) or 1
        page = items[start : start + limit]
        meta: dict[str, Any] = {"resourceVersion": "1"}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        return web.json_response(
            {"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": meta, "items": page}
        )

    def _read(self, dep: StandinDeployment) -> dict[str, Any]:
        """A GET: the controller takes one step of a rollout in progress."""
        with self._lock:
            if dep._rolling and not dep.paused:
                dep._reads += 1
                if dep._reads >= 2:  # the 1st read still shows the old observedGeneration
                    dep.observed = dep.generation
                if not dep.stuck and dep._reads >= dep.rollout_reads:
                    self._complete(dep)
            return dep.doc()

    def _complete(self, dep: StandinDeployment) -> None:
        dep._rolling = False
        dep.observed = dep.generation
        self.events.append(("complete", dep.key))

    def _patch(self, dep: StandinDeployment, patch: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            before = dep.doc()
            after = merge_patch({"metadata": before["metadata"], "spec": before["spec"]}, patch)
            dep.annotations = dict(after["metadata"].get("annotations") or {})
            spec = after.get("spec") or {}
            dep.replicas = int(spec.get("replicas", dep.replicas))
            dep.paused = bool(spec.get("paused"))
            tmpl = ((spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
            dep.template_annotations = dict(tmpl)
            dep.resource_version += 1
            self.events.append(("patch", dep.key))
            if spec != before["spec"]:
                dep.generation += 1
                dep._reads = 0
                dep._rolling = True
                if dep.rollout_reads == 0 and not dep.stuck and not dep.paused:
                    self._complete(dep)
            return dep.doc()

    # ------------------------------------------------------------------ lifecycle
    def _ssl_context(self) -> ssl.SSLContext:
        cert, key = self_signed(
            Path(self._tmp.name),
            "kube-apiserver",
            dns_names=["localhost", "kubernetes.default.svc"],
            valid_for=dt.timedelta(days=1),
            stem="apiserver",
        )
        self.ca_file = cert
        return server_tls_context(cert, key)

    def routes(self, app: web.Application) -> None:
        base = "/apis/apps/v1/namespaces/{ns}/deployments"
        app.router.add_route("*", base, self._handle)
        app.router.add_route("*", base + "/{name}", self._handle)
