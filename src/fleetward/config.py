"""Where fleetward keeps its state, and every option it has: one settings object.

:class:`Settings` (pydantic-settings) holds every option of a fleetward
installation, resolved once, when it is built, from, in order:

1. explicit arguments (``Settings(home=..., ...)``, ``Settings.load(home, **overrides)``,
   command-line options passed through);
2. ``FLEETWARD_*`` environment variables (names below);
3. ``settings.json`` in the home directory (non-secret options only);
4. built-in defaults (the database and public URL default from the home).

No other module reads the environment for configuration: domains get values
from the settings object (or from the caller, as ``keys`` does, which imports
only ``errors``). ``fleetward config show`` prints each effective value and
where it came from (:meth:`Settings.describe`), secrets masked.

======================  ==============================  ====================================
option                  variable                        default
======================  ==============================  ====================================
home                    ``FLEETWARD_HOME``              ``~/.fleetward``
database_url            ``FLEETWARD_DATABASE_URL``      ``sqlite:///<home>/fleetward.db``
public_url              ``FLEETWARD_PUBLIC_URL``        ``https://127.0.0.1:8443`` (device plane)
operator_host           ``FLEETWARD_OPERATOR_HOST``     ``127.0.0.1`` (REST API, docs)
operator_port           ``FLEETWARD_OPERATOR_PORT``     ``8400``
operator_tls            ``FLEETWARD_OPERATOR_TLS``      ``false`` (``true``: HTTPS, service CA)
device_host             ``FLEETWARD_DEVICE_HOST``       ``127.0.0.1`` (EST, OCSP, CRL, TUF, ...)
device_port             ``FLEETWARD_DEVICE_PORT``       ``8443`` (always TLS)
service_names           ``FLEETWARD_SERVICE_NAMES``     ``localhost,127.0.0.1`` (server cert)
mqtt_host               ``FLEETWARD_MQTT_HOST``         ``127.0.0.1`` (broker listeners)
mqtt_production_port    ``FLEETWARD_MQTT_PRODUCTION_PORT`` ``8883``
mqtt_test_port          ``FLEETWARD_MQTT_TEST_PORT``    ``8885``
mqtt_drill_port         ``FLEETWARD_MQTT_DRILL_PORT``   ``8886``
mqtt_service_port       ``FLEETWARD_MQTT_SERVICE_PORT`` ``8884`` (fleetward's own identities)
trusted_proxies         ``FLEETWARD_TRUSTED_PROXIES``   none
auth_failures_per_source ``FLEETWARD_AUTH_FAILURES_PER_SOURCE`` ``20`` per window, then 429
auth_failures_per_identity ``FLEETWARD_AUTH_FAILURES_PER_IDENTITY`` ``20`` (token id, certificate)
auth_failure_window     ``FLEETWARD_AUTH_FAILURE_WINDOW`` ``60`` seconds
refusal_audit_window    ``FLEETWARD_REFUSAL_AUDIT_WINDOW`` ``60`` seconds (refusals as counts)
webhook_hosts           ``FLEETWARD_WEBHOOK_HOSTS``     none
file_key_passphrase     ``FLEETWARD_KEY_PASSPHRASE``    ``<home>/keys/.passphrase`` (secret)
root_passphrase         ``FLEETWARD_ROOT_PASSPHRASE``   prompt (secret)
pkcs11_module           ``FLEETWARD_PKCS11_MODULE``     SoftHSM2's library
pkcs11_token            ``FLEETWARD_PKCS11_TOKEN``      none
pkcs11_pin              ``FLEETWARD_PKCS11_PIN``        none (secret)
log_level               ``FLEETWARD_LOG_LEVEL``         ``info``
log_format              ``FLEETWARD_LOG_FORMAT``        ``text`` (or ``json``: one object a line)
metrics_enabled         ``FLEETWARD_METRICS_ENABLED``   ``true`` (``/metrics``, operator plane)
header_timeout          ``FLEETWARD_HEADER_TIMEOUT``    ``10`` s to send a request's headers
idle_timeout            ``FLEETWARD_IDLE_TIMEOUT``      ``5`` s a kept-alive connection idles
tls_handshake_timeout   ``FLEETWARD_TLS_HANDSHAKE_TIMEOUT`` ``10`` s (TLS listeners)
max_connections         ``FLEETWARD_MAX_CONNECTIONS``   ``1000`` per plane and process
======================  ==============================  ====================================

The home directory holds the SQLite database, the encrypted CA key files and
the audit checkpoint key; it is 0700 and its files 0600 (see
``fleetward._files``). Secrets are never written to, nor read from,
``settings.json``.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fleetward._files import private_dir, write_private
from fleetward.errors import InvalidInputError

__all__ = [
    "DEFAULT_DEVICE_PORT",
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "LogFormat",
    "LogLevel",
    "Setting",
    "Settings",
    "default_home",
    "parse_trusted_proxies",
]

DEFAULT_PORT = 8400  # the operator plane
DEFAULT_DEVICE_PORT = 8443  # the device plane (TLS)
ENV_PREFIX = "FLEETWARD_"
SETTINGS_FILE = "settings.json"
MAX_SETTINGS_FILE = 64 * 1024  # settings.json is a handful of short values

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["text", "json"]

# Where each value came from, as :meth:`Settings.describe` names it.
ARGUMENT = "argument"
ENVIRONMENT = "environment"
FILE = SETTINGS_FILE
DEFAULT = "default"


def default_home() -> Path:
    """The home directory: ``$FLEETWARD_HOME`` or ``~/.fleetward``."""
    env = os.environ.get("FLEETWARD_HOME")
    return Path(env) if env else Path.home() / ".fleetward"


def parse_trusted_proxies(raw: str) -> tuple[str, ...]:
    """Parse ``FLEETWARD_TRUSTED_PROXIES``: comma-separated addresses or CIDRs.

    Every entry must be an IP address or a network with no host bits set:
    uvicorn would quietly treat a typo as a literal that never matches, and
    ``*`` (trust every peer) is refused because it gives any client the power
    to choose the source address recorded for it.

    Raises:
        InvalidInputError: an entry is not an address or a network.
    """
    return _proxies(raw.split(","))


def _proxies(entries: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for entry in (e.strip() for e in entries):
        if not entry:
            continue
        try:
            if "/" in entry:
                out.append(str(ipaddress.ip_network(entry, strict=True)))
            else:
                out.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise InvalidInputError(
                f"FLEETWARD_TRUSTED_PROXIES: {entry[:60]!r} is not an IP address or network"
            ) from None
    return tuple(out)


def _items(value: Any) -> Any:
    """A comma-separated string (the environment's form) or a JSON list, as a list."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


def _resolve_home(value: Any) -> Path:
    return Path(value or default_home()).expanduser().resolve()


class Setting(NamedTuple):
    """One effective option, as ``fleetward config show`` prints it."""

    name: str
    variable: str
    value: str  # for display: secrets masked, passwords in URLs hidden
    source: str  # argument, environment, settings.json, default (or a file)
    secret: bool


# Filled by _Provenance while one Settings is built (construction is
# synchronous, so a context variable is enough to carry it out).
_building: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "fleetward_settings_building", default=None
)


