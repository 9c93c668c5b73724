"""The HTTP layer's rules through an injected transport and clock (pure logic; the same
behaviour against the real server is in test_core_faults.py and test_ha.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from maily_secrets.clock import ManualClock
from maily_secrets.errors import VaultError, VaultRequestError
from maily_secrets.settings import VaultSettings
from maily_secrets.vault import policy
from maily_secrets.vault.client import OutcomeUnknown, VaultClient
from maily_secrets.vault.transport import (
    MockTransport,
    Request,
    Response,
    TransportError,
    json_response,
)

ADDR = "https://vault.test:8200"


def client(handler: object, **kw: object) -> VaultClient:
    settings = VaultSettings(addr=ADDR, token="unit-token", auth_method="token", **kw)
    return VaultClient(settings, transport=MockTransport(handler), clock=ManualClock())  # type: ignore[arg-type]


class Script:
    """Answers requests from a list, in order; records them."""

    def __init__(self, *answers: Response | TransportError) -> None:
        self.answers = list(answers)
        self.sent: list[Request] = []

    def __call__(self, request: Request) -> Response:
        self.sent.append(request)
        a = self.answers.pop(0)
        if isinstance(a, TransportError):
            raise a
        return a


async def drive(c: VaultClient, coro: Any) -> Any:
    """Run a request whose backoff sleeps on the client's ManualClock to its end."""
    clock = c.clock
    assert isinstance(clock, ManualClock)
    task = asyncio.ensure_future(coro)
    await clock.run_until_idle(limit=100_000)
    return await task


OK = json_response(200, {"data": {"data": {"k": "v"}, "metadata": {"version": 1}}})


@pytest.mark.parametrize(
    ("method", "failure", "resent"),
    [
        ("GET", "connect", True),
        ("POST", "connect", True),
        ("GET", "sent", True),
        ("POST", "sent", False),
        ("PUT", "sent", False),
    ],
)
async def test_transport_failures_are_resent_only_when_that_cannot_apply_twice(
    method: str, failure: str, resent: bool
) -> None:
    script = Script(TransportError(failure, "Boom"), OK)  # type: ignore[arg-type]
    c = client(script, max_retries=3)
    if resent:
        await drive(c, c.request(method, "maily/data/x", token="t"))
        assert len(script.sent) == 2
    else:
        with pytest.raises(OutcomeUnknown):
            await drive(c, c.request(method, "maily/data/x", token="t"))
        assert len(script.sent) == 1


@pytest.mark.parametrize(
    ("method", "status", "resent"),
    [
        ("POST", 412, True),
        ("POST", 429, True),
        ("POST", 503, True),
        ("GET", 500, True),
        ("POST", 500, False),
        ("POST", 502, False),
        ("GET", 504, True),
        ("GET", 501, False),
        ("GET", 400, False),
        ("GET", 404, False),
    ],
)
async def test_status_retry_matrix(method: str, status: int, resent: bool) -> None:
    script = Script(json_response(status, {"errors": ["x"]}), OK)
    c = client(script, max_retries=3)
    if resent:
        await drive(c, c.request(method, "maily/data/x", token="t"))
    else:
        with pytest.raises(VaultError):
            await drive(c, c.request(method, "maily/data/x", token="t"))
    assert len(script.sent) == (2 if resent else 1)


async def test_kv_upgrading_400_is_retried_for_a_write() -> None:
    script = Script(json_response(400, {"errors": [policy.KV_UPGRADING]}), OK)
    c = client(script, max_retries=3)
    await drive(c, c.request("POST", "fresh/data/x", json_body={"data": {}}, token="t"))
    assert len(script.sent) == 2


async def test_an_idempotent_post_may_be_resent() -> None:
    script = Script(TransportError("sent", "ServerDisconnectedError"), OK)
    c = client(script, max_retries=3)
    await drive(c, c.request("POST", "transit/encrypt/k", json_body={}, token="t", idempotent=True))
    assert len(script.sent) == 2


async def test_backoff_waits_on_the_injected_clock_and_is_capped() -> None:
    answers = [json_response(503, {"errors": ["sealed"]}) for _ in range(2000)] + [OK]
    script = Script(*answers)
    c = client(script, max_retries=2000, retry_base_delay=0.1, retry_max_delay=2.0)
    clock = c.clock
    assert isinstance(clock, ManualClock)
    await drive(c, c.request("GET", "maily/data/x", token="t"))  # no OverflowError
    assert len(script.sent) == 2001
    assert clock.monotonic() - 1_000 <= 2.0 * 2000


@pytest.mark.parametrize(
    ("location", "members", "followed"),
    [
        ("/v1/maily/data/x", (), True),
        ("https://vault.test:8200/v1/maily/data/x", (), True),
        ("https://VAULT.test:8200/v1/maily/data/x", (), True),
        ("https://vault-2.test:8200/v1/maily/data/x", (), False),
        ("https://vault-2.test:8200/v1/maily/data/x", ("https://vault-2.test:8200",), True),
        ("http://vault.test:8200/v1/maily/data/x", (), False),  # https -> http
        ("http://vault-2.test:8200/v1/x", ("http://vault-2.test:8200",), False),
        ("https://user:pw@vault.test:8200/v1/x", (), False),
        ("https://vault.test:8201/v1/x", (), False),
        ("ftp://vault.test/x", (), False),
    ],
)
async def test_redirects_follow_only_the_same_origin_or_members_and_the_token_goes_nowhere_else(
    location: str, members: tuple[str, ...], followed: bool
) -> None:
    def handler(request: Request) -> Response:
        if str(request.url).startswith(ADDR + "/v1/maily/data/start"):
            return json_response(307, None, url=str(request.url), Location=location)
        return OK

    transport = MockTransport(handler)
    c = VaultClient(
        VaultSettings(addr=ADDR, token="t", auth_method="token", cluster_members=members),
        transport=transport,
    )
    if followed:
        await c.request("GET", "maily/data/start", token="unit-token")
        assert len(transport.requests) == 2
    else:
        with pytest.raises(VaultRequestError):
            await c.request("GET", "maily/data/start", token="unit-token")
        assert len(transport.requests) == 1  # the token was sent to the first origin only
    for r in transport.requests:
        assert policy.origin(r.url) == policy.origin(ADDR) or any(
            policy.origin(r.url) == policy.origin(m) for m in members
        )


async def test_valid_now_is_the_token_until_its_renewal_is_due_then_none() -> None:
    from maily_secrets.vault.auth import Token

    clock = ManualClock()
    settings = VaultSettings(addr=ADDR, token="unit-token", auth_method="token")
    c = VaultClient(settings, transport=MockTransport(lambda r: json_response(500)), clock=clock)
    tm = c.tokens
    assert tm.valid_now() is None  # none obtained yet: token() logs in
    tm._token = Token("unit-token", ttl=30, renewable=True, obtained=clock.monotonic())
    assert tm.valid_now() == "unit-token"
    await clock.advance(30 * settings.renew_fraction - 0.5)
    assert tm.valid_now() == "unit-token"
    await clock.advance(1)
    assert tm.valid_now() is None  # renewal due: token() renews
    tm._token = Token("root", ttl=0, renewable=False, obtained=clock.monotonic())
    await clock.advance(10**6)
    assert tm.valid_now() == "root"  # a token that never expires
