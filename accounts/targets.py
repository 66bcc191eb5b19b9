"""THE target check: who may point a data source (or an alarm webhook) where.

A source names a door into a machine: a folder of files, a network address, a serial device, or, for
agents, a command. One check, given the acting principal, decides for every surface that saves a source
(the API serializer, the admin's forms, pages, and the source preview and its "test connection",
``collection.services.preview``), and the
collectors ask again when they run, because settings change after a source is saved. See
``docs/security.md``, "Who may point a source where".

The rules:

* **Files** (server file sources): the folder, and every file read from it once symlinks are followed,
  must lie under one of ``DAQBROKER_FILE_ROOTS``. Some places are never readable, whoever asks and even
  under a root (``protected_locations``): the project tree, the data dir (except its ``files/`` and
  ``demo/`` folders), the database file, the archive, ``/proc``, ``/sys`` and ``/dev``. Glob patterns may
  not climb out with ``..`` or be absolute.
* **Network** (TCP and Modbus TCP sources, ``socket://`` and ``rfc2217://`` serial URLs, webhooks): every
  address the host name resolves to must be allowed by ``DAQBROKER_NETWORK_ALLOW``. Loopback, link-local, unspecified,
  multicast and reserved addresses need an entry naming such an address or network itself (a catch-all
  such as ``0.0.0.0/0`` does not open them); the server's own services (database, Redis/broker, mail
  server) need an entry naming their port. At run time the collector connects to the very address that
  was checked, so a name re-pointed in DNS after the check is not followed.
* **MQTT brokers**: the network rules for the broker's host and port, and the file rules for its CA file
  (``ca_file``); the password is never in the configuration, only the name of an environment variable
  (``MQTT_PASSWORD_...``) of the collecting process, so a source cannot read another secret. a source with
  ``password_env`` is for administrators (it sends a secret of the collecting host to the broker).
* **OPC UA servers**: the network rules for the server's host and port; the password, as for MQTT, only
  by the name of an environment variable (``OPCUA_PASSWORD_...``), and then for administrators; a secured
  endpoint's client certificate and private key (files of the collecting host) for administrators too.
* **Serial devices** (serial and Modbus RTU sources): ``loop://`` is harmless and open to everyone; device
  paths matching ``DAQBROKER_SERIAL_DEVICES`` too; any other device or pyserial URL scheme is outside the rules.
* **Outside the rules** (but not protected): administrators only. The source remembers who last set its
  target (``DataSource.target_set_by``); at run time an out-of-rule target runs only while that person
  is still an administrator. A non-administrator's later change of the target records them instead, so
  the change has to pass the rules.
* **Agent sources**: only the agent's owner or an administrator may create one or change what it
  collects (its agent, kind or ``collect`` settings). The agent itself also refuses commands unless its
  own configuration file says ``allow_commands = true``, and reads files only under its
  ``allowed_paths`` (``daqbroker_agent.settings``).
* **Webhooks**: the network rules, for everyone (an alarm rule does not record who set its URL), checked
  when the rule is saved and again at delivery; redirects are never followed.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import ValidationError

from accounts import permissions
from accounts.principals import AgentPrincipal
from daqbroker_site.env import NetworkRule, parse_network_rule
from instruments.choices import SourceKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from instruments.models import DataSource

Principal = Union["User", AgentPrincipal, AnonymousUser]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Folders of the data dir that may hold instrument files (every other part of it is protected).
DATA_DIR_FILE_FOLDERS = ("files", "demo")
ALWAYS_PROTECTED = (Path("/proc"), Path("/sys"), Path("/dev"))
HARMLESS_SERIAL_URLS = ("loop://",)
NETWORK_SERIAL_SCHEMES = ("socket", "rfc2217")


class TargetRefused(Exception):
    """A target the rules refuse; ``field`` is the configuration option at fault, ``str()`` says why."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Verdict:
    """What the rules say of one target: ``protected`` (refused to everyone) or ``outside`` (administrators
    only), with the reason; ``addresses`` are the checked addresses a network target connects to."""

    field: str
    protected: str = ""
    outside: str = ""
    addresses: tuple[Address, ...] = ()

    def refusal_for(self, administrator: bool) -> str:
        if self.protected:
            return self.protected
        if self.outside and not administrator:
            return f"{self.outside}; only an administrator may set such a target"
        return ""


