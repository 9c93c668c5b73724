"""A real moto server (AWS APIs over HTTP) for the session, with IAM authentication on.

Started on a free 127.0.0.1 port as a subprocess by the same code as ``mailyctl dev
up`` (``maily_secrets.dev.standins.MotoStandin``). An ``admin`` IAM user (policy ``*``)
is made first, then moto is switched to checking every request's signature and IAM
policy: a deleted or wrong key fails exactly as on AWS (``InvalidClientTokenId``,
``SignatureDoesNotMatch``). Test modules use their own IAM users (``users()``).
Import the fixture into a test module: ``from .moto_server import moto``.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from maily_secrets.dev.standins import MotoStandin, moto_enable_auth, moto_setup_user

REGION = "us-east-1"
ADMIN_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass
class Moto:
    endpoint: str
    admin: tuple[str, str]
    standin: MotoStandin

    def client(self, service: str, creds: tuple[str, str] | None = None) -> Any:
        akid, secret = creds or self.admin
        return boto3.session.Session().client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=akid,
            aws_secret_access_key=secret,
        )

    def user(self, prefix: str = "u", policy: dict[str, Any] | None = None) -> tuple[str, str, str]:
        """A new IAM user with a policy and one key: (name, key id, secret)."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return name, str(key["AccessKeyId"]), str(key["SecretAccessKey"])

    def key_ids(self, user: str) -> set[str]:
        keys = self.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return {str(k["AccessKeyId"]) for k in keys}

    def key_status(self, user: str) -> dict[str, str]:
        keys = self.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        return {str(k["AccessKeyId"]): str(k["Status"]) for k in keys}

    def whoami(self, creds: tuple[str, str]) -> str | None:
        """The caller's ARN, or None when AWS (moto) refuses the key."""
        try:
            return str(self.client("sts", creds).get_caller_identity()["Arn"])
        except ClientError:
            return None

    def secret_of(self, key_id: str) -> tuple[str, str] | None:
        """moto's own record of a key: (secret, status), read from its internal API
        (what a fake SES SMTP endpoint needs to check a derived password)."""
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=5) as r:  # noqa: S310
            doc = json.loads(r.read())
        for k in (doc.get("iam") or {}).get("AccessKey") or []:
            if k.get("access_key_id") == key_id:
                return str(k["secret_access_key"]), str(k.get("status"))
        return None


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    standin = MotoStandin(Path(tmp_path_factory.mktemp("moto")))
    info, _ = standin.start()
    try:
        admin = moto_setup_user(info.addr, "admin", ADMIN_POLICY)
        moto_enable_auth(info.addr)
        yield Moto(info.addr, admin, standin)
    finally:
        standin.stop()
