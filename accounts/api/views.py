"""API for agents, personal tokens, instrument sharing and "who am I". Thin: parse, call a service, render."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch
from django.http import Http404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import audit, permissions, services
from accounts.api.base import ScopedGenericViewSet, ScopedViewMixin, as_drf_detail, instrument_or_404
from accounts.api.serializers import (
    AgentSerializer,
    ApiTokenSerializer,
    CreatedAgentSerializer,
    CreatedApiTokenSerializer,
    NewAgentTokenSerializer,
    ShareSerializer,
    WhoAmISerializer,
)
from accounts.choices import TokenScope
from accounts.models import Agent, ApiToken
from accounts.principals import AgentPrincipal

NO_STORE = {"Cache-Control": "no-store"}


def _call(service, *args, **kwargs):
    """Run a service, turning Django's validation and permission errors into API answers."""
    try:
        return service(*args, **kwargs)
    except DjangoValidationError as exc:
        raise exceptions.ValidationError(as_drf_detail(exc)) from None
    except DjangoPermissionDenied as exc:
        raise exceptions.PermissionDenied(str(exc)) from None


class AgentViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """Your agents (all of them for administrators). Creating one returns its token, once."""

    queryset = Agent.objects.select_related("owner", "token").order_by("name", "id")
    serializer_class = AgentSerializer
    audited = False  # the services record agent events themselves

    def get_queryset(self):
        visible = permissions.instruments_visible_to(self.request).order_by("slug")
        return super().get_queryset().prefetch_related(Prefetch("instruments", queryset=visible))

    @extend_schema(responses={201: CreatedAgentSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        agent, clear = _call(
            services.create_agent,
            owner=request.user,
            name=data["name"],
            instruments=data.get("instruments", []),
            description=data.get("description", ""),
            expires=data.get("expires"),
            **audit.origin(request),
        )
        body = CreatedAgentSerializer(self.get_queryset().get(pk=agent.pk), context=self.get_serializer_context()).data
        body["token"] = clear
        return Response(body, status=status.HTTP_201_CREATED, headers=NO_STORE)

    @extend_schema(request=None, responses={200: AgentSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the agent's token: it is refused from now on, until the agent is given a new token."""
        agent = self.get_object()
        _call(services.revoke_agent, agent, **audit.origin(request))
        return Response(self.get_serializer(self.get_queryset().get(pk=agent.pk)).data)

    @extend_schema(request=NewAgentTokenSerializer, responses={200: CreatedAgentSerializer})
    @action(detail=True, methods=["post"], url_path="new-token", url_name="new-token")
    def new_token(self, request, pk=None):
        """A new token for the agent, returned once; the current one (revoked or not) stops working at once.
        The agent keeps its name, instruments, sources and health."""
        agent = self.get_object()
        body = NewAgentTokenSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        clear = _call(services.replace_agent_token, agent, **body.validated_data, **audit.origin(request))
        data = CreatedAgentSerializer(self.get_queryset().get(pk=agent.pk), context=self.get_serializer_context()).data
        data["token"] = clear
        return Response(data, headers=NO_STORE)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedGenericViewSet):
    """Your personal API tokens. Create them from a logged-in session; the token is returned once."""

    queryset = ApiToken.objects.filter(agent__isnull=True).select_related("user").order_by("-created", "-id")
    serializer_class = ApiTokenSerializer
    session_only_actions = ("create",)
    audited = False

    @extend_schema(responses={201: CreatedApiTokenSerializer})
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        token, clear = _call(
            services.create_personal_token,
            user=request.user,
            name=data["name"],
            scope=data.get("scope", TokenScope.READ),
            expires=data.get("expires"),
            **audit.origin(request),
        )
        body = CreatedApiTokenSerializer(token, context=self.get_serializer_context()).data
        body["token"] = clear
        return Response(body, status=status.HTTP_201_CREATED, headers=NO_STORE)

    @extend_schema(request=None, responses={200: ApiTokenSerializer})
    @action(detail=True, methods=["post"])
    def revoke(self, request, pk=None):
        """Revoke the token: it is refused from now on."""
        token = self.get_object()
        _call(services.revoke_token, token, **audit.origin(request))
        token.refresh_from_db()
        return Response(self.get_serializer(token).data)


def _principal(kind: str, name: str):
    if kind == "user":
        User = get_user_model()
        return User.objects.filter(**{User.USERNAME_FIELD: name}).first()
    if kind == "group":
        return Group.objects.filter(name=name).first()
    return None


def _share_data(share: services.Share) -> dict:
    return {"kind": share.kind, "name": share.name, "level": share.level}


class InstrumentSharesViewSet(ScopedViewMixin, viewsets.ViewSet):
    """Who else may see an instrument, and how much. Needs the ``share`` level; 404 if you cannot see it."""

    serializer_class = ShareSerializer

    @extend_schema(responses={200: ShareSerializer(many=True)})
    def list(self, request, slug=None):
        instrument = instrument_or_404(request, slug, permissions.SHARE)
        return Response([_share_data(share) for share in services.shares_of(instrument)])

    @extend_schema(request=ShareSerializer, responses={200: ShareSerializer, 201: ShareSerializer})
    def create(self, request, slug=None):
        """Share with a user or group at a level (replacing any level they had)."""
        instrument = instrument_or_404(request, slug, permissions.SHARE)
        serializer = ShareSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        kind, name, level = (serializer.validated_data[k] for k in ("kind", "name", "level"))
        principal = _principal(kind, name)
        if principal is None:
            raise exceptions.ValidationError({"name": [f"There is no {kind} called {name!r}."]})
        had_access = any(s.kind == kind and s.name == name for s in services.shares_of(instrument))
        _call(services.share, instrument, principal, level, **audit.origin(request))
        return Response(
            {"kind": kind, "name": name, "level": level},
            status=status.HTTP_200_OK if had_access else status.HTTP_201_CREATED,
        )

    @extend_schema(responses={204: OpenApiResponse(description="Share removed")})
    def destroy(self, request, slug=None, kind=None, name=None):
        """Stop sharing with that user or group."""
        instrument = instrument_or_404(request, slug, permissions.SHARE)
        principal = _principal(kind, name)
        if principal is None or not _call(services.unshare, instrument, principal, **audit.origin(request)):
            raise Http404("Not shared with them.")
        return Response(status=status.HTTP_204_NO_CONTENT)


class WhoAmIView(ScopedViewMixin, APIView):
    """Who the request is authenticated as. Agents may call it to check their token."""

    agent_access = True

    @extend_schema(responses={200: WhoAmISerializer})
    def get(self, request):
        user, token = permissions.resolve(request)
        data: dict[str, object] = {
            "username": user.get_username(),
            "kind": "agent" if permissions.is_agent(request) else "user",
            "authentication": "token" if token else "session",
            "scope": token.scope if token else None,
            "token_prefix": token.prefix if token else None,
            "expires": token.expires if token else None,
            "administrator": permissions.is_administrator(request),
        }
        if isinstance(user, AgentPrincipal):  # permissions.is_agent(request)
            data["agent"] = user.agent.name
            data["instruments"] = sorted(
                permissions.instruments_for(request, permissions.COLLECT).values_list("slug", flat=True)
            )
        return Response(WhoAmISerializer(data).data)
