"""The real systems credentials live in, one module each: connect, set or verify a
credential, list who uses one.

``postgres`` (login roles, SCRAM verifiers, ``pg_stat_activity``), ``redis`` (ACL users
and their password hashes), ``aws_iam`` (IAM access keys and STS, through boto3) and
``smtp`` (one SMTP session: connect, TLS, AUTH). The rotators (``rotation/rotators``),
the notifications and the dev bootstrap use these; none of them imports back.

Importing this package loads no SDK: each module imports its own (psycopg lazily).
"""

from __future__ import annotations

import secrets
import string

_URL_SAFE = string.ascii_letters + string.digits + "-_"


class TargetError(Exception):
    """A target system refused a call or could not be reached. The message names the
    cause and never a secret value; the rotators translate it (``kit.blocking``)."""


def random_password(n: int = 32) -> str:
    """A random password that is safe inside a DSN/URL without escaping."""
    return "".join(secrets.choice(_URL_SAFE) for _ in range(n))


def scrubbed_line(text: str, *values: str | None) -> str:
    """The first line of an error text, on one line, with each of ``values`` blanked."""
    lines = text.strip().splitlines() or ["error"]
    line = " ".join(lines[0].split())
    for v in values:
        if v:
            line = line.replace(v, "******")
    return line


__all__ = ["TargetError", "random_password", "scrubbed_line"]
