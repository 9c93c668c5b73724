"""A stand-in for the Kubernetes API server's token authentication, for auth tests.

There is no cluster in the test environment, and OpenBao's ``kubernetes`` auth
plugin needs one thing from a cluster: the TokenReview API.  This module runs a
real HTTP(S) server on 127.0.0.1 that implements

    POST /apis/authentication.k8s.io/v1/tokenreviews

the way kube-apiserver does, and issues service-account JWTs the way the
cluster's token controller / kubelet do:

* the server owns an RSA key pair (the cluster's ``--service-account-key-file``)
  and signs service-account tokens with it (RS256, ``kid`` = key id);
* legacy secret-based tokens (``iss: kubernetes/serviceaccount`` with the
  ``kubernetes.io/serviceaccount/...`` claims, no expiry) and projected tokens
  (``iss: https://kubernetes.default.svc.cluster.local``, ``aud``, ``exp``,
  ``iat``, ``nbf`` and the nested ``kubernetes.io`` claims) are both issued;
* a review verifies the reviewed token's signature with the server's public
  key, its issuer, its expiry and audiences, and that the service account still
  exists with the same uid; it answers ``201 Created`` with a TokenReview whose
  ``status`` carries ``authenticated``, ``user.username``
  (``system:serviceaccount:<ns>:<name>``), ``user.uid``, ``user.groups`` and
  ``audiences`` -- or ``authenticated`` unset and ``status.error`` set;
* the caller must authenticate itself with a bearer token (the
  ``token_reviewer_jwt``): a missing or invalid one gets ``401`` with a
  ``metav1.Status``; a valid token of a service account that may not create
  TokenReviews (no ``system:auth-delegator`` binding) gets ``403``.

Every review request is counted (``reviews``) and recorded (``review_log``).
The server runs in a background thread with its own event loop, so it serves
OpenBao whatever the test's event loop is doing.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import ssl
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .kit.certs import self_signed, server_tls_context
from .kit.threaded_app import ThreadedApp

TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
LEGACY_ISSUER = "kubernetes/serviceaccount"
ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)  # kube-apiserver's --api-audiences default = its issuer


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_id(key: rsa.RSAPrivateKey) -> str:
    """kube-apiserver's key id: urlsafe-b64(sha256(DER public key))."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


@dataclass
class ServiceAccount:
    namespace: str
    name: str
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.name}"

    @property
    def groups(self) -> list[str]:
        return [
            "system:serviceaccounts",
            f"system:serviceaccounts:{self.namespace}",
            "system:authenticated",
        ]


@dataclass
class Review:
    """One TokenReview request as the stand-in saw it."""

    reviewer: str | None  # username of the caller, None when it was refused
    http_status: int
    authenticated: bool
    username: str | None = None
    error: str | None = None
    audiences: list[str] = field(default_factory=list)
    token_sha256: str | None = None  # fingerprint of the reviewed token (see fingerprint())


def fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _status(code: int, reason: str, message: str) -> web.Response:
    """A ``metav1.Status`` failure, as kube-apiserver answers errors."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


class KubernetesStandin(ThreadedApp):
    """TokenReview API + service-account token issuer. Use as a context manager."""

    thread_name = "k8s-standin"

    def __init__(self, *, tls: bool = False, leeway: float = 0.0) -> None:
        super().__init__(tls=tls, tmp_prefix="k8s-standin-")
        self.key = new_rsa_key()
        self.kid = key_id(self.key)
        self.leeway = leeway
        self._accounts: dict[tuple[str, str], ServiceAccount] = {}
        # ClusterRoleBinding system:auth-delegator -> these service accounts
        self._delegators: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self.review_log: list[Review] = []
        self.ca_pem: str | None = None
        # The reviewer: a service account bound to system:auth-delegator, like
        # the "vault-auth" account of the Vault/OpenBao Kubernetes guides.
        self.reviewer_account = self.service_account("kube-system", "openbao-auth")
        self._delegators.add(("kube-system", "openbao-auth"))
        self.token_reviewer_jwt = self.issue_legacy(self.reviewer_account)

    # ------------------------------------------------------------------ accounts
    def service_account(self, namespace: str, name: str) -> ServiceAccount:
        """Get or create the service account ``namespace/name``."""
        with self._lock:
            sa = self._accounts.get((namespace, name))
            if sa is None:
                sa = self._accounts[(namespace, name)] = ServiceAccount(namespace, name)
            return sa

    def delete_service_account(self, namespace: str, name: str) -> None:
        """Its tokens stop authenticating (recreating it gives a new uid)."""
        with self._lock:
            self._accounts.pop((namespace, name), None)

    # ------------------------------------------------------------------ tokens
    def _sign(self, claims: dict[str, Any], key: rsa.RSAPrivateKey | None) -> str:
        k = key or self.key
        return jwt.encode(claims, k, algorithm="RS256", headers={"kid": key_id(k)})

    def issue_legacy(self, sa: ServiceAccount, *, key: rsa.RSAPrivateKey | None = None) -> str:
        """A secret-based token (pre-1.24 style): no expiry, no audience."""
        claims = {
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": sa.namespace,
            "kubernetes.io/serviceaccount/secret.name": f"{sa.name}-token-{uuid.uuid4().hex[:5]}",
            "kubernetes.io/serviceaccount/service-account.name": sa.name,
            "kubernetes.io/serviceaccount/service-account.uid": sa.uid,
            "sub": sa.username,
        }
        return self._sign(claims, key)

    def issue_projected(
        self,
        sa: ServiceAccount,
        *,
        ttl: float = 3600,
        audiences: Iterable[str] = API_AUDIENCES,
        pod: str = "maily-api-7d9f8c6b5-x2x9q",
        key: rsa.RSAPrivateKey | None = None,
        now: float | None = None,
    ) -> str:
        """A bound token as the kubelet mounts at /var/run/secrets/kubernetes.io/..."""
        t = int(time.time() if now is None else now)
        claims = {
            "aud": list(audiences),
            "exp": t + int(ttl),
            "iat": t,
            "iss": ISSUER,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": sa.namespace,
                "node": {"name": "node-1", "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, "node-1"))},
                "pod": {"name": pod, "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, pod))},
                "serviceaccount": {"name": sa.name, "uid": sa.uid},
            },
            "nbf": t,
            "sub": sa.username,
        }
        return self._sign(claims, key)

    # ------------------------------------------------------------------ authentication
    def authenticate(
        self, token: str, audiences: list[str] | None = None
    ) -> tuple[ServiceAccount | None, list[str], str | None]:
        """kube-apiserver's service-account token authenticator.

        Returns (account, audiences the token is valid for, error).
        """
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, [], "invalid bearer token"
        iss = unverified.get("iss")
        if iss not in (LEGACY_ISSUER, ISSUER) or header.get("alg") != "RS256":
            return None, [], "invalid bearer token"
        wanted = list(audiences or API_AUDIENCES)
        try:
            claims = jwt.decode(
                token,
                self.key.public_key(),
                algorithms=["RS256"],
                issuer=iss,
                leeway=self.leeway,
                options={
                    "verify_aud": False,  # checked below, the apiserver way
                    "require": ["exp", "iat", "nbf", "aud"] if iss == ISSUER else [],
                },
            )
        except jwt.ExpiredSignatureError:
            return None, [], "invalid bearer token, service account token has expired"
        except jwt.PyJWTError:
            return (
                None,
                [],
                ("invalid bearer token, square/go-jose: error in cryptographic primitive"),
            )
        if iss == LEGACY_ISSUER:
            ns = claims.get("kubernetes.io/serviceaccount/namespace")
            name = claims.get("kubernetes.io/serviceaccount/service-account.name")
            uid = claims.get("kubernetes.io/serviceaccount/service-account.uid")
            valid_for = wanted  # legacy tokens carry no audience: valid for any
        else:
            k8s = claims.get("kubernetes.io") or {}
            ns = k8s.get("namespace")
            name = (k8s.get("serviceaccount") or {}).get("name")
            uid = (k8s.get("serviceaccount") or {}).get("uid")
            aud = claims.get("aud")
            token_aud = [aud] if isinstance(aud, str) else list(aud or [])
            valid_for = [a for a in wanted if a in token_aud]
            if not valid_for:
                return None, [], "invalid bearer token, token audiences is invalid"
        if not (isinstance(ns, str) and isinstance(name, str) and isinstance(uid, str)):
            return None, [], "invalid bearer token"
        if claims.get("sub") != f"system:serviceaccount:{ns}:{name}":
            return None, [], "invalid bearer token"
        with self._lock:
            sa = self._accounts.get((ns, name))
        if sa is None:
            return None, [], (f'invalid bearer token, serviceaccounts "{name}" not found')
        if sa.uid != uid:
            return (
                None,
                [],
                (
                    f"invalid bearer token, service account UID ({uid}) does not match"
                    f" claim ({sa.uid})"
                ),
            )
        return sa, valid_for, None

    # ------------------------------------------------------------------ counters
    @property
    def reviews(self) -> int:
        """Review requests received (answered or refused)."""
        with self._lock:
            return len(self.review_log)

    def _record(self, review: Review) -> None:
        with self._lock:
            self.review_log.append(review)

    # ------------------------------------------------------------------ HTTP
    async def _tokenreview(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, bearer = auth.partition(" ")
        caller = None
        if scheme.lower() == "bearer" and bearer.strip():
            caller, _, _ = self.authenticate(bearer.strip())
        if caller is None:
            self._record(Review(None, 401, False, error="reviewer unauthorized"))
            return _status(401, "Unauthorized", "Unauthorized")
        if (caller.namespace, caller.name) not in self._delegators:
            self._record(Review(caller.username, 403, False, error="reviewer forbidden"))
            return _status(
                403,
                "Forbidden",
                "tokenreviews.authentication.k8s.io is forbidden: User"
                f' "{caller.username}" cannot create resource "tokenreviews" in API group'
                ' "authentication.k8s.io" at the cluster scope',
            )
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _status(400, "BadRequest", "the body of the request was in an unknown format")
        if not isinstance(body, dict):
            return _status(400, "BadRequest", "the body of the request was in an unknown format")
        kind, api = body.get("kind"), body.get("apiVersion")
        if (kind not in (None, "TokenReview")) or (api not in (None, "authentication.k8s.io/v1")):
            return _status(400, "BadRequest", f"wrong kind/apiVersion {kind}/{api}")
        spec = body.get("spec") or {}
        token = spec.get("token")
        if not isinstance(token, str) or not token:
            return _status(
                422,
                "Invalid",
                'TokenReview.authentication.k8s.io "" is invalid: spec.token: Required value',
            )
        audiences = [str(a) for a in (spec.get("audiences") or [])]
        sa, valid_for, error = self.authenticate(token, audiences or None)
        status: dict[str, Any]
        if sa is None:
            status = {"user": {}, "error": f"[{error}]"}
        else:
            status = {
                "authenticated": True,
                "user": {"username": sa.username, "uid": sa.uid, "groups": sa.groups},
                "audiences": valid_for,
            }
        self._record(
            Review(
                caller.username,
                201,
                sa is not None,
                username=sa.username if sa else None,
                error=error,
                audiences=audiences,
                token_sha256=fingerprint(token),
            )
        )
        out = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return web.Response(status=201, text=json.dumps(out), content_type="application/json")

    async def _not_found(self, request: web.Request) -> web.Response:
        return _status(404, "NotFound", "the server could not find the requested resource")

    def _ssl_context(self) -> ssl.SSLContext:
        cert, key = self_signed(
            Path(self._tmp.name),
            "kube-apiserver",
            dns_names=["localhost", "kubernetes.default.svc"],
            key=new_rsa_key(),
            valid_for=dt.timedelta(days=1),
            stem="tls",
        )
        self.ca_pem = cert.read_text()
        return server_tls_context(cert, key)

    def routes(self, app: web.Application) -> None:
        app.router.add_post(TOKENREVIEW_PATH, self._tokenreview)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
