"""THE permission module: who may see, collect to, change and share which instruments and run lists.

Every surface asks here: the DRF filter backend and base viewset (``accounts.api.base``), the page mixin
(``accounts.mixins``), the admin (``accounts.admin_mixins``), the sharing and token services, and the
ingest API (``collectable_instrument_ids``). Nothing else decides visibility.

The rules:

* An instrument's **owner** has every level on it. **Administrators** (superusers and members of the
  Administrators group) have every level on every instrument.
* Other users hold levels through guardian object permissions, granted to them or to one of their
  groups, in the direct tables ``InstrumentUserPermission`` / ``InstrumentGroupPermission``. The levels
  form a ladder, ``view < collect < change < share``, and a permission on a rung implies every rung
  below it ("change implies view") *at query time*, so a grant made with guardian's own shortcuts obeys
  the same rule as one made through ``accounts.services.share``.
* Global (model) permissions never open an instrument: they only let Operators into the admin.
* Channels, data sources, logbook entries, readings, quarantine, alarms and exports inherit from their
  instrument (``restrict`` follows the path to it). Agents and tokens belong to their owner. A row
  bound to no instrument at all (an alarm rule for "any instrument") is for Administrators only.
* An **agent** (``AgentPrincipal``) may only ``collect``, only to the instruments it is scoped to, and
  only while its owner may collect to them too. It sees nothing.
* A request made with a **read-only token** may only ``view``.
* **Run lists** follow the same rules with their own owner and grants (``RunListUserPermission`` /
  ``RunListGroupPermission``, the same ladder; ``collect`` there is starting and stopping runs). Their
  columns, runs and comments inherit from them. An agent may ``collect`` (start and stop runs) on a run
  list that concerns an instrument it is scoped to, while its owner may collect on the run list too.

Every function takes ``who``: a user, an ``AgentPrincipal``, or a request (Django's or DRF's, whose
token scope is then honoured). Querysets cost one query, plus one (cached on the user object) to learn
whether the user is an Administrator, and for anyone else ``restrict`` reads the instruments she may see
first when they are few (``_gate``: at most LISTED_UP_TO + 1 ids), whatever the number of instruments and
grants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeGuard

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connections
from django.db.models import Model, Q, QuerySet
from django.db.models.expressions import RawSQL
from django.http import HttpRequest
from rest_framework.request import Request

from accounts.choices import ShareLevel, TokenScope
from accounts.models import (
    ApiToken,
    InstrumentGroupPermission,
    InstrumentUserPermission,
    RunListGroupPermission,
    RunListUserPermission,
)
from accounts.principals import AgentPrincipal, Principal, Who
from accounts.roles import ADMINISTRATORS
from instruments.models import Instrument, RunList

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User

LEVELS: tuple[str, ...] = tuple(ShareLevel.values)  # lowest first
VIEW, COLLECT, CHANGE, SHARE = LEVELS

# How a model reaches its instrument. Models with an ``instrument`` foreign key, or a ``channel`` or
# ``source`` one, are found by ``instrument_paths``; list here only the ones that need more than that.
EXTRA_INSTRUMENT_PATHS: dict[str, tuple[str, ...]] = {
    # A quarantined reading may name its channel, its source, or both.
    "collection.rejectedsample": ("channel__instrument", "source__instrument"),
}
# Models that belong to a user rather than to an instrument: model label -> owner field.
OWNER_FIELDS: dict[str, str] = {"accounts.agent": "owner", "accounts.apitoken": "user"}
# Models that belong to a run list: model label -> lookup to it.
RUN_LIST_PATHS: dict[str, str] = {
    "instruments.runcolumn": "run_list",
    "instruments.run": "run_list",
    "instruments.runcomment": "run__run_list",
}
# Models only Administrators may read.
ADMINISTRATORS_ONLY = {"accounts.auditevent"}


def codenames_implying(level: str, model_name: str = "instrument") -> list[str]:
    """The codenames that grant ``level`` on an instrument (or a ``runlist``): its own and every higher rung's."""
    _check_level(level)
    return [f"{rung}_{model_name}" for rung in LEVELS[LEVELS.index(level) :]]


def levels_up_to(level: str) -> list[str]:
    """The levels ``level`` includes: itself and every lower rung."""
    _check_level(level)
    return list(LEVELS[: LEVELS.index(level) + 1])


