"""The ``request.user`` of a request authenticated by an agent token.

It is deliberately not a ``User``: code that forgets to ask ``accounts.permissions`` and checks
``request.user.has_perm`` or ``is_staff`` gets "no" instead of the owner's rights, and storing it in a
user foreign key fails loudly. Its owner's rights still bound what it may do (see the permission module).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User
    from django.http import HttpRequest
    from rest_framework.request import Request

    from accounts.models import Agent, ApiToken

# Who acts: a signed-in user or an agent. Type hints use this, never ``object``.
Principal: TypeAlias = "User | AgentPrincipal"
# What ``accounts.permissions`` accepts as ``who``: a principal, the anonymous user, or a request carrying one.
Who: TypeAlias = "User | AgentPrincipal | AnonymousUser | HttpRequest | Request"


@dataclass(eq=False)
class AgentPrincipal:
    agent: Agent
    token: ApiToken
    owner: User = field(init=False)

    # What Django and DRF ask of a user.
    pk = None
    id = None
    is_active = True
    is_anonymous = False
    is_authenticated = True
    is_staff = False
    is_superuser = False
    is_agent = True

    def __post_init__(self) -> None:
        # The token's user is the agent's owner (accounts.services.create_agent), already loaded.
        self.owner = self.token.user

    @property
    def username(self) -> str:
        return f"agent:{self.agent.name}"

    def get_username(self) -> str:
        return self.username

    def __str__(self) -> str:
        return f"agent {self.agent.name} of {self.owner.get_username()}"

    def has_perm(self, perm, obj=None) -> bool:
        return False

    def has_perms(self, perm_list, obj=None) -> bool:
        return False

    def has_module_perms(self, module) -> bool:
        return False

    def get_all_permissions(self, obj=None) -> set:
        return set()
