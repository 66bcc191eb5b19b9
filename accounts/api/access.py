"""The API classes named in ``settings.REST_FRAMEWORK``: token scopes, object levels, visibility, pages.

Kept apart from ``accounts.api.base`` because DRF imports these while ``rest_framework.views`` is still
loading: this module must not import views or viewsets.
"""

from __future__ import annotations

from rest_framework.filters import BaseFilterBackend
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission, IsAuthenticated

from accounts import permissions
from accounts.choices import TokenScope
from accounts.models import ApiToken
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
    default_limit = 100
    max_limit = 1000


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
