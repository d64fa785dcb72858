"""Secrets: read from files or systemd credentials, kept out of logs, and loose files refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from retentiond.config.model import SqlStore
from retentiond.errors import ConfigError

CREDENTIALS_ENV = "CREDENTIALS_DIRECTORY"


def loose_permissions(path: Path) -> bool:
    """True when users other than the owner may read or write `path` (ssh's rule for key files)."""
    return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def url_has_password(url: str) -> bool:
    """True when a SQLAlchemy URL carries an inline password."""
    try:
        return make_url(url).password is not None
    except Exception:
        return ":" in url.split("@", 1)[0].split("//", 1)[-1] if "@" in url else False


def credential_path(name: str) -> Path:
    """Where systemd put the credential `name` for this service."""
    directory = os.environ.get(CREDENTIALS_ENV)
    if not directory:
        raise ConfigError(
            [f"credential {name}: ${CREDENTIALS_ENV} is not set (no LoadCredential=?)"]
        )
    return Path(directory) / name


def read_secret_file(path: Path, what: str) -> str:
    """The first line of a secret file; refuses one that others can read."""
    try:
        if loose_permissions(path):
            raise ConfigError([f"{what}: {path} is readable by other users; chmod 600 it"])
        with open(path, encoding="utf-8") as handle:
            return handle.readline().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError([f"{what}: cannot read {path}: {exc.strerror}"]) from None


def store_url(store: SqlStore, store_name: str) -> URL:
    """The store's URL with its password filled in from wherever it is kept."""
    url = make_url(store.url)
    if store.password_file is not None:
        secret = read_secret_file(store.password_file, f"stores.{store_name}.password_file")
        url = url.set(password=secret)
    elif store.password_credential is not None:
        path = credential_path(store.password_credential)
        secret = read_secret_file(path, f"stores.{store_name}.password_credential")
        url = url.set(password=secret)
    return url


def redacted(url: URL | str) -> str:
    """A URL safe for logs and errors: the password replaced by ***."""
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)
