"""No repr()/str() of an object we return or hold shows a secret: debuggers, Sentry's
locals and f-strings in log calls see names and versions, never values.

Two proofs: the objects a real read produces, printed with a canary inside; and a scan
of every dataclass of the library, so that a new field holding a secret cannot be added
without ``field(repr=False)`` or ``SecretStr``.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import uuid

import maily_secrets
from maily_secrets.clock import ManualClock
from maily_secrets.service import VaultService
from maily_secrets.settings import VaultSettings
from maily_secrets.vault.client import VaultClient
from maily_secrets.vault.transport import MockTransport, Request, json_response

from .conftest import Bao

CANARY = f"CANARY-{uuid.uuid4().hex}"


def shown(*objects: object) -> str:
    return "\n".join(f"{o!r} {o!s} {o}" for o in objects)


async def test_objects_of_a_real_read_never_show_the_secret_or_token(bao: Bao) -> None:
    mount = await bao.new_kv_mount("repr")
    path = f"{mount}/data/canary"
    async with bao.client() as root:
        await root.kv.write(path, {"password": CANARY}, cas=0)
        r = await root.write("auth/token/create", {"ttl": "10m"})
    token = r.body["auth"]["client_token"]  # type: ignore[index]
    settings = VaultSettings(addr=bao.addr, token=token, role_id=CANARY, secret_id=CANARY)
    svc = VaultService(settings, clock=ManualClock())
    try:
        await svc.get_secret(path)
        client = svc.client
        version = await client.kv.read(path)
        response = await client.read(path)
        entry = svc.cache.peek(path)
        held = client.tokens.current()
        objects = [settings, svc, client, client.tokens, version, response, entry, held, svc.cache]
        text = shown(*objects)
        assert CANARY not in text
        assert token not in text
        assert version.data == {"password": CANARY}  # the value is there, just not shown
    finally:
        await svc.close()


async def test_transport_requests_and_responses_hide_token_and_body() -> None:
    transport = MockTransport(lambda req: json_response(200, {"data": {"x": CANARY}}))
    c = VaultClient(VaultSettings(addr="http://vault.test:8200", token="t"), transport=transport)
    await c.request("POST", "maily/data/x", json_body={"data": {"p": CANARY}}, token=CANARY)
    req: Request = transport.requests[0]
    assert req.headers["X-Vault-Token"] == CANARY
    resp = await transport.send(req)
    assert CANARY not in shown(req, resp)


# Field names that hold a name, a path, a count or an id, never a secret value.
NOT_SECRET = {
    ("LeaseEvent", "key"),
    ("KubernetesAuthConfig", "disable_local_ca_jwt"),
    ("TypeResult", "secret"),
    ("AwsOptions", "iam_credentials"),
    ("AwsOptions", "iam_credentials_secret"),
    ("AwsOptions", "key"),
    ("KnownKeys", "pending"),  # access key ids, not secret keys
    ("_Options", "key"),
    ("_Options", "admin_secret"),
    ("_Options", "password_length"),
    ("SmtpOptions", "password_length"),
    ("Request", "url"),
    ("Response", "url"),
}
SUSPECT = re.compile(
    r"token|password|secret|^value$|^data$|body|^key$|pending|credential|headers|^options$"
    r"|^settings$|^url$|^vault$|payload|plaintext|ciphertext|jwt",
    re.I,
)


def test_no_dataclass_field_that_may_hold_a_secret_is_printed() -> None:
    offenders: list[str] = []
    scanned = 0
    for info in pkgutil.walk_packages(maily_secrets.__path__, "maily_secrets."):
        if ".dev." in info.name:  # development tooling: never part of a running service
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
                continue
            if obj.__module__ != module.__name__:
                continue
            scanned += 1
            params = obj.__dataclass_params__  # type: ignore[attr-defined]
            if not params.repr:
                continue  # the class writes its own __repr__
            for f in dataclasses.fields(obj):
                if not f.repr or (obj.__name__, f.name) in NOT_SECRET:
                    continue
                if "SecretStr" in str(f.type):
                    continue
                if SUSPECT.search(f.name):
                    offenders.append(f"{obj.__module__}.{obj.__qualname__}.{f.name}")
    assert scanned > 30  # the scan really saw the library's dataclasses
    assert offenders == [], "fields that may print a secret: " + ", ".join(offenders)
