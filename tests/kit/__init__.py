"""Maily's test kit: the real stand-ins the tests share, one place each.

* :mod:`tests.kit.smtp`: an aiosmtpd server requiring AUTH that records what it got
  (the ``smtp`` fixture in ``tests/conftest.py`` is one of these per test);
* :mod:`tests.kit.certs`: a throwaway self-signed certificate for a TLS stand-in.

Like ``structlog.testing`` or ``botocore.stub``: small, documented and used the same
way everywhere, so a test reads as what it checks, not how its servers are built.
"""