# --- paths ------------------------------------------------------------------------------------------


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def file_roots() -> list[Path]:
    return [_real(root) for root in settings.DAQBROKER_FILE_ROOTS]


def protected_locations() -> list[tuple[Path, str]]:
    """(path, what it is) of the places no file source may read, whoever sets it."""
    data_dir = _real(settings.DATA_DIR)
    found = [(data_dir, "the server's data folder"), (_real(settings.BASE_DIR), "the server's program folder")]
    found.append((_real(settings.DAQBROKER_ARCHIVE_DIR), "the archive of raw files"))
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3") and database.get("NAME"):
        name = _real(database["NAME"])
        found += [(Path(f"{name}{suffix}"), "the database") for suffix in ("", "-wal", "-shm", "-journal")]
    found += [(path, f"the system folder {path}") for path in ALWAYS_PROTECTED]
    return found


def _protected_reason(path: Path) -> str:
    """Why ``path`` (resolved) may never be read, or ""."""
    data_dir = _real(settings.DATA_DIR)
    program = _real(settings.BASE_DIR)
    for location, what in protected_locations():
        if not _within(path, location):
            continue
        if location == data_dir and any(_within(path, data_dir / name) for name in DATA_DIR_FILE_FOLDERS):
            continue  # the data dir's files/ and demo/ folders hold instrument files
        if location == program and _within(path, data_dir) and data_dir != program:
            continue  # the data dir inside the program folder (the default var/): its own entry decides
        return f"{path} is inside {what}, which no data source may read"
    return ""


def _contains_protected(folder: Path) -> str:
    for location, what in protected_locations():
        if folder != location and folder in location.parents:
            return f"{folder} contains {what} ({location}), which no data source may read"
    return ""


def check_folder(path: str, pattern: str = "*") -> Verdict:
    """The verdict on a file source reading ``pattern`` in the folder ``path``."""
    if not os.path.isabs(path):
        return Verdict("path", protected=f"{path!r} is not an absolute path")
    parts = Path(pattern).parts
    if os.path.isabs(pattern) or ".." in parts:
        return Verdict("pattern", protected=f"the pattern {pattern!r} may not be absolute or contain '..'")
    folder = _real(path)
    reason = _protected_reason(folder) or _contains_protected(folder)
    if reason:
        return Verdict("path", protected=reason)
    return Verdict("path", outside=_outside_roots(folder))


def _outside_roots(path: Path) -> str:
    roots = file_roots()
    if any(_within(path, root) for root in roots):
        return ""
    listed = ", ".join(str(root) for root in roots) or "none are configured"
    return f"{path} is not under the folders data sources may read (DAQBROKER_FILE_ROOTS: {listed})"


def check_file(path: str | Path) -> Verdict:
    """The verdict on reading one file (after following its symlinks)."""
    real = _real(path)
    reason = _protected_reason(real)
    if reason:
        return Verdict("path", protected=reason)
    return Verdict("path", outside=_outside_roots(real))


# --- network ----------------------------------------------------------------------------------------


def network_rules() -> list[NetworkRule]:
    return [
        rule if isinstance(rule, NetworkRule) else parse_network_rule(rule) for rule in settings.DAQBROKER_NETWORK_ALLOW
    ]