def _check_level(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"{level!r} is not a level; use one of {', '.join(LEVELS)}")


# --- who is asking --------------------------------------------------------------------------------


def resolve(who: Who) -> tuple[Principal | AnonymousUser, ApiToken | None]:
    """(user or AgentPrincipal or AnonymousUser, the API token of the request if any)."""
    user: Principal | AnonymousUser
    if isinstance(who, HttpRequest | Request):  # a Django HttpRequest or a DRF Request
        auth = getattr(who, "auth", None)
        user, token = who.user, auth if isinstance(auth, ApiToken) else None
    else:
        user, token = who, None
    if isinstance(user, AgentPrincipal):
        token = user.token
    return user, token


def is_authenticated(user: Principal | AnonymousUser | None) -> TypeGuard[Principal]:
    return bool(user is not None and getattr(user, "is_authenticated", False) and getattr(user, "is_active", False))


def is_agent(who: Who) -> bool:
    return isinstance(resolve(who)[0], AgentPrincipal)


def is_administrator(who: Who) -> bool:
    """Superusers and members of the Administrators group (never an agent, never a read-only request)."""
    user, _ = resolve(who)
    if not is_authenticated(user) or isinstance(user, AgentPrincipal):
        return False
    if user.is_superuser:
        return True
    cached = getattr(user, "_daqbroker_is_administrator", None)
    if cached is None:
        cached = user.groups.filter(name=ADMINISTRATORS).exists()
        setattr(user, "_daqbroker_is_administrator", cached)  # noqa: B010 -- a cache the User type does not declare
    return cached


def _token_allows(token: ApiToken | None, level: str) -> bool:
    return token is None or token.scope != TokenScope.READ or level == VIEW


# --- instruments ----------------------------------------------------------------------------------


def _grant_sources(user: User, level: str) -> tuple[QuerySet, QuerySet, QuerySet]:
    """Where ``user``'s instruments at ``level`` come from: the ones she owns, her grants, her groups' grants
    (the ids of instruments in the first column of each)."""
    codenames = codenames_implying(level)
    owned = Instrument.objects.filter(owner=user).values("pk")
    direct = InstrumentUserPermission.objects.filter(user=user, permission__codename__in=codenames)
    via_group = InstrumentGroupPermission.objects.filter(group__user=user, permission__codename__in=codenames)
    return owned, direct.values("content_object_id"), via_group.values("content_object_id")


def _grant_filter(user: User, level: str, path: str = "") -> Q:
    """Instruments ``user`` owns or holds ``level`` (or higher) on, directly or through a group; with a
    ``path``, the rows whose instrument at the end of that path is one of them."""
    _, direct, via_group = _grant_sources(user, level)
    prefix = f"{path}__" if path else ""
    return Q(**{f"{prefix}owner": user}) | Q(**{f"{prefix}pk__in": direct}) | Q(**{f"{prefix}pk__in": via_group})


# How the gate is written for a user who is not an Administrator, chosen by how many instruments she may see
# (docs/performance.md#the-gates-shape). Up to LISTED_UP_TO: their ids, so that the planner knows how few
# they are (with a subquery PostgreSQL guesses three quarters of the table and reads 100,000 channels in page
# order to fill a page with her 5 instruments' channels). Beyond: each grant table tested row by row
# (``_grant_filter`` on the rows' own instrument column, each subquery hashed or materialised once), rather
# than ``instrument IN (the instruments she may see)``, through which SQLite fetched and sorted every row she
# may see for a page and which was as fast or slower on PostgreSQL and MariaDB. The same rows either way.
LISTED_UP_TO = 100


def _few_instruments(user: User, level: str, using: str) -> list[int] | None:
    """The ids of the instruments ``user`` has ``level`` on when they are at most LISTED_UP_TO, else None:
    one statement reading at most LISTED_UP_TO + 1 rows of each source (owned, granted, granted to a group),
    each through its index, whatever she may see (evaluating the gate itself would hash all her grants)."""
    parts, params = [], []
    for index, source in enumerate(_grant_sources(user, level)):
        sql, source_params = source.order_by()[: LISTED_UP_TO + 1].query.get_compiler(using).as_sql()
        parts.append(f"SELECT {index} AS source, look_{index}.* FROM ({sql}) look_{index}")
        params.extend(source_params)
    with connections[using].cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        rows = cursor.fetchall()
    if any(sum(1 for source, _ in rows if source == index) > LISTED_UP_TO for index in range(3)):
        return None
    ids = {pk for _, pk in rows}
    return sorted(ids) if len(ids) <= LISTED_UP_TO else None


