"""Built-in rotators, one module per target system.

Modules are imported when their type is first needed (``rotator_for``), so a
command that touches one type does not load the SDKs of all the others (boto3,
redis, psycopg).
"""

import importlib
import pkgutil

#: type name -> module of this package that registers its rotator
BUILTIN = {
    "database": "postgres",
    "jwt": "jwt",
    "aws": "aws",
    "smtp": "smtp",
    "api_keys": "api_keys",
    "redis": "redis",
    "encryption_key": "encryption_key",
}

#: built-in rotators that date a never-rotated secret by the consumer secret's creation
#: (they keep ``Rotator.created_at``): a schedule (``secrets status``) needs no more of
#: them than that, so their modules and SDKs (psycopg, redis, PyJWT) are not imported
#: for it. A test checks every name against the class.
DATED_BY_SECRET = frozenset({"database", "jwt", "redis", "smtp"})


def load(name: str) -> None:
    """Import the module of rotator ``name`` (all of them for a name we do not know)."""
    module = BUILTIN.get(name)
    if module is not None:
        importlib.import_module(f"{__name__}.{module}")
        return
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