class _HomeFile(PydanticBaseSettingsSource):
    """``settings.json`` of the home the higher-priority sources chose."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        *,
        init: PydanticBaseSettingsSource,
        env: PydanticBaseSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._init = init
        self._env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # Unused: __call__ reads the whole file at once.
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        init = self._init.init_kwargs if isinstance(self._init, InitSettingsSource) else {}
        home = _resolve_home(init.get("home") or self._env().get("home"))
        path = home / SETTINGS_FILE
        if not path.is_file():
            return {}
        raw = path.read_bytes()
        if len(raw) > MAX_SETTINGS_FILE:
            raise InvalidInputError(f"{path}: larger than {MAX_SETTINGS_FILE} bytes")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise InvalidInputError(f"{path}: expected a JSON object")
        fields = self.settings_cls.model_fields
        for key in data:
            if key not in fields or key == "home":
                known = ", ".join(sorted(k for k in fields if k not in Settings.SECRETS))
                raise InvalidInputError(f"{path}: unknown setting {key!r} (known: {known})")
            if key in Settings.SECRETS:
                raise InvalidInputError(
                    f"{path}: {key} is a secret; set {Settings.variable(key)} instead"
                )
        return data


class _Provenance(PydanticBaseSettingsSource):
    """Adds nothing; notes which earlier source gave each value."""

    LABELS: ClassVar[dict[str, str]] = {
        "InitSettingsSource": ARGUMENT,
        "EnvSettingsSource": ENVIRONMENT,
        "_HomeFile": FILE,
    }

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        record = _building.get()
        if record is None:
            return {}
        aliases = {
            str(f.validation_alias).lower(): name
            for name, f in self.settings_cls.model_fields.items()
            if isinstance(f.validation_alias, str)
        }
        # Sources are called in priority order: the first that gave a value won.
        for source, label in self.LABELS.items():
            for key in self.settings_sources_data.get(source, {}):
                name = aliases.get(str(key).lower(), str(key))
                record.setdefault(name, label)
        return {}


class Settings(BaseSettings):
    """Every option of one fleetward installation, resolved once.

    Built directly (``Settings(home=..., database_url=..., public_url=...)``,
    explicit values win) or with :meth:`load`. Immutable: :meth:`replace`
    makes a changed copy.

    Raises:
        InvalidInputError: a value (from any source) is not acceptable.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,  # FLEETWARD_X= means "not set", as before
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # Fields whose values are secret: masked by describe(), refused in settings.json.
    SECRETS: ClassVar[frozenset[str]] = frozenset(
        {"file_key_passphrase", "root_passphrase", "pkcs11_pin"}
    )

    home: Path = Field(default_factory=default_home)
    database_url: str = ""  # "" = sqlite:///<home>/fleetward.db
    # Base URL written into certificates (CRL distribution point, OCSP): the
    # device plane, where devices and relying parties fetch them.
    public_url: str = f"https://127.0.0.1:{DEFAULT_DEVICE_PORT}"
    # The operator plane (REST API, its docs): loopback by default.
    operator_host: str = "127.0.0.1"
    operator_port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    operator_tls: bool = False
    # The device plane (EST, OCSP, CRLs, CA certificates, TUF, attestation,
    # device telemetry, broker discovery): TLS, client certificates optional.
    device_host: str = "127.0.0.1"
    device_port: int = Field(default=DEFAULT_DEVICE_PORT, ge=0, le=65535)
    # DNS names and IP addresses in fleetward's server certificates (device
    # plane, operator plane with TLS, broker listeners).
    service_names: Annotated[tuple[str, ...], NoDecode] = ("localhost", "127.0.0.1")
    # The broker's listeners: one per device environment, one for fleetward.
    mqtt_host: str = "127.0.0.1"
    mqtt_production_port: int = Field(default=8883, ge=0, le=65535)
    mqtt_test_port: int = Field(default=8885, ge=0, le=65535)
    mqtt_drill_port: int = Field(default=8886, ge=0, le=65535)
    mqtt_service_port: int = Field(default=8884, ge=0, le=65535)
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed; none by
    # default, so a client cannot choose the source address recorded for it.
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Failed authentications (no, a bad or an unknown token or device
    # certificate) a source address, or a claimed identity (token id, device
    # certificate serial), may make per window before it is answered 429 with
    # Retry-After, before any database work, until the window ends. Far above
    # what a client with a working credential ever meets. See docs/planes.md.
    auth_failures_per_source: int = Field(default=20, ge=1, le=1_000_000)
    auth_failures_per_identity: int = Field(default=20, ge=1, le=1_000_000)
    auth_failure_window: float = Field(default=60.0, gt=0, le=86_400)
    # Refused requests are audited as counts: per source (anonymous) or actor,
    # action and reason, at most the first refusal of a window at once and one
    # entry with the count of the rest when the window ends.
    refusal_audit_window: float = Field(default=60.0, gt=0, le=86_400)
    # Hosts playbook webhooks may reach (``host`` or ``host:port``); none by
    # default, so a playbook author cannot make fleetward probe internal addresses.
    webhook_hosts: Annotated[frozenset[str], NoDecode] = frozenset()
    # Encrypts file keys; without it a random one is kept in <home>/keys/.passphrase.
    file_key_passphrase: SecretStr | None = Field(
        default=None, validation_alias="FLEETWARD_KEY_PASSPHRASE"
    )
    # Encrypts offline root keys (OTA root keys, an offline root CA).
    root_passphrase: SecretStr | None = None
    pkcs11_module: str | None = None  # None: the keys package's default (SoftHSM2)
    pkcs11_token: str | None = None
    pkcs11_pin: SecretStr | None = None
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    metrics_enabled: bool = True
    # The listeners' limits (fleetward.api.protocol, docs/planes.md): a
    # connection must deliver each request's headers within header_timeout
    # (from its start or the end of the previous response), may idle between
    # requests idle_timeout (uvicorn's keep-alive timeout), and must finish a
    # TLS handshake within tls_handshake_timeout. Past max_connections open
    # connections on one plane of one process, new ones are closed at once
    # (lowered at start to what the process's file-descriptor limit leaves).
    header_timeout: float = Field(default=10.0, gt=0, le=300)
    idle_timeout: int = Field(default=5, ge=1, le=3600)
    tls_handshake_timeout: float = Field(default=10.0, gt=0, le=300)
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)
    # The tenant a local command (``--tenant``) acts on when none is given.
    tenant: str = Field(default="default", min_length=1, max_length=63)

    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        record: dict[str, str] = {}
        token = _building.set(record)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidInputError(_explain(exc)) from None
        finally:
            _building.reset(token)
        self._origins = record

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then the environment, then the home's settings.json
        (no dotenv or secrets directory: one place for each kind of value)."""
        home_file = _HomeFile(settings_cls, init=init_settings, env=env_settings)
        return (init_settings, env_settings, home_file, _Provenance(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        home = _resolve_home(data.get("home"))
        data = {**data, "home": home}
        if not data.get("database_url"):
            data["database_url"] = f"sqlite:///{home / 'fleetward.db'}"
        return data

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        items = _items(value)
        if isinstance(items, list | tuple):
            return _proxies(str(i) for i in items)
        return items

    @field_validator("service_names", mode="before")
    @classmethod
    def _parse_names(cls, value: Any) -> Any:
        items = _items(value)
        if isinstance(items, list | tuple):
            names = tuple(str(n).strip().lower() for n in items if str(n).strip())
            if not names:
                raise ValueError("at least one name is needed")
            for name in names:
                if len(name) > 253 or not re.fullmatch(r"[a-z0-9.:\-]+", name):
                    raise ValueError(f"{name[:60]!r} is not a DNS name or an IP address")
            return names
        return items

    @field_validator("webhook_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        items = _items(value)
        if isinstance(items, list | tuple | set | frozenset):
            return frozenset(str(h).strip().lower() for h in items if str(h).strip())
        return items

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    # -- constructors ---------------------------------------------------------

    @classmethod
    def load(cls, home: Path | None = None, **overrides: Any) -> Settings:
        """Resolve settings for ``home`` (or the default home).

        Args:
            home: The home directory; ``None`` for ``$FLEETWARD_HOME`` or the default.
            overrides: Explicit values (command-line options); ``None`` means
                "not given" and leaves the option to the other sources.

        Raises:
            InvalidInputError: a value is not acceptable.
        """
        values = {k: v for k, v in overrides.items() if v is not None}
        if home is not None:
            values["home"] = home
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A validated copy with ``changes`` (recorded as explicit arguments).

        Raises:
            InvalidInputError: a changed value is not acceptable.
        """
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        try:
            copy = type(self).model_validate(data)
        except ValidationError as exc:
            raise InvalidInputError(_explain(exc)) from None
        copy._origins = {**self._origins, **dict.fromkeys(changes, ARGUMENT)}
        return copy

    # -- derived values -------------------------------------------------------

    @property
    def keys_dir(self) -> Path:
        """Directory of encrypted key files."""
        return self.home / "keys"

    @property
    def passphrase_path(self) -> Path:
        """Where the generated file-key passphrase is kept (when none is set)."""
        return self.keys_dir / ".passphrase"

    @property
    def checkpoint_key_path(self) -> Path:
        """Encrypted key that signs audit checkpoints."""
        return self.keys_dir / "audit-checkpoint.pem"

    @property
    def checkpoint_public_key_path(self) -> Path:
        """Public half of the checkpoint key, for verifiers."""
        return self.keys_dir / "audit-checkpoint.pub.pem"

    def key_passphrase(self) -> bytes:
        """The passphrase that encrypts file keys.

        ``FLEETWARD_KEY_PASSPHRASE`` wins. Otherwise a random passphrase is
        kept in ``<home>/keys/.passphrase`` (mode 0600), created on first
        use: the embedded default, convenient but only as safe as the home
        directory. Production sets the variable or keeps CA keys in PKCS#11.
        """
        if self.file_key_passphrase is not None:
            return self.file_key_passphrase.get_secret_value().encode()
        path = self.passphrase_path
        if not path.exists():
            private_dir(self.keys_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return path.read_text().strip().encode()

    def keyring_options(self) -> dict[str, str | None]:
        """The PKCS#11 keyword arguments of ``fleetward.keys.ring.KeyRing``."""
        return {
            "pkcs11_module": self.pkcs11_module,
            "pkcs11_token": self.pkcs11_token,
            "pkcs11_pin": _reveal(self.pkcs11_pin),
        }

    def root_passphrase_value(self) -> str | None:
        """``FLEETWARD_ROOT_PASSPHRASE`` in clear, or ``None``."""
        return _reveal(self.root_passphrase)

    # -- persistence and display ----------------------------------------------

    def save(self) -> None:
        """Write the database and public URL to ``settings.json`` (home 0700,
        file 0600), keeping any other non-secret option already there."""
        private_dir(self.home)
        path = self.home / SETTINGS_FILE
        data: dict[str, Any] = {}
        if path.is_file():
            loaded = json.loads(path.read_text())
            data = loaded if isinstance(loaded, dict) else {}
        data.update(database_url=self.database_url, public_url=self.public_url)
        write_private(path, (json.dumps(data, indent=2) + "\n").encode())

    @classmethod
    def variable(cls, name: str) -> str:
        """The environment variable of option ``name``."""
        alias = cls.model_fields[name].validation_alias
        return alias if isinstance(alias, str) else ENV_PREFIX + name.upper()

    def source(self, name: str) -> str:
        """Where option ``name`` came from: argument, environment,
        settings.json or default (for the file-key passphrase, the file)."""
        found = self._origins.get(name)
        if found is not None:
            return found
        if name == "file_key_passphrase" and self.passphrase_path.exists():
            return str(self.passphrase_path)
        return DEFAULT

    def describe(self) -> list[Setting]:
        """Every option with its display value and source, secrets masked."""
        out: list[Setting] = []
        for name in type(self).model_fields:
            secret = name in self.SECRETS
            value = getattr(self, name)
            if secret:
                shown = "********" if value is not None else "(not set)"
                if value is None and name == "file_key_passphrase":
                    shown = (
                        f"(kept in {self.passphrase_path})"
                        if self.passphrase_path.exists()
                        else "(generated on first use)"
                    )
            else:
                shown = _display(name, value)
            out.append(Setting(name, self.variable(name), shown, self.source(name), secret))
        return out


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _display(name: str, value: Any) -> str:
    if value is None and name == "pkcs11_module":
        return "(SoftHSM2's, the keys package default)"
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | frozenset):
        return ", ".join(sorted(value) if isinstance(value, frozenset) else value) or "(none)"
    if name == "database_url":
        from sqlalchemy.engine import make_url

        try:
            return make_url(value).render_as_string(hide_password=True)
        except Exception:  # not a URL sqlalchemy knows: show nothing that may hold a password
            return "(unparsable URL)"
    return str(value)


def _explain(exc: ValidationError) -> str:
    """One line naming the variable of each bad value (never the value: it may be secret)."""
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = error.get("loc", ())
        name = str(loc[0]) if loc else ""
        fields = Settings.model_fields
        where = Settings.variable(name) if name in fields else name or "settings"
        if error.get("type") == "extra_forbidden":
            parts.append(f"{where}: unknown setting")
        else:
            parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
