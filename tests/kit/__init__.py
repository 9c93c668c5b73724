"""Maily's test kit: the real stand-ins and drivers the tests share, one place each.

* :mod:`tests.kit.smtp`: an aiosmtpd server requiring AUTH that records what it got
  (the ``smtp`` fixture of ``tests/conftest.py`` is one of these per test);
* :mod:`tests.kit.certs`: a throwaway self-signed certificate for a TLS stand-in;
* :mod:`tests.kit.rotation`: one rotator driven by hand (context, the four steps),
  an application's traffic during a rotation, a clock, a crashing engine child;
* :mod:`tests.kit.servers`: server processes a test starts and stops itself;
* :mod:`tests.kit.ha`: a service reading in a loop while a cluster node is killed;
* :mod:`tests.kit.leases`: a recorder of lease events;
* :mod:`tests.kit.listeners`: a secret of the test's own and a service polling it;
* :mod:`tests.kit.cli`: ``./mailyctl.py`` run as a user runs it;
* :mod:`tests.kit.sync_worker`: a Celery-style worker process using ``maily_secrets.sync``.
* :mod:`tests.kit.agent`: a real ``bao agent`` (AppRole auto-auth, a template it renders,
  an API proxy) and an AppRole of the test's own for it.

Fixtures stay in ``tests/conftest.py`` (``bao``, ``root``, ``smtp``, ``guide_env`` ...);
the raft cluster is ``tests/raft.py``, the network cutter ``tests/netfault.py``.
Like ``structlog.testing`` or ``botocore.stub``: small, documented and used the same
way everywhere, so a test reads as what it checks, not how its servers are built.
"""