def _gate(paths: tuple[str, ...], user: User, level: str, using: str) -> Q:
    few = _few_instruments(user, level, using)
    condition = Q()
    for path in paths:
        key = f"{path}__pk__in" if path else "pk__in"
        condition |= Q(**{key: few}) if few is not None else _grant_filter(user, level, path)
    return condition


def instruments_for(who: Who, level: str = VIEW) -> QuerySet[Instrument]:
    """The instruments on which ``who`` has ``level``, as a lazy queryset of one query."""
    _check_level(level)
    user, token = resolve(who)
    instruments = Instrument.objects.all()
    if not is_authenticated(user) or not _token_allows(token, level):
        return instruments.none()
    if isinstance(user, AgentPrincipal):
        if level != COLLECT:
            return instruments.none()
        owner_may = instruments_for(user.owner, COLLECT)
        return instruments.filter(agents=user.agent, pk__in=owner_may.values("pk"))
    if is_administrator(user):
        return instruments
    return instruments.filter(_grant_filter(user, level))


def instruments_visible_to(who: Who) -> QuerySet[Instrument]:
    return instruments_for(who, VIEW)


def collectable_instruments(who: Who, using: str = "default") -> RawSQL | None:
    """``collectable_instrument_ids`` as a subquery (``instrument_id__in=`` it costs no query of its own:
    the ingest endpoint filters its one channel look-up by it); None means all.

    The database evaluates it on every use, so a share taken away applies to the next request. Only its
    SQL text is kept per process: it depends on who asks (user, agent, token scope, administrator or not),
    never on data, and building it through the ORM costs more than the rest of a small ingest request."""
    user, token = resolve(who)
    if not isinstance(user, AgentPrincipal) and is_administrator(who):
        return None
    owner = user.owner if isinstance(user, AgentPrincipal) else user
    key = (
        using,
        type(user).__name__,
        getattr(owner, "pk", None),
        user.agent.pk if isinstance(user, AgentPrincipal) else None,
        token.scope if token is not None else None,
        is_authenticated(user),
        is_authenticated(owner) and is_administrator(owner),
    )
    compiled = _compiled_subqueries.get(key)
    if compiled is None:
        query = instruments_for(who, COLLECT).order_by().values("pk").query  # an IN list: no order to keep
        try:
            compiled = query.get_compiler(using).as_sql()
        except EmptyResultSet:  # none at all (a read-only token, say)
            compiled = (f"SELECT id FROM {Instrument._meta.db_table} WHERE 1 = 0", ())
        if len(_compiled_subqueries) >= 10_000:
            _compiled_subqueries.clear()
        _compiled_subqueries[key] = compiled
    return RawSQL(compiled[0], compiled[1])  # noqa: S611 -- SQL compiled by the ORM from our own query, parameters apart


_compiled_subqueries: dict[tuple, tuple[str, tuple]] = {}


def collectable_instrument_ids(who: Who) -> set[int] | None:
    """For ``ingest_samples(writable_instruments=...)``: the ids ``who`` may push to; None means all."""
    user, _ = resolve(who)
    if not isinstance(user, AgentPrincipal) and is_administrator(who):
        return None
    return set(instruments_for(who, COLLECT).values_list("pk", flat=True))


def has_instrument_perm(who: Who, level: str, instrument: Instrument) -> bool:
    _check_level(level)
    user, token = resolve(who)
    if not is_authenticated(user) or not _token_allows(token, level):
        return False
    if isinstance(user, AgentPrincipal):
        return level == COLLECT and instruments_for(user, COLLECT).filter(pk=instrument.pk).exists()
    if is_administrator(user) or instrument.owner_id == user.pk:
        return True
    return Instrument.objects.filter(pk=instrument.pk).filter(_grant_filter(user, level)).exists()