def _special(address: Address) -> bool:
    return bool(
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def _special_network(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return bool(
        network.is_loopback
        or network.is_link_local
        or network.is_unspecified
        or network.is_multicast
        or network.is_reserved
    )


def _normalise(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (an address literal is itself); OSError when it does not."""
    try:
        return [_normalise(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[Address] = []
    for info in infos:
        address = _normalise(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
        if address not in addresses:
            addresses.append(address)
    return addresses


def own_services() -> list[tuple[str, str, int]]:
    """(what, host, port) of the services this server itself uses."""
    found: list[tuple[str, str, int]] = []
    database = settings.DATABASES["default"]
    engine = database["ENGINE"]
    if not engine.endswith("sqlite3"):
        default_port = 3306 if engine.endswith("mysql") else 5432
        host = database.get("HOST") or "127.0.0.1"
        if not host.startswith("/"):
            found.append(("the database", host, int(database.get("PORT") or default_port)))
    for what, url in (("Redis", getattr(settings, "REDIS_URL", "")), ("the broker", settings.CELERY_BROKER_URL)):
        parts = urlsplit(url or "")
        if parts.hostname:
            default_port = {"redis": 6379, "rediss": 6380, "amqp": 5672, "amqps": 5671}.get(parts.scheme, 0)
            try:
                port = parts.port or default_port
            except ValueError:
                continue
            if port:
                found.append((what, parts.hostname, port))
    if getattr(settings, "EMAIL_HOST", ""):
        found.append(("the mail server", settings.EMAIL_HOST, int(settings.EMAIL_PORT)))
    return found


def _service_at(address: Address, port: int) -> str:
    for what, host, service_port in own_services():
        if service_port != port:
            continue
        try:
            if address in resolve(host, port):
                return what
        except OSError:
            continue
    return ""


def check_network(host: str, port: int, *, field: str = "host") -> Verdict:
    """The verdict on connecting to ``host:port``: every address the name resolves to is checked."""
    label = f"{host}:{port}"
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        return Verdict(field, outside=f"{host!r} cannot be resolved ({exc}), so it cannot be checked")
    if not addresses:
        return Verdict(field, outside=f"{host!r} resolves to no address")
    rules = network_rules()
    name = host.lower().rstrip(".")
    for address in addresses:
        matching = [rule for rule in rules if rule.matches(name, address, port)]
        service = _service_at(address, port)
        if service and not any(rule.port == port and rule.network is not None for rule in matching):
            return Verdict(
                field,
                protected=f"{label} ({address}) is {service} of this server; "
                f"no data source may reach it unless DAQBROKER_NETWORK_ALLOW names {address}:{port}",
                addresses=tuple(addresses),
            )
        if _special(address):
            if not any(rule.network is not None and _special_network(rule.network) for rule in matching):
                return Verdict(
                    field,
                    outside=f"{label} ({address}) is a loopback, link-local or otherwise special address, "
                    "and DAQBROKER_NETWORK_ALLOW does not name it",
                    addresses=tuple(addresses),
                )
        elif not matching:
            return Verdict(
                field,
                outside=f"{label} ({address}) is not allowed by DAQBROKER_NETWORK_ALLOW",
                addresses=tuple(addresses),
            )
    return Verdict(field, addresses=tuple(addresses))


# --- serial -----------------------------------------------------------------------------------------


def check_serial(url: str) -> Verdict:
    if url in HARMLESS_SERIAL_URLS or url.startswith("loop://?"):
        return Verdict("url")
    if "://" in url:
        parts = urlsplit(url)
        if parts.scheme in NETWORK_SERIAL_SCHEMES:
            try:
                host, port = parts.hostname, parts.port
            except ValueError:
                host, port = None, None
            if not host or not port:
                return Verdict("url", protected=f"{url!r} needs a host and a port, e.g. socket://192.0.2.7:4001")
            return check_network(host, port, field="url")
        return Verdict("url", outside=f"serial URLs of the kind {parts.scheme}:// are for administrators")
    if not os.path.isabs(url):
        return Verdict("url", protected=f"{url!r} is neither a device path (/dev/...) nor a serial URL")
    device = _real(url)
    for location, what in protected_locations():
        if location != Path("/dev") and _within(device, location):
            return Verdict("url", protected=f"{device} is inside {what}, which no data source may read")
    # Matched as named (a /dev/serial/by-id/... link) or where it leads, but only a real device under
    # /dev, and never a name climbing out with ".." (fnmatch's * also matches "/").
    names = [str(device)] + ([url] if ".." not in Path(url).parts else [])
    if _within(device, Path("/dev")) and any(
        fnmatch.fnmatch(name, pattern) for name in names for pattern in serial_devices()
    ):
        return Verdict("url")
    return Verdict("url", outside=f"the serial device {url} is not listed in DAQBROKER_SERIAL_DEVICES")


def serial_devices() -> list[str]:
    return list(getattr(settings, "DAQBROKER_SERIAL_DEVICES", []))


# --- sources ----------------------------------------------------------------------------------------


def verdict_for(kind: str, config: dict) -> Verdict:
    """The rules' verdict on a server-collected source's validated ``config``."""
    if kind == SourceKind.FILE:
        return check_folder(config["path"], config.get("pattern") or "*")
    if kind == SourceKind.TCP:
        return check_network(config["host"], int(config["port"]))
    if kind == SourceKind.SERIAL:
        return check_serial(config["url"])
    if kind == SourceKind.MODBUS:
        if config["transport"] == "tcp":
            return check_network(config["host"], int(config["port"]))
        return check_serial(config["url"])
    if kind == SourceKind.MQTT:
        return check_mqtt(config)
    if kind == SourceKind.OPCUA:
        return check_opcua(config)
    return Verdict("")


def check_mqtt(config: dict) -> Verdict:
    """An MQTT source: the broker's address (the network rules), and its CA file, if any (the file rules).
    The address is always judged: a CA file outside the roots never skips the network rules (the server's
    own services stay refused to everyone) nor the pinning of the checked address."""
    network = check_network(config["host"], int(config["port"]))
    if network.protected:
        return network
    if config.get("ca_file"):
        verdict = check_file(config["ca_file"])
        if verdict.protected:
            return Verdict("ca_file", protected=verdict.protected)
        if verdict.outside and not network.outside:
            return Verdict("ca_file", outside=verdict.outside, addresses=network.addresses)
    return _password_env_for_administrators(config, network, "broker")


OPCUA_FILES = ("certificate", "private_key", "server_certificate")


def check_opcua(config: dict) -> Verdict:
    """An OPC UA source: the server's address (the network rules); a password from the collecting process's
    environment (``password_env``) is for administrators, as for MQTT; so are a secured endpoint's client
    certificate and private key (files of the collecting host, its secret key among them), which are never
    a protected file of the server."""
    network = check_network(config["host"], int(config["port"]))
    if network.protected:
        return network
    files = [name for name in OPCUA_FILES if config.get(name)]
    for name in files:
        verdict = check_file(config[name])
        if verdict.protected:
            return Verdict(name, protected=verdict.protected)
    verdict = _password_env_for_administrators(config, network, "server")
    if verdict.outside or not files:
        return verdict
    shown = ", ".join(config[name] for name in files)
    return Verdict(
        files[0],
        outside=f"the client's certificate and private key are files of this server ({shown})",
        addresses=network.addresses,
    )


def _password_env_for_administrators(config: dict, verdict: Verdict, peer: str) -> Verdict:
    """``verdict`` for a peer's address, made outside the rules when ``password_env`` is set: the variable holds
    a secret of the collecting host, and only an administrator sends it to a broker or server (MQTT, OPC UA)."""
    if config.get("password_env") and not verdict.protected and not verdict.outside:
        return Verdict(
            "password_env",
            outside=f"a password from this server's environment ({config['password_env']}) is sent to the {peer}",
            addresses=verdict.addresses,
        )
    return verdict


def target_of(kind: str, config: dict, agent_id: int | None = None) -> object:
    """The parts of a source that say where it reads: a change of any of them is a change of target."""
    config = config or {}
    if kind == SourceKind.FILE:
        return (kind, config.get("path"), config.get("pattern"))
    if kind == SourceKind.TCP:
        return (kind, config.get("host"), config.get("port"))
    if kind == SourceKind.SERIAL:
        return (kind, config.get("url"))
    if kind == SourceKind.MODBUS:
        return (kind, config.get("transport"), config.get("host"), config.get("port"), config.get("url"))
    if kind == SourceKind.MQTT:
        return (kind, config.get("host"), config.get("port"), config.get("ca_file"), config.get("password_env"))
    if kind == SourceKind.OPCUA:
        return (kind, config.get("host"), config.get("port"), config.get("password_env"), *map(config.get, OPCUA_FILES))
    # Canonical JSON: PostgreSQL's jsonb hands keys back in its own order.
    return (kind, agent_id, json.dumps(config.get("collect") or {}, sort_keys=True, default=str))


def _user(principal: Principal) -> Principal:
    return permissions.resolve(principal)[0]


def check_source(principal: Principal, source: DataSource, *, previous: DataSource | None = None) -> bool:
    """Refuse (``ValidationError``, keyed by the field at fault) a source ``principal`` may not save.

    ``source`` holds the new values with its configuration already validated; ``previous`` is the stored
    row for a change (None when creating). Returns whether the target changed: the caller then records
    ``principal`` in ``target_set_by``. An unchanged target is not re-judged here (the collectors judge
    it at every run), so a co-editor may rename an administrator's source.
    """
    user = _user(principal)
    if isinstance(user, AgentPrincipal) or not permissions.is_authenticated(user):
        raise ValidationError("Only a signed-in person configures data sources.")
    new_target = target_of(source.kind, source.config, source.agent_id)
    if previous is not None and target_of(previous.kind, previous.config, previous.agent_id) == new_target:
        return False
    administrator = permissions.is_administrator(principal)
    if source.kind == SourceKind.AGENT:
        agent = source.agent
        if agent is not None and not administrator and agent.owner_id != user.pk:
            raise ValidationError(
                {
                    "agent": "Only the owner of this source's agent or an administrator may set what the agent "
                    "collects: it runs on their machine."
                }
            )
        return True
    refusal = verdict_for(source.kind, source.config).refusal_for(administrator)
    if refusal:
        raise ValidationError({"config": refusal})
    return True


def may_run_outside_rules(source: DataSource) -> bool:
    """Whether the person who last set ``source``'s target is (still) an administrator."""
    setter = source.target_set_by
    return setter is not None and setter.is_active and permissions.is_administrator(setter)


def check_at_run(source: DataSource, config: dict) -> dict:
    """Run-time check of a server-collected source: the configuration to collect with, or TargetRefused.

    For network targets the returned configuration carries the checked address (``connect_address`` or
    ``connect_url``), so the connection goes where the check looked, whatever DNS says a moment later.
    """
    verdict = verdict_for(source.kind, config)
    if verdict.protected:
        raise TargetRefused(verdict.field, verdict.protected)
    if verdict.outside and not may_run_outside_rules(source):
        raise TargetRefused(verdict.field, f"{verdict.outside} (and it was not set by a current administrator)")
    return pinned(source.kind, config, verdict)


def pinned(kind: str, config: dict, verdict: Verdict) -> dict:
    """``config`` connecting to the address ``verdict`` checked (``connect_address`` / ``connect_url``)."""
    if not verdict.addresses:
        return config
    address = str(verdict.addresses[0])
    if kind == SourceKind.MQTT:
        # With TLS the broker's certificate is checked against the name connected to: the name is kept
        # (a name re-pointed in DNS must then still present a valid certificate for it).
        return config if config.get("tls") else {**config, "connect_address": address}
    if (
        kind == SourceKind.OPCUA
        or kind == SourceKind.TCP
        or (kind == SourceKind.MODBUS and config["transport"] == "tcp")
    ):
        return {**config, "connect_address": address}
    parts = urlsplit(config["url"])
    host = f"[{address}]" if ":" in address else address
    return {**config, "connect_url": parts._replace(netloc=f"{host}:{parts.port}").geturl()}


def check_file_at_run(source: DataSource, path: str | Path) -> None:
    """Before a file is read: refuse one that resolves (through symlinks) outside what the source may read."""
    verdict = check_file(path)
    if verdict.protected:
        raise TargetRefused("path", verdict.protected)
    if verdict.outside and not may_run_outside_rules(source):
        raise TargetRefused("path", f"{verdict.outside} (the file {path} leads there)")


# --- webhooks ---------------------------------------------------------------------------------------


def check_webhook_url(url: str) -> tuple[str, Address]:
    """(host, checked address) of a webhook URL the network rules allow, or TargetRefused."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("webhook_url", f"{url!r} is not an http(s) URL")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetRefused("webhook_url", f"{url!r} has no valid port") from None
    verdict = check_network(parts.hostname, port, field="webhook_url")
    reason = verdict.protected or verdict.outside
    if reason:
        raise TargetRefused("webhook_url", f"webhook refused: {reason}")
    return parts.hostname, verdict.addresses[0]
