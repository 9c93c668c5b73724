"""Typed configuration: a pydantic model built from a secret and kept current.

    class Settings(BaseModel):          # or pydantic_settings.BaseSettings
        db_host: str
        db_port: int
        db_password: SecretStr          # hidden in repr() and logs
        jwt_secret: SecretStr

    settings = await typed_config(Settings, vault_service)     # maily/data/config
    settings.current.db_port            # a validated Settings; any thread may read it
    await settings.close()              # stops its listener

The holder registers a secret listener on the path: each new version is validated
and, when valid, replaces :attr:`TypedConfig.current` (one reference swap) before
``on_change(new)`` runs. An invalid new version keeps the old model: a warning is
logged naming the fields and the kinds of error (never a value) and ``on_error(exc)``
is called. An invalid *first* value raises :class:`InvalidSecretValue`.

A ``BaseSettings`` model is built as ``Model(**secret)``: the secret's keys win over
the environment, and the environment (through the model's own sources) fills in what
the secret lacks. Anything else is ``Model.model_validate(secret)``; pass ``build=`` to
decide yourself. :class:`SecretSettingsSource` puts a secret's value at the place of
your choice among a ``BaseSettings``'s own sources.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from .callbacks import callback_name, is_async_callable

if TYPE_CHECKING:
    from .listeners import Subscription
    from .service import VaultService

log = logging.getLogger("maily_secrets.typed")

M = TypeVar("M", bound=BaseModel)


class InvalidSecretValue(ValueError):
    """A secret's value does not fit the model; names the fields, never the values."""

    def __init__(self, path: str, model: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.model = model
        self.problems = problems  # (field, pydantic error type), e.g. ("db_port", "int_parsing")
        listed = "; ".join(f"{f}: {kind}" for f, kind in problems)
        super().__init__(f"{path} does not fit {model}: {listed}")


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in exc.errors(include_url=False, include_input=False, include_context=False):
        field = ".".join(str(x) for x in e.get("loc", ())) or "(model)"
        out.append((field, str(e.get("type", "invalid"))))
    return out


def _default_build(model: type[M]) -> Callable[[dict[str, Any]], M]:
    if issubclass(model, BaseSettings):
        return lambda data: model(**data)
    return model.model_validate


class TypedConfig(Generic[M]):
    """The current validated model of one secret (see :func:`typed_config`)."""

    def __init__(
        self,
        model: type[M],
        path: str,
        current: M,
        *,
        build: Callable[[dict[str, Any]], M],
        on_change: Callable[[M], Any] | None,
        on_error: Callable[[InvalidSecretValue], Any] | None,
    ) -> None:
        self.model = model
        self.path = path
        self._current = current
        self._build = build
        self._on_change = on_change
        self._on_error = on_error
        self._subscription: Subscription | None = None
        self.updates = 0  # new versions accepted
        self.rejected = 0  # new versions that did not fit

    def __repr__(self) -> str:  # the model's own repr hides SecretStr; ours shows none of it
        return (
            f"<TypedConfig {self.model.__name__} from {self.path!r}"
            f" updates={self.updates} rejected={self.rejected}>"
        )

    @property
    def current(self) -> M:
        """The latest valid model (safe to read from any thread)."""
        return self._current

    def validate(self, data: dict[str, Any]) -> M:
        """``data`` as the model, or :class:`InvalidSecretValue` (no value in it)."""
        try:
            return self._build(data)
        except ValidationError as exc:
            problems = _problems(exc)
        raise InvalidSecretValue(self.path, self.model.__name__, problems)

    def _apply(self, data: dict[str, Any]) -> M | None:
        try:
            new = self.validate(data)
        except InvalidSecretValue as exc:
            self.rejected += 1
            log.warning(
                "new value of %s rejected, keeping the previous %s: %s",
                self.path,
                self.model.__name__,
                "; ".join(f"{f}: {k}" for f, k in exc.problems),
                extra={"path": self.path, "model": self.model.__name__},
            )
            if self._on_error is not None:
                self._on_error(exc)
            return None
        self._current = new
        self.updates += 1
        return new

    def _listener(self) -> Callable[[dict[str, Any]], Any]:
        on_change = self._on_change
        if on_change is not None and is_async_callable(on_change):
            changed: Callable[[M], Awaitable[Any]] = on_change

            async def on_value_async(data: dict[str, Any]) -> None:
                new = self._apply(data)
                if new is not None:
                    await changed(new)

            on_value_async.__qualname__ = f"typed_config[{callback_name(on_change)}]"
            return on_value_async

        def on_value(data: dict[str, Any]) -> None:
            new = self._apply(data)
            if new is not None and on_change is not None:
                on_change(new)

        on_value.__qualname__ = f"typed_config[{self.model.__name__}]"
        return on_value

    async def close(self) -> None:
        """Stop following the secret (``current`` stays what it was)."""
        sub, self._subscription = self._subscription, None
        if sub is not None:
            await sub.cancel()


async def typed_config(
    model: type[M],
    service: VaultService,
    path: str | None = None,
    *,
    on_change: Callable[[M], Any] | None = None,
    on_error: Callable[[InvalidSecretValue], Any] | None = None,
    build: Callable[[dict[str, Any]], M] | None = None,
    interval: float | None = None,
) -> TypedConfig[M]:
    """Read ``path`` (default: the service's ``<mount>/data/config``), validate it as
    ``model`` and keep it current through a secret listener.

    ``on_change(new_model)`` runs after each accepted new version (a plain function on
    the listeners' threads, or a coroutine function in the loop); ``on_error(exc)``
    after a rejected one. ``interval``: the listener's poll interval.
    """
    path = path or f"{service.kv_mount}/data/config"
    holder: TypedConfig[M] = TypedConfig(
        model,
        path,
        current=None,  # type: ignore[arg-type]  # set just below, before anyone sees it
        build=build or _default_build(model),
        on_change=on_change,
        on_error=on_error,
    )
    holder._current = holder.validate(await service.get_secret(path))
    holder._subscription = await service.register_secret_listener(
        path, holder._listener(), interval=interval
    )
    return holder


class SecretSettingsSource(PydanticBaseSettingsSource):
    """A secret's value as one source of a ``BaseSettings`` (place it where you like)::

        class Settings(BaseSettings):
            @classmethod
            def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                           dotenv_settings, file_secret_settings):
                return (init_settings, env_settings, SecretSettingsSource(settings_cls, data))

    ``data`` is the secret's value (``await vault_service.get_config()``); keys that are
    not fields are ignored.
    """

    def __init__(self, settings_cls: type[BaseSettings], data: Mapping[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = dict(data)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {k: v for k, v in self._data.items() if k in fields}

    def __repr__(self) -> str:  # never the values
        return f"SecretSettingsSource(keys={sorted(self._data)!r})"