def level_on(who: Who, instrument: Instrument | RunList) -> str | None:
    """The highest level ``who`` has on ``instrument`` (or a run list), or None."""
    user, token = resolve(who)
    if not is_authenticated(user):
        return None
    if isinstance(user, AgentPrincipal):
        return COLLECT if has_perm(user, COLLECT, instrument) else None
    if is_administrator(user) or instrument.owner_id == user.pk:
        level = SHARE
    else:
        user_grants, group_grants, suffix = grant_models(instrument)
        codenames = set(
            user_grants.objects.filter(user=user, content_object=instrument).values_list(
                "permission__codename", flat=True
            )
        ) | set(
            group_grants.objects.filter(group__user=user, content_object=instrument).values_list(
                "permission__codename", flat=True
            )
        )
        held = [rung for rung in LEVELS if f"{rung}_{suffix}" in codenames]
        if not held:
            return None
        level = held[-1]
    return VIEW if not _token_allows(token, level) else level


def can_create_instruments(who: Who) -> bool:
    user, token = resolve(who)
    if not is_authenticated(user) or isinstance(user, AgentPrincipal) or not _token_allows(token, CHANGE):
        return False
    return is_administrator(user) or user.has_perm("instruments.add_instrument")


# --- run lists -----------------------------------------------------------------------------------


def grant_models(obj: Instrument | RunList) -> tuple[Any, Any, str]:
    """(user grants model, group grants model, codename suffix) for an instrument or a run list."""
    if isinstance(obj, RunList):
        return RunListUserPermission, RunListGroupPermission, "runlist"
    return InstrumentUserPermission, InstrumentGroupPermission, "instrument"


def _run_list_grant_filter(user: User, level: str) -> Q:
    codenames = codenames_implying(level, "runlist")
    direct = RunListUserPermission.objects.filter(user=user, permission__codename__in=codenames)
    via_group = RunListGroupPermission.objects.filter(group__user=user, permission__codename__in=codenames)
    return (
        Q(owner=user) | Q(pk__in=direct.values("content_object_id")) | Q(pk__in=via_group.values("content_object_id"))
    )


def run_lists_for(who: Who, level: str = VIEW) -> QuerySet[RunList]:
    """The run lists on which ``who`` has ``level``, as a lazy queryset of one query."""
    _check_level(level)
    user, token = resolve(who)
    run_lists = RunList.objects.all()
    if not is_authenticated(user) or not _token_allows(token, level):
        return run_lists.none()
    if isinstance(user, AgentPrincipal):
        if level != COLLECT:
            return run_lists.none()
        owner_may = run_lists_for(user.owner, COLLECT)
        concerning = RunList.objects.filter(instruments__in=instruments_for(user, COLLECT).values("pk"))
        return run_lists.filter(pk__in=owner_may.values("pk")).filter(pk__in=concerning.values("pk"))
    if is_administrator(user):
        return run_lists
    return run_lists.filter(_run_list_grant_filter(user, level))


def has_run_list_perm(who: Who, level: str, run_list: RunList) -> bool:
    _check_level(level)
    user, token = resolve(who)
    if not is_authenticated(user) or not _token_allows(token, level):
        return False
    if isinstance(user, AgentPrincipal):
        return level == COLLECT and run_lists_for(user, COLLECT).filter(pk=run_list.pk).exists()
    if is_administrator(user) or run_list.owner_id == user.pk:
        return True
    return RunList.objects.filter(pk=run_list.pk).filter(_run_list_grant_filter(user, level)).exists()


def can_create_run_lists(who: Who) -> bool:
    """Any signed-in user (not an agent, not a read-only token) may start a run list of their own."""
    user, token = resolve(who)
    return is_authenticated(user) and not isinstance(user, AgentPrincipal) and _token_allows(token, CHANGE)


# --- any model ------------------------------------------------------------------------------------


def _label(model) -> str:
    return model._meta.label_lower


