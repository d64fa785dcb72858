"""The config file's schema: every section and key, with the checks a single value allows.

Cross-references (a rule naming a store, holds naming rules) are checked in `crossref.py`, so that all
problems of a file are reported together.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import NoDecode

from retentiond.duration import Duration, parse_duration
from retentiond.schedule import Schedule, parse_schedule

# Names that label metrics and ledger entries: stable, short, no spaces or quotes.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
# SQL identifiers are checked against the catalog later; this first filter keeps quotes, semicolons,
# spaces and comments out of anything that will ever reach the database.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def _duration(value: Any) -> Duration:
    if isinstance(value, Duration):
        return value
    return parse_duration(value)


def _schedule(value: Any) -> Schedule:
    if isinstance(value, Schedule):
        return value
    return parse_schedule(value)


# NoDecode: an environment override such as RETENTIOND_DAEMON__SCHEDULE="every 2h" is plain text.
DurationValue = Annotated[
    Duration,
    BeforeValidator(_duration),
    PlainSerializer(str, return_type=str),
    NoDecode,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^(\s*\d+\s*(s|m|h|d|w|mo|y)\s*|P.+)$",
            "examples": ["30d", "6w", "10y", "P10Y"],
        }
    ),
]
ScheduleValue = Annotated[
    Schedule,
    BeforeValidator(_schedule),
    PlainSerializer(lambda s: s.text, return_type=str),
    NoDecode,
    WithJsonSchema({"type": "string", "examples": ["every 1h", "0 3 * * *"]}),
]


def check_identifier(value: str, *, parts: int = 1) -> str:
    """Accept `name` (or `schema.name` when parts=2) made only of identifier characters."""
    pieces = value.split(".")
    if not 1 <= len(pieces) <= parts or not all(_IDENT.match(p) for p in pieces):
        shape = "name or schema.name" if parts == 2 else "name"
        raise ValueError(
            f'"{value}" is not a plain SQL {shape} (letters, digits, _ and $; no quotes or spaces)'
        )
    return value


Identifier = Annotated[str, AfterValidator(check_identifier)]
QualifiedName = Annotated[str, AfterValidator(lambda v: check_identifier(v, parts=2))]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are never coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


class DaemonSection(Section):
    """How the daemon runs."""

    state_url: str = Field(
        "sqlite:////var/lib/retentiond/state.db",
        description="SQLAlchemy URL of the state database (ledger, holds, keystore, rule state).",
    )
    state_password_file: Path | None = Field(
        None, description="File holding the state database password (kept out of the config)."
    )
    schedule: ScheduleValue = Field(
        default_factory=lambda: parse_schedule("every 1h"),
        description='Default schedule of rules: "every 6h" or cron syntax "0 3 * * *".',
    )
    max_parallel_rules: int = Field(2, ge=1, le=64, description="Rules run at the same time.")
    batch_budget_ms: int = Field(
        50, ge=5, le=10_000, description="Time budget of one delete transaction, in milliseconds."
    )
    lock_timeout_ms: int = Field(
        500, ge=10, le=60_000, description="Longest wait for a lock before a batch gives way."
    )
    statement_timeout_ms: int = Field(
        30_000, ge=100, le=3_600_000, description="Longest single statement against a target."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )


class MetricsSection(Section):
    """The Prometheus endpoint."""

    enabled: bool = Field(True, description="Serve /metrics and /healthz.")
    listen: str = Field(
        "127.0.0.1:9464", description="host:port to listen on (loopback by default)."
    )
    basic_auth_users: dict[str, str] = Field(
        default_factory=dict,
        description="user = bcrypt hash, as in Prometheus web-config files; empty disables auth.",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate; enables HTTPS.")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file.")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'"{value}" is not host:port (e.g. 127.0.0.1:9464)')
        return value

    @field_validator("basic_auth_users")
    @classmethod
    def _bcrypt(cls, value: dict[str, str]) -> dict[str, str]:
        for user, hashed in value.items():
            if not re.match(r"^\$2[aby]?\$\d\d\$[./A-Za-z0-9]{53}$", hashed):
                raise ValueError(f'the value for user "{user}" is not a bcrypt hash')
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> MetricsSection:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        return self


class LedgerSection(Section):
    """The deletion ledger."""

    origin: str = Field(
        "localhost/retentiond",
        description="Name of this log in signed checkpoints, e.g. lab.example.org/retentiond.",
    )
    signing_key_file: Path = Field(
        Path("/var/lib/retentiond/ledger.key"),
        description="Ed25519 key that signs checkpoints (created by init, mode 0600).",
    )
    checkpoint_interval: DurationValue = Field(
        default_factory=lambda: parse_duration("1h"),
        description="Longest time between two signed checkpoints.",
    )

    @field_validator("origin")
    @classmethod
    def _origin(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/:-]{0,199}$", value):
            raise ValueError("origin must be a single line of letters, digits and ._/:- characters")
        return value


class KeysSection(Section):
    """The key-encryption key that wraps every secret of the keystore."""

    kek_file: Path = Field(
        Path("/var/lib/retentiond/kek"),
        description="Key-encryption key (created by init, mode 0600). Never back it up with the "
        "state database.",
    )


class SqlStore(Section):
    """A database reached through SQLAlchemy."""

    kind: Literal["sql"] = Field(description="A database reached through SQLAlchemy.")
    url: str = Field(
        description="SQLAlchemy URL: postgresql+psycopg://, mysql+pymysql:// or sqlite:///. "
        "Put the password in password_file, not here."
    )
    password_file: Path | None = Field(None, description="File holding the password.")
    password_credential: str | None = Field(
        None, description="Name of a systemd credential ($CREDENTIALS_DIRECTORY/NAME) with it."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^(postgresql|mysql|mariadb|sqlite)(\+\w+)?://", value):
            raise ValueError(
                "the URL must start with postgresql+psycopg://, mysql+pymysql:// or sqlite:///"
            )
        return value

    @model_validator(mode="after")
    def _one_secret_source(self) -> SqlStore:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("password_file and password_credential are alternatives; give one")
        return self


class FilesStore(Section):
    """A directory tree."""

    kind: Literal["files"] = Field(description="A directory tree.")
    root: Path = Field(description="Absolute path of the store root; nothing outside is touched.")

    @field_validator("root")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        if not value.is_absolute():
            raise ValueError(f'"{value}" is not an absolute path')
        return value


Store = Annotated[SqlStore | FilesStore, Field(discriminator="kind")]

Action = Literal["delete", "mask", "drop", "shred"]


class Rule(Section):
    """Which data, how long it is kept, what happens after."""

    name: str = Field(
        pattern=NAME_PATTERN, description="Stable name; labels metrics and ledger entries."
    )
    store: str | None = Field(None, description="Name of the store (not used by shred rules).")
    action: Action = Field(description="delete, mask, drop or shred.")
    retain: DurationValue | None = Field(
        None, description="How long data is kept: 30d, 6w, 10y, P10Y."
    )
    table: str | None = Field(None, description="schema.table (or table) of a sql store.")
    schema_name: str | None = Field(
        None, alias="schema", description="A whole schema that is a copy (action drop)."
    )
    age_column: str | None = Field(None, description="Timestamp column that ages each row.")
    columns: list[Identifier] = Field(
        default_factory=list, description="Columns set to NULL by mask."
    )
    cascade: list[QualifiedName] = Field(
        default_factory=list,
        description="Tables whose rows referencing purged rows are deleted too.",
    )
    since: date | None = Field(None, description="When a copy was made; it expires since + retain.")
    glob: str | None = Field(None, description="Files under the store root, e.g. **/*.csv.")
    exclude: list[str] = Field(default_factory=list, description="Globs of files never touched.")
    path: str | None = Field(
        None, description="A directory under the store root that is a copy (action drop)."
    )
    age_source: Literal["mtime", "ctime", "birth"] = Field(
        "mtime", description="File time that ages a file (never atime)."
    )
    overwrite: bool = Field(False, description="Overwrite files with zeros before unlinking.")
    prune_empty_dirs: bool = Field(False, description="Remove directories a purge left empty.")
    schedule: ScheduleValue | None = Field(None, description="Overrides [daemon] schedule.")
    legal_basis: str | None = Field(None, description="Why the data is kept this long (free text).")
    max_fraction: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Refuse a run that would remove more than this fraction of the target "
        "(default 0.5; 1.0 for drop and shred).",
    )
    max_items: int | None = Field(None, ge=1, description="Refuse a run removing more items.")
    enabled: bool = Field(True, description="A disabled rule is validated but never runs.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, parts=2)

    @field_validator("schema_name", "age_column")
    @classmethod
    def _ident(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value)

    @field_validator("retain")
    @classmethod
    def _positive(cls, value: Duration | None) -> Duration | None:
        if value is not None and value.is_zero():
            raise ValueError("retention must be longer than zero")
        return value

    @field_validator("glob", "path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("/") or ".." in Path(value).parts or "\x00" in value or not value:
            raise ValueError("must be a relative path inside the store root (no leading /, no ..)")
        return value

    @field_validator("exclude")
    @classmethod
    def _relative_excludes(cls, value: list[str]) -> list[str]:
        # Checked like glob: an exclude that leaves the root is a typo, better refused at load.
        for item in value:
            cls._relative(item)
        return value

    @property
    def effective_max_fraction(self) -> float:
        """The max_fraction guard, with the default that suits the action."""
        if self.max_fraction is not None:
            return self.max_fraction
        return 1.0 if self.action in ("drop", "shred") else 0.5


class Hold(Section):
    """An exemption that beats every rule."""

    rule: str | None = Field(
        None, description="Name of the rule it applies to (all rules if absent)."
    )
    table: str | None = Field(None, description="schema.table the `where` applies to.")
    where: dict[str, list[int | str]] | None = Field(
        None,
        description="Column = list of key values that are kept, e.g. { patient_id = [40211] }.",
    )
    path: str | None = Field(None, description="A path prefix under a files store root.")
    reason: str = Field(min_length=3, description="Why (case number, inspection...); required.")
    until: date | None = Field(None, description="Last day of the hold (none: until released).")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str | None) -> str | None:
        return None if value is None else check_identifier(value, parts=2)

    @field_validator("where")
    @classmethod
    def _where(cls, value: dict[str, list[int | str]] | None) -> dict[str, list[int | str]] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("where needs at least one column")
        for column, keys in value.items():
            check_identifier(column)
            if not keys:
                raise ValueError(f"where.{column} lists no values")
        return value

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in Path(value).parts or not value):
            raise ValueError("must be a relative path prefix inside the store root")
        return value

    @model_validator(mode="after")
    def _scope(self) -> Hold:
        if self.rule is None and self.table is None and self.path is None:
            raise ValueError("a hold needs at least one of rule, table or path")
        if self.where is not None and self.path is not None:
            raise ValueError("where (rows) and path (files) cannot be combined in one hold")
        return self


class Config(Section):
    """The whole config file."""

    daemon: DaemonSection = Field(default_factory=DaemonSection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    ledger: LedgerSection = Field(default_factory=LedgerSection)
    keys: KeysSection = Field(default_factory=KeysSection)
    stores: dict[str, Store] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    holds: list[Hold] = Field(default_factory=list)

    @field_validator("stores")
    @classmethod
    def _store_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f'store name "{name}" must match {NAME_PATTERN}')
        return value

    def rule(self, name: str) -> Rule:
        """The rule called `name` (KeyError if none)."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise KeyError(name)
