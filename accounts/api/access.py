"""The API classes named in ``settings.REST_FRAMEWORK``: token scopes, object levels, visibility, pages.

Kept apart from ``accounts.api.base`` because DRF imports these while ``rest_framework.views`` is still
loading: this module must not import views or viewsets.
"""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework.filters import BaseFilterBackend
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated

from accounts import permissions
from accounts.choices import TokenScope
from accounts.models import ApiToken
from accounts.paging import bound_for, bounded_count
from instruments.models import Instrument

LEVEL_FOR_METHOD = {
    "GET": permissions.VIEW,
    "HEAD": permissions.VIEW,
    "OPTIONS": permissions.VIEW,
    "POST": permissions.CHANGE,
    "PUT": permissions.CHANGE,
    "PATCH": permissions.CHANGE,
    "DELETE": permissions.CHANGE,
}


def required_level(request, view) -> str:
    """The level the current action needs on the object: ``view.action_levels[action]`` or by method."""
    action = getattr(view, "action", None)
    levels = getattr(view, "action_levels", {})
    if action in levels:
        return levels[action]
    return LEVEL_FOR_METHOD.get(request.method, permissions.CHANGE)


class Pagination(LimitOffsetPagination):
    """``?limit=&offset=`` pages whose ``count`` is counted up to a bound (``accounts.paging``): exact up to
    ``DAQBROKER_COUNT_LIMIT`` rows (or to the end of the page asked for, when further), ``null`` beyond
    ("more"; follow ``next`` until it is ``null``). docs/api.md#pagination."""

    default_limit = 100
    max_limit = 1000
    count_exact = True

    def get_count(self, queryset) -> int:
        if not isinstance(queryset, QuerySet) or self.request is None:  # a list (or no request): counted whole
            return super().get_count(queryset)
        counted = bounded_count(queryset, bound_for(self.get_offset(self.request) + (self.limit or 0)))
        self.count_exact = counted.exact
        return counted.value

    def get_paginated_response(self, data):
        response = super().get_paginated_response(data)
        if not self.count_exact:
            response.data["count"] = None
        return response

    def get_paginated_response_schema(self, schema):
        described = super().get_paginated_response_schema(schema)
        described["properties"]["count"] = {
            "type": "integer",
            "nullable": True,
            "example": 123,
            "description": "How many rows the list holds, counted up to the server's bound "
            "(DAQBROKER_COUNT_LIMIT, 1,000 by default, or the end of the page asked for when further); "
            "null when there are more: follow `next` until it is null.",
        }
        return described


class VisibilityFilter(BaseFilterBackend):
    """Narrows any queryset to the rows the requester may see (``accounts.permissions.restrict``)."""

    def filter_queryset(self, request, queryset, view):
        return permissions.restrict(queryset, request, permissions.VIEW)


class TokenScopePermission(BasePermission):
    """What a token may do: read-only tokens read, agent tokens push readings, tokens don't mint tokens."""

    def has_permission(self, request, view) -> bool:
        token = request.auth if isinstance(request.auth, ApiToken) else None
        if token is None:
            return True
        if token.scope == TokenScope.AGENT:
            self.message = "An agent token may only push readings."
            # ``agent_access``: True for the whole view, or the names of the actions agents may call.
            allowed = getattr(view, "agent_access", False)
            if isinstance(allowed, tuple | list | set | frozenset):
                return getattr(view, "action", None) in allowed
            return bool(allowed)
        if getattr(view, "action", None) in getattr(view, "session_only_actions", ()):
            self.message = "Log in to do this; API tokens cannot."
            return False
        if token.scope == TokenScope.READ and request.method not in SAFE_METHODS:
            self.message = "This token is read-only."
            return False
        return True


class ObjectLevelPermission(BasePermission):
    """A visible object needs the action's level on it (its instrument's, or ownership)."""

    message = "You may see this, but not do that to it."

    def has_permission(self, request, view) -> bool:
        if getattr(view, "action", None) == "create" and _view_model(view) is Instrument:
            self.message = "You may not create instruments."
            return permissions.can_create_instruments(request)
        return True

    def has_object_permission(self, request, view, obj) -> bool:
        return permissions.has_perm(request, required_level(request, view), obj)


def _view_model(view):
    queryset = getattr(view, "queryset", None)
    return getattr(queryset, "model", None)


BASE_PERMISSIONS = (IsAuthenticated, TokenScopePermission, ObjectLevelPermission)
