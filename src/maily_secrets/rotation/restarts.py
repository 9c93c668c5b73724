"""Restart the Deployments that read a secret only at start, after its rotation's promote.

A workload that takes its credentials from environment variables, or from a file it
reads once, keeps the previous credential until its pods are replaced. The rotation
job restarts those that ask for it with an annotation on the Deployment::

    metadata:
      annotations:
        maily.io/restart-on-rotation: "database,redis"   # or "all"

The value is a comma-separated list of rotation types (spaces around the names are
ignored, ``-`` and ``_`` are the same, unknown names match nothing); ``all`` matches
every type. The restart is what ``kubectl rollout restart`` does: a patch of
``spec.template.metadata.annotations["kubectl.kubernetes.io/restartedAt"]`` (plus
``maily.io/restarted-for-rotation: <rotation id>``, so a resumed run does not restart a
workload twice for the same rotation), then a wait until the rollout is complete, the
way ``kubectl rollout status`` decides it. One workload at a time, in a fixed order
(the configured namespaces in their order, then by name): the next is patched only
after the previous one's rollout completed.

The decisions are pure functions (:func:`plan`, :func:`rollout_status`,
:func:`wants`), the API client is a small one on aiohttp (:class:`KubeClient`: list,
get and patch of ``apps/v1`` Deployments; exactly the verbs of the Role
``vault-secret-rotation`` in deploy/k8s/base/rbac.yaml), and :func:`restart_workloads`
runs them with an injected clock for the per-workload timeout.

What is not restarted, and why, is part of the :class:`RestartOutcome`:

* scaled to 0 replicas: skipped (no pod holds the previous credential; new pods read
  the current one);
* paused (``spec.paused``): not patched (``kubectl rollout restart`` refuses it too) and
  *held*: its pods keep the previous credential, so the previous credential must not be
  retired yet;
* a rollout that fails (``ProgressDeadlineExceeded``) or does not complete within
  ``timeout``, or an API error (403 from RBAC, 404, unreachable): the restarts stop
  there, the remaining workloads are not touched, and the outcome holds the retirement.

``RestartOutcome.hold_retirement`` is what the engine acts on: the rotation then stays
at step ``promoted`` (the new credential is in use; the previous one is not scheduled
for retirement), the run reports the type as failed with the reason, and the next run
resumes at the restarts.

The service account token is read from its file for every request (the kubelet
refreshes projected tokens) and is never kept on an object, logged or put in an error.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import aiohttp

from ..clock import SYSTEM_CLOCK, Clock, rfc3339
from .config import RestartsConfig, format_duration

log = logging.getLogger("maily_secrets.rotation")

ANNOTATION = "maily.io/restart-on-rotation"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
RESTARTED_FOR = "maily.io/restarted-for-rotation"
ALL = "all"
#: what kubectl sends for ``rollout restart``
PATCH_CONTENT_TYPE = "application/strategic-merge-patch+json"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
IN_CLUSTER_URL = "https://kubernetes.default.svc"
_LIST_PAGE = 500


# ---------------------------------------------------------------------- decisions
def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def requested_types(value: str | None) -> frozenset[str]:
    """``"database, redis"`` -> {"database", "redis"}; empty parts are ignored."""
    if not value:
        return frozenset()
    return frozenset(n for n in (_norm(p) for p in value.split(",")) if n)


def wants(value: str | None, type_name: str) -> bool:
    """Does the annotation ``value`` ask for a restart when ``type_name`` rotates?"""
    names = requested_types(value)
    return ALL in names or _norm(type_name) in names


@dataclass(frozen=True)
class Deployment:
    """What the decisions need of one Deployment (from its API object)."""

    namespace: str
    name: str
    annotation: str | None = None
    replicas: int = 1
    paused: bool = False
    generation: int = 0
    restarted_for: str | None = None  # the template's maily.io/restarted-for-rotation

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_api(cls, doc: Mapping[str, Any]) -> Deployment:
        meta = doc.get("metadata") or {}
        spec = doc.get("spec") or {}
        tmeta = (spec.get("template") or {}).get("metadata") or {}
        replicas = spec.get("replicas")
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            annotation=(meta.get("annotations") or {}).get(ANNOTATION),
            replicas=1 if replicas is None else int(replicas),  # the API's default is 1
            paused=bool(spec.get("paused")),
            generation=int(meta.get("generation") or 0),
            restarted_for=(tmeta.get("annotations") or {}).get(RESTARTED_FOR),
        )


Action = Literal["restart", "wait", "skip", "hold"]


@dataclass(frozen=True)
class Decision:
    deployment: Deployment
    #: restart: patch, then wait for the rollout; wait: already patched for this
    #: rotation (a resumed run): only wait; skip: nothing to do; hold: not restarted,
    #: and its pods keep the previous credential
    action: Action
    reason: str = ""


def plan(
    deployments: Iterable[Deployment],
    type_name: str,
    rotation_id: str,
    namespaces: list[str] | None = None,
) -> list[Decision]:
    """Which Deployments to restart for ``type_name``, in the order to do it.

    Only Deployments whose annotation names the type (or ``all``) appear. The order is
    the order of ``namespaces`` (others after them, by name), then the Deployment's name.
    """
    order = {ns: i for i, ns in enumerate(namespaces or [])}
    chosen = sorted(
        (d for d in deployments if wants(d.annotation, type_name)),
        key=lambda d: (order.get(d.namespace, len(order)), d.namespace, d.name),
    )
    out: list[Decision] = []
    for d in chosen:
        if d.replicas == 0:
            out.append(Decision(d, "skip", "scaled to 0 replicas: no pod to restart"))
        elif d.paused:
            out.append(
                Decision(
                    d,
                    "hold",
                    "paused: not restarted (resume it: `kubectl rollout resume`); its pods"
                    " keep the previous credential",
                )
            )
        elif d.restarted_for == rotation_id:
            out.append(Decision(d, "wait", "already restarted for this rotation"))
        else:
            out.append(Decision(d, "restart"))
    return out


@dataclass(frozen=True)
class Rollout:
    state: Literal["done", "progressing", "failed"]
    message: str


def rollout_status(doc: Mapping[str, Any], generation: int) -> Rollout:
    """Is the rollout of ``generation`` complete? (``kubectl rollout status``'s rules)."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    st = doc.get("status") or {}
    want = 1 if spec.get("replicas") is None else int(spec["replicas"])
    observed = int(st.get("observedGeneration") or 0)
    if observed < max(generation, int(meta.get("generation") or 0)):
        return Rollout("progressing", "waiting for the controller to see the new template")
    for cond in st.get("conditions") or []:
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            msg = str(cond.get("message") or "progress deadline exceeded")[:300]
            return Rollout("failed", f"rollout failed: {msg}")
    updated = int(st.get("updatedReplicas") or 0)
    total = int(st.get("replicas") or 0)
    available = int(st.get("availableReplicas") or 0)
    unavailable = int(st.get("unavailableReplicas") or 0)
    if updated < want:
        return Rollout("progressing", f"{updated} of {want} new replicas updated")
    if total > updated:
        return Rollout("progressing", f"{total - updated} old replicas pending termination")
    if available < want or unavailable:
        return Rollout("progressing", f"{available} of {want} updated replicas available")
    return Rollout("done", f"{want} of {want} replicas updated and available")


def restart_patch(at: datetime, rotation_id: str) -> dict[str, Any]:
    """The body of the patch: what ``kubectl rollout restart`` sends, plus our mark."""
    return {
        "spec": {
            "template": {
                "metadata": {
                    "annotations": {
                        RESTARTED_AT: rfc3339(at, ms=False),
                        RESTARTED_FOR: rotation_id,
                    }
                }
            }
        }
    }


# ---------------------------------------------------------------------- API client
class KubeApiError(Exception):
    """A Kubernetes API request failed; the message says which and why, never a token."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


class KubeClient:
    """list/get/patch of ``apps/v1`` Deployments on aiohttp; no kubernetes package.

    ``KubeClient.from_config(cfg)``: in-cluster (``api: in-cluster``) the API server is
    ``$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`` (what client-go uses) or else
    https://kubernetes.default.svc, with the service account's token and CA files;
    otherwise ``api`` is the URL and ``token_file`` (and ``ca_file`` for https) name them.
    """

    def __init__(
        self,
        api_url: str,
        token_file: str | Path,
        ca_file: str | Path | None = None,
        *,
        request_timeout: float = 30.0,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.token_file = Path(token_file)
        self.ca_file = Path(ca_file) if ca_file else None
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_config(cls, cfg: RestartsConfig, sa_dir: Path = SA_DIR) -> KubeClient:
        if cfg.api == "in-cluster":
            host = os.environ.get("KUBERNETES_SERVICE_HOST")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if host:
                url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
            else:
                url = IN_CLUSTER_URL
            return cls(
                url,
                cfg.token_file or sa_dir / "token",
                cfg.ca_file or sa_dir / "ca.crt",
            )
        if not cfg.token_file:
            raise KubeApiError(0, f"restarts: api {cfg.api} needs token_file")
        return cls(cfg.api, cfg.token_file, cfg.ca_file)

    def __repr__(self) -> str:
        return f"KubeClient({self.api_url!r})"

    def _token(self) -> str:
        try:
            token = self.token_file.read_text().strip()
        except OSError as exc:
            raise KubeApiError(
                0,
                f"cannot read the Kubernetes token file {self.token_file}:"
                f" {exc.strerror or type(exc).__name__}",
            ) from None
        if not token:
            raise KubeApiError(0, f"the Kubernetes token file {self.token_file} is empty")
        return token

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.api_url.startswith("https://"):
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise KubeApiError(
                0, f"cannot load the Kubernetes CA file {self.ca_file}: {type(exc).__name__}"
            ) from None

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl() or False),
                timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        token = self._token()
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        http = await self._http()
        try:
            async with http.request(
                method,
                self.api_url + path,
                params=params,
                data=data,
                headers=headers,
                allow_redirects=False,  # the token goes to the configured API server only
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeApiError(
                0, _redact(f"{what}: Kubernetes API unreachable ({_exc_text(exc)})", token)
            ) from None
        if status >= 300:
            raise KubeApiError(status, _redact(f"{what}: {_api_error(status, text)}", token))
        try:
            doc = json.loads(text)
        except ValueError:
            raise KubeApiError(status, f"{what}: the API answered {status} without JSON") from None
        if not isinstance(doc, dict):
            raise KubeApiError(status, f"{what}: the API answered {status} with a non-object")
        return doc

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/apis/apps/v1/namespaces/{quote(namespace, safe='')}/deployments"
        return base if name is None else f"{base}/{quote(name, safe='')}"

    async def list_deployments(self, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {"limit": str(_LIST_PAGE)}
        while True:
            doc = await self.request(
                "GET",
                self._path(namespace),
                params=params,
                what=f"list deployments in namespace {namespace}",
            )
            for it in doc.get("items") or []:
                it.setdefault("metadata", {}).setdefault("namespace", namespace)
                items.append(it)
            cont = (doc.get("metadata") or {}).get("continue")
            if not cont:
                return items
            params = {"limit": str(_LIST_PAGE), "continue": str(cont)}

    async def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return await self.request(
            "GET", self._path(namespace, name), what=f"get deployment {namespace}/{name}"
        )

    async def patch_deployment(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        content_type: str = PATCH_CONTENT_TYPE,
    ) -> dict[str, Any]:
        return await self.request(
            "PATCH",
            self._path(namespace, name),
            body=dict(body),
            content_type=content_type,
            what=f"patch deployment {namespace}/{name}",
        )


def _redact(text: str, token: str) -> str:
    return text.replace(token, "[redacted]") if token else text


def _exc_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__


def _api_error(status: int, text: str) -> str:
    """kube-apiserver answers errors with a metav1.Status: its reason and message."""
    reason, message = "", ""
    try:
        doc = json.loads(text)
        if isinstance(doc, dict):
            reason, message = str(doc.get("reason") or ""), str(doc.get("message") or "")
    except ValueError:
        message = re.sub(r"\s+", " ", text)[:200]
    out = f"{status} {reason or 'error'}" + (f": {message[:300]}" if message else "")
    if status == 403:
        out += (
            " (the rotation job's service account needs get, list and patch on"
            " apps/deployments in this namespace: Role vault-secret-rotation,"
            " deploy/k8s/base/rbac.yaml)"
        )
    elif status == 401:
        out += " (the service account token was not accepted)"
    return out


# ---------------------------------------------------------------------- the run
@dataclass
class RestartOutcome:
    """What :func:`restart_workloads` did, for the report (no values)."""

    type_name: str
    restarted: list[str] = field(default_factory=list)  # "namespace/name", in order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (workload, why)
    held: list[tuple[str, str]] = field(default_factory=list)  # not restarted, still old
    #: the workload (or "namespace/<ns>" for a failed list) and why the restarts stopped
    failed: tuple[str, str] | None = None
    not_attempted: list[str] = field(default_factory=list)  # after a failure

    @property
    def ok(self) -> bool:
        return self.failed is None and not self.held

    @property
    def hold_retirement(self) -> bool:
        """Pods may still hold the previous credential: do not retire it yet."""
        return not self.ok

    def notes(self) -> list[str]:
        out = []
        if self.restarted:
            out.append(
                f"restarted after the promote (rollout complete): {', '.join(self.restarted)}"
            )
        for w, why in self.skipped:
            out.append(f"not restarted: {w} ({why})")
        for w, why in self.held:
            out.append(f"not restarted, holds the previous credential: {w} ({why})")
        if self.failed:
            out.append(f"restarts stopped at {self.failed[0]}: {self.failed[1]}")
        if self.not_attempted:
            out.append(f"not attempted after that: {', '.join(self.not_attempted)}")
        return out

    def hold_reason(self) -> str:
        """One line for the type's reason (the notes have the details)."""
        if self.failed:
            problem = f"restarts stopped at {self.failed[0]}: {self.failed[1]}"
        else:
            problem = "not restarted: " + ", ".join(f"{w} ({why})" for w, why in self.held)
        if len(problem) > 260:
            problem = problem[:257] + "..."
        return (
            f"promoted, but {problem}. The previous credential is kept (not scheduled for"
            " retirement); the next run resumes at step 'promoted' and retries the restarts"
        )


Progress = Callable[[str], None]
Guard = Callable[[], Awaitable[None]]


class RolloutFailed(Exception):
    pass


async def wait_for_rollout(
    client: KubeClient,
    dep: Deployment,
    generation: int,
    *,
    within: float,
    poll_interval: float,
    clock: Clock = SYSTEM_CLOCK,
) -> Rollout:
    """Poll the Deployment until its rollout of ``generation`` is complete.

    Raises :class:`RolloutFailed` when it failed or did not complete within ``within``
    seconds of ``clock`` (the injected clock: not ``asyncio.timeout``).
    """
    deadline = clock.monotonic() + within
    while True:
        doc = await client.get_deployment(dep.namespace, dep.name)
        st = rollout_status(doc, generation)
        if st.state == "done":
            return st
        if st.state == "failed":
            raise RolloutFailed(st.message)
        left = deadline - clock.monotonic()
        if left <= 0:
            raise RolloutFailed(
                f"rollout did not complete within {format_duration_s(within)} ({st.message})"
            )
        await clock.sleep(min(poll_interval, left))


def format_duration_s(seconds: float) -> str:
    return format_duration(timedelta(seconds=seconds))


async def restart_workloads(
    cfg: RestartsConfig,
    type_name: str,
    rotation_id: str,
    *,
    clock: Clock = SYSTEM_CLOCK,
    client: KubeClient | None = None,
    progress: Progress | None = None,
    guard: Guard | None = None,
) -> RestartOutcome:
    """Restart the Deployments annotated for ``type_name``, one at a time.

    ``guard`` runs before each patch (the engine's lock check: a run that lost its
    lock stops before it restarts anything more; its exception propagates).
    """
    say = progress or (lambda m: None)
    out = RestartOutcome(type_name)
    if client is None:
        try:
            client = KubeClient.from_config(cfg)
        except KubeApiError as exc:
            out.failed = ("the Kubernetes API", str(exc))
            return out
        own = True
    else:
        own = False
    kube = client
    try:
        found: list[Deployment] = []
        for ns in cfg.namespaces:
            try:
                found += [Deployment.from_api(d) for d in await kube.list_deployments(ns)]
            except KubeApiError as exc:
                out.failed = (f"namespace/{ns}", str(exc))
                log.error(
                    "restarts for %s: %s", type_name, exc, extra={"type": type_name, "step": "list"}
                )
                return out
        decisions = plan(found, type_name, rotation_id, cfg.namespaces)
        timeout = cfg.timeout.total_seconds()
        poll = cfg.poll_interval.total_seconds()
        for i, dec in enumerate(decisions):
            d = dec.deployment
            if dec.action == "skip":
                out.skipped.append((d.key, dec.reason))
                continue
            if dec.action == "hold":
                out.held.append((d.key, dec.reason))
                log.warning("not restarting %s: %s", d.key, dec.reason, extra={"type": type_name})
                continue
            try:
                generation = d.generation
                if dec.action == "restart":
                    if guard is not None:
                        await guard()
                    say(f"restarting deployment {d.key}")
                    log.info(
                        "restarting deployment",
                        extra={"type": type_name, "rotation_id": rotation_id, "workload": d.key},
                    )
                    now = datetime.fromtimestamp(clock.time(), UTC)
                    doc = await kube.patch_deployment(
                        d.namespace, d.name, restart_patch(now, rotation_id)
                    )
                    generation = int((doc.get("metadata") or {}).get("generation") or 0)
                else:
                    say(f"waiting for the rollout of {d.key} ({dec.reason})")
                await wait_for_rollout(
                    kube, d, generation, within=timeout, poll_interval=poll, clock=clock
                )
            except (KubeApiError, RolloutFailed) as exc:
                out.failed = (d.key, str(exc))
                out.not_attempted = [
                    x.deployment.key for x in decisions[i + 1 :] if x.action in ("restart", "wait")
                ]
                log.error(
                    "restarting %s failed: %s",
                    d.key,
                    exc,
                    extra={"type": type_name, "rotation_id": rotation_id, "workload": d.key},
                )
                say(f"restarting {d.key} failed: {exc}")
                return out
            out.restarted.append(d.key)
            say(f"deployment {d.key} restarted (rollout complete)")
        return out
    finally:
        if own:
            await kube.close()
