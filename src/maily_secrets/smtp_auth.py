"""SMTP AUTH shared by notifications and the smtp rotator."""

from __future__ import annotations

import smtplib


def login_once(conn: smtplib.SMTP, username: str, password: str) -> None:
    """AUTH PLAIN or LOGIN, exactly once.

    ``smtplib.SMTP.login`` retries a rejected password with every other mechanism, and
    servers commonly hang up after the first rejection (and count each try as a
    failed login). CRAM-MD5-only servers fall back to ``login``.
    """
    offered = conn.esmtp_features.get("auth", "").upper().split()
    for mech in ("PLAIN", "LOGIN"):
        if mech in offered:
            conn.user, conn.password = username, password
            auth = conn.auth_plain if mech == "PLAIN" else conn.auth_login
            conn.auth(mech, auth, initial_response_ok=True)
            return
    conn.login(username, password)