def instrument_paths(model) -> tuple[str, ...]:
    """Lookups from ``model`` to its instrument ("" for Instrument itself)."""
    if model is Instrument:
        return ("",)
    label = _label(model)
    if label in EXTRA_INSTRUMENT_PATHS:
        return EXTRA_INSTRUMENT_PATHS[label]
    names = {f.name: f for f in model._meta.get_fields() if getattr(f, "many_to_one", False)}
    if "instrument" in names and names["instrument"].related_model is Instrument:
        return ("instrument",)
    for name, next_path in (("channel", "instrument"), ("source", "instrument")):
        if name in names:
            return (f"{name}__{next_path}",)
    raise ImproperlyConfigured(
        f"accounts.permissions does not know how {model._meta.label} relates to an instrument: "
        "add it to EXTRA_INSTRUMENT_PATHS or OWNER_FIELDS"
    )


def restrict(queryset: QuerySet, who: Who, level: str = VIEW) -> QuerySet:
    """``queryset`` narrowed to the rows ``who`` has ``level`` on. Unknown models raise (fail closed)."""
    _check_level(level)
    model = queryset.model
    label = _label(model)
    user, token = resolve(who)
    if label in ADMINISTRATORS_ONLY:
        return queryset if is_administrator(who) and _token_allows(token, level) else queryset.none()
    if label in OWNER_FIELDS:
        if not is_authenticated(user) or isinstance(user, AgentPrincipal) or not _token_allows(token, level):
            return queryset.none()
        return queryset if is_administrator(user) else queryset.filter(**{OWNER_FIELDS[label]: user})
    if model is RunList:
        if is_administrator(who) and _token_allows(token, level):
            return queryset
        return queryset.filter(pk__in=run_lists_for(who, level).values("pk"))
    if label in RUN_LIST_PATHS:
        if is_administrator(who) and _token_allows(token, level):
            return queryset
        return queryset.filter(**{f"{RUN_LIST_PATHS[label]}__in": run_lists_for(who, level).values("pk")})
    paths = instrument_paths(model)
    if paths == ("",):
        if not is_authenticated(user) or not _token_allows(token, level):
            return queryset.none()
        if isinstance(user, AgentPrincipal):
            return queryset.filter(pk__in=instruments_for(who, level).values("pk"))
        if is_administrator(user):
            return queryset
        return queryset.filter(_gate(paths, user, level, queryset.db))
    allowed = instruments_for(who, level)
    if is_administrator(who) and _token_allows(token, level):
        return queryset
    if is_authenticated(user) and not isinstance(user, AgentPrincipal) and _token_allows(token, level):
        return queryset.filter(_gate(paths, user, level, queryset.db))
    condition = Q()
    for path in paths:  # an agent's instruments, or none at all (``allowed`` is then empty)
        condition |= Q(**{f"{path}__in": allowed.values("pk")})
    return queryset.filter(condition)


def instrument_of(obj: Model) -> list[Instrument]:
    """The instrument(s) an object belongs to, following ``instrument_paths``."""
    found: list[Instrument] = []
    for path in instrument_paths(type(obj)):
        target: Any = obj  # an Instrument at the end of the path
        for step in path.split("__") if path else ():
            target = getattr(target, step, None)
            if target is None:
                break
        if target is not None:
            found.append(target)
    return found


def has_perm(who: Who, level: str, obj: Model) -> bool:
    """Whether ``who`` has ``level`` on ``obj`` (an instrument, anything belonging to one, or an owned object)."""
    _check_level(level)
    label = _label(type(obj))
    user, token = resolve(who)
    if label in ADMINISTRATORS_ONLY:
        return is_administrator(who) and _token_allows(token, level)
    if label in OWNER_FIELDS:
        if not is_authenticated(user) or isinstance(user, AgentPrincipal) or not _token_allows(token, level):
            return False
        return is_administrator(user) or getattr(obj, f"{OWNER_FIELDS[label]}_id") == user.pk
    if isinstance(obj, RunList):
        return has_run_list_perm(who, level, obj)
    if label in RUN_LIST_PATHS:
        run_list: Any = obj
        for step in RUN_LIST_PATHS[label].split("__"):
            run_list = getattr(run_list, step)
        return has_run_list_perm(who, level, run_list)
    instruments = instrument_of(obj)
    if not instruments:
        # Bound to no instrument: an alarm rule or spike check for "any instrument" reaches every
        # instrument's channels, so only Administrators hold it (``restrict`` leaves such rows out for
        # everyone else, since their empty instrument is in nobody's set).
        return is_administrator(who) and _token_allows(token, level)
    return any(has_instrument_perm(who, level, instrument) for instrument in instruments)
