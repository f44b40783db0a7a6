"""Settings from the environment, in one typed place: DATABASE_URL and TODO_RLS_* variables.

Read on demand by load_settings() (the engines call it when given no EngineSettings), never at
import time. A bad value raises SettingsError naming the variable and what it may be.
"""

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from todo_rls.errors import TodoRlsError

ENV_PREFIX = "TODO_RLS_"
PgBouncerMode = Literal["auto", "on", "off"]
PreparedMode = Literal["auto", "on", "off"]


class SettingsError(TodoRlsError, ValueError):
    """An environment variable holds a value this library cannot use."""


def _allowed(description: str) -> dict[str, Any]:
    """Field metadata: what a value may be, quoted by SettingsError."""
    return {"allowed": description}


class Settings(BaseSettings):
    """Connection and pool settings; each field is read from TODO_RLS_<FIELD> unless noted."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # VAR= in a .env or compose file means "use the default"
        case_sensitive=False,
        frozen=True,
    )

    # DATABASE_URL is the name every platform (Neon, Vercel, Heroku, Render) sets.
    database_url: str | None = Field(
        default=None,
        validation_alias="DATABASE_URL",
        json_schema_extra=_allowed("a postgresql:// URL"),
    )
    pool_size: Annotated[
        int, Field(ge=1, le=1000, json_schema_extra=_allowed("an integer from 1 to 1000"))
    ] = 5
    max_overflow: Annotated[
        int, Field(ge=0, le=1000, json_schema_extra=_allowed("an integer from 0 to 1000"))
    ] = 5
    pool_timeout: Annotated[
        float,
        Field(gt=0, le=3600, json_schema_extra=_allowed("seconds, more than 0 and at most 3600")),
    ] = 10.0
    # Recycle before a Neon compute's idle suspend or a proxy's idle cut can bite.
    pool_recycle: Annotated[
        int,
        Field(ge=1, le=86400, json_schema_extra=_allowed("seconds, an integer from 1 to 86400")),
    ] = 300
    pre_ping: Annotated[bool, Field(json_schema_extra=_allowed("true or false"))] = True
    # libpq counts whole seconds and treats anything below 2 as 2.
    connect_timeout: Annotated[
        int, Field(ge=2, le=600, json_schema_extra=_allowed("seconds, an integer from 2 to 600"))
    ] = 10
    connect_attempts: Annotated[
        int, Field(ge=1, le=100, json_schema_extra=_allowed("an integer from 1 to 100"))
    ] = 5
    max_backoff: Annotated[
        float,
        Field(gt=0, le=300, json_schema_extra=_allowed("seconds, more than 0 and at most 300")),
    ] = 5.0
    # auto: transaction-mode pooler iff the host contains "-pooler." (Neon's pooled endpoint).
    pgbouncer: Annotated[PgBouncerMode, Field(json_schema_extra=_allowed("auto, on or off"))] = (
        "auto"
    )
    # Server-side prepared statements; auto: on, unless behind PgBouncer.
    prepared_statements: Annotated[
        PreparedMode, Field(json_schema_extra=_allowed("auto, on or off"))
    ] = "auto"
    # The role scoped sessions switch to in each transaction (scoped_session's set_role), for
    # deployments that must log in as a role RLS does not bind; unset: no switch.
    set_role: Annotated[
        str | None,
        Field(
            min_length=1, max_length=63, json_schema_extra=_allowed("a role name such as todo_app")
        ),
    ] = None

    @field_validator("pgbouncer", "prepared_statements", mode="before")
    @classmethod
    def _lower_case_mode(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("set_role")
    @classmethod
    def _plain_role_name(cls, value: str | None) -> str | None:
        if value is not None and (value != value.strip() or "\x00" in value):
            raise ValueError("a role name has no surrounding spaces and no NUL character")
        return value

    @property
    def pgbouncer_flag(self) -> bool | None:
        """pgbouncer as EngineSettings takes it: None for auto-detection."""
        return {"auto": None, "on": True, "off": False}[self.pgbouncer]

    @property
    def prepared_statements_flag(self) -> bool | None:
        """prepared_statements as EngineSettings takes it: None for auto."""
        return {"auto": None, "on": True, "off": False}[self.prepared_statements]


def _variable(field: str) -> str:
    return "DATABASE_URL" if field == "database_url" else f"{ENV_PREFIX}{field.upper()}"


def _describe(error: ValidationError) -> str:
    problems = []
    for detail in error.errors():
        field = str(detail["loc"][0]) if detail["loc"] else "?"
        info = Settings.model_fields.get(field)
        extra = info.json_schema_extra if info is not None else None
        allowed = extra.get("allowed") if isinstance(extra, dict) else None
        problems.append(
            f"{_variable(field)}={detail['input']!r} is not valid ({detail['msg']});"
            f" allowed: {allowed}"
        )
    return "; ".join(problems)


def load_settings() -> Settings:
    """Settings from the process environment, or SettingsError naming each bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        raise SettingsError(_describe(error)) from error
