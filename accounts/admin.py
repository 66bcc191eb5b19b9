"""Admin for agents, API tokens and the audit trail.

A new token is shown once, on the page that answers the "Save" that created it; it is not put in a
message (messages are kept in a cookie or the session until displayed) and never shown again: lists and
forms show only the ``dbk_<key id>`` prefix. Tokens are revoked, not edited or deleted, so the record of
who could do what stays.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils import timezone

from accounts import audit, permissions, services
from accounts.admin_health import HEALTH_COLUMNS, HEALTH_DETAILS, AgentHealthAdminMixin
from accounts.admin_mixins import RelatedOnly
from accounts.choices import TokenScope
from accounts.models import Agent, ApiToken, AuditEvent

if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin  # what the mixin extends, for the type checker only
else:
    _AdminBase = object

TOKEN_STATE = ("token_prefix", "active", "expires_at", "last_used_at", "last_seen_from", "revoked")


class TokenStateAdminMixin(_AdminBase):
    """Columns and actions shared by agents and tokens."""

    def _token(self, obj) -> ApiToken | None:
        return obj if isinstance(obj, ApiToken) else getattr(obj, "token", None)

    @admin.display(description="Token")
    def token_prefix(self, obj) -> str:
        token = self._token(obj)
        return f"{token.prefix}…" if token else "-"

    @admin.display(description="Usable", boolean=True)
    def active(self, obj) -> bool:
        token = self._token(obj)
        return bool(token and token.is_usable)

    @admin.display(description="Expires")
    def expires_at(self, obj):
        token = self._token(obj)
        return token.expires if token and token.expires else "never"

    @admin.display(description="Last used")
    def last_used_at(self, obj):
        token = self._token(obj)
        return token.last_used if token and token.last_used else "never"

    @admin.display(description="Last seen from")
    def last_seen_from(self, obj):
        token = self._token(obj)
        return (token.last_address or "-") if token else "-"

    @admin.display(description="Revoked")
    def revoked(self, obj):
        token = self._token(obj)
        return token.revoked_at if token and token.revoked_at else "-"

    def get_queryset(self, request):
        return permissions.restrict(super().get_queryset(request), request.user, permissions.VIEW)

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: the row is the record of what the token could do

    def _owner_field(self, request) -> forms.ModelChoiceField | None:
        if not permissions.is_administrator(request.user):
            return None
        return forms.ModelChoiceField(
            queryset=get_user_model().objects.filter(is_active=True).order_by("username"),
            initial=request.user.pk,
            help_text="Whose access the token carries.",
        )

    def _shown_once(self, request, obj, clear: str, *, replaced: bool = False) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Copy the token now",
            "object": obj,
            "token": clear,
            "replaced": replaced,
            "changelist_url": f"admin:{self.model._meta.app_label}_{self.model._meta.model_name}_changelist",
        }
        response = TemplateResponse(request, "admin/accounts/token_created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def response_add(self, request, obj, post_url_continue=None):
        clear = getattr(request, "_daqbroker_new_token", None)
        if clear is None:
            return super().response_add(request, obj, post_url_continue)
        return self._shown_once(request, obj, clear)


class AgentForm(forms.ModelForm):
    expires = forms.DateTimeField(
        required=False, help_text="Empty: never expires. For example 2027-12-31 23:59.", label="Token expires"
    )
    default_owner = None  # set per request by AgentAdmin.get_form

    class Meta:
        model = Agent
        fields = ["name", "owner", "instruments", "description"]

    def clean(self):
        cleaned = super().clean()
        assert cleaned is not None  # a ModelForm's clean() returns its cleaned_data
        if self.instance.pk is None:
            owner = cleaned.get("owner") or self.default_owner
            if Agent.objects.filter(owner=owner, name=cleaned.get("name")).exists():
                self.add_error("name", f"{owner} already has an agent with this name.")
            _check_future(self, cleaned.get("expires"))
        return cleaned


def _check_future(form, expires) -> None:
    if expires is not None and expires <= timezone.now():
        form.add_error("expires", "The expiry must be in the future.")


@admin.register(Agent)
class AgentAdmin(AgentHealthAdminMixin, TokenStateAdminMixin, admin.ModelAdmin):
    form = AgentForm
    list_display = ("name", "owner", "instrument_list", *HEALTH_COLUMNS, *TOKEN_STATE, "created")
    list_filter = (("owner", RelatedOnly),)
    search_fields = ("name", "description", "owner__username", "token__key_id")
    list_select_related = ("owner", "token", "health")
    actions = ("revoke_selected", "new_token")
    filter_horizontal = ("instruments",)
    readonly_fields = (*TOKEN_STATE, "created")

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("instruments")

    @admin.display(description="May push to")
    def instrument_list(self, agent: Agent) -> str:
        return ", ".join(sorted(i.slug for i in agent.instruments.all())) or "-"

    def get_fields(self, request, obj=None):
        if obj is None:
            owner = ["owner"] if permissions.is_administrator(request.user) else []
            return ["name", *owner, "instruments", "description", "expires"]
        return ["name", "owner", "instruments", "description", *HEALTH_DETAILS, *TOKEN_STATE, "created"]

    def get_readonly_fields(self, request, obj=None):
        return (*HEALTH_DETAILS, *TOKEN_STATE, "created", "owner") if obj is not None else ()

    def get_form(self, request, obj=None, change=False, **kwargs):
        # The form class is a subclass of AgentForm (ModelAdmin.get_form builds it from self.form).
        form = cast(type[AgentForm], super().get_form(request, obj, change=change, **kwargs))
        owner = obj.owner if obj is not None else request.user
        if "instruments" in form.base_fields:
            instruments = cast(forms.ModelMultipleChoiceField, form.base_fields["instruments"])
            instruments.queryset = permissions.instruments_for(owner, permissions.COLLECT)
        if obj is None and "owner" in form.base_fields:
            owner_field = self._owner_field(request)
            assert owner_field is not None  # only administrators have the owner field (get_fields)
            form.base_fields["owner"] = owner_field
        form.default_owner = request.user
        return form

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        agent, clear = services.create_agent(
            owner=form.cleaned_data.get("owner") or request.user,
            name=form.cleaned_data["name"],
            instruments=form.cleaned_data.get("instruments", []),
            description=form.cleaned_data.get("description", ""),
            expires=form.cleaned_data.get("expires"),
            **audit.origin(request),
        )
        obj.pk, obj.owner, obj.created = agent.pk, agent.owner, agent.created
        obj._state.adding, obj._state.db = False, agent._state.db
        request._daqbroker_new_token = clear

    def save_related(self, request, form, formsets, change):
        if change:
            super().save_related(request, form, formsets, change)  # the service already set the instruments

    @admin.action(description="Revoke the selected agents' tokens")
    def revoke_selected(self, request, queryset):
        count = sum(services.revoke_agent(agent, **audit.origin(request)) for agent in queryset)
        self.message_user(request, f"{count} agent(s) revoked.", messages.SUCCESS)

    @admin.action(description="Give the selected agent a new token (its current token stops working)")
    def new_token(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one agent to give a new token.", messages.ERROR)
            return None
        agent = queryset.get()
        try:
            clear = services.replace_agent_token(agent, **audit.origin(request))
        except PermissionDenied as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return None
        return self._shown_once(request, agent, clear, replaced=True)


class ApiTokenForm(forms.ModelForm):
    scope = forms.ChoiceField(
        choices=[(TokenScope.READ, TokenScope.READ.label), (TokenScope.READ_WRITE, TokenScope.READ_WRITE.label)]
    )

    class Meta:
        model = ApiToken
        fields = ["name", "user", "scope", "expires"]

    def clean(self):
        cleaned = super().clean()
        assert cleaned is not None  # a ModelForm's clean() returns its cleaned_data
        _check_future(self, cleaned.get("expires"))
        return cleaned


@admin.register(ApiToken)
class ApiTokenAdmin(TokenStateAdminMixin, admin.ModelAdmin):
    """Personal tokens are created here; agents' tokens are listed here and created with their agent."""

    form = ApiTokenForm
    list_display = ("name", "user", "scope", "agent", *TOKEN_STATE, "created")
    list_filter = ("scope", ("user", RelatedOnly))
    search_fields = ("name", "key_id", "user__username", "agent__name")
    list_select_related = ("user", "agent")
    actions = ("revoke_selected",)

    def get_fields(self, request, obj=None):
        if obj is None:
            user = ["user"] if permissions.is_administrator(request.user) else []
            return ["name", *user, "scope", "expires"]
        return ["name", "user", "scope", "agent", *TOKEN_STATE, "created"]

    def get_readonly_fields(self, request, obj=None):
        return ("name", "user", "scope", "agent", *TOKEN_STATE, "created") if obj is not None else ()

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        if obj is None and "user" in form.base_fields:
            owner_field = self._owner_field(request)
            assert owner_field is not None  # only administrators have the user field (get_fields)
            form.base_fields["user"] = owner_field
        return form

    def has_change_permission(self, request, obj=None) -> bool:
        return False if obj is not None else super().has_change_permission(request, obj)

    def save_model(self, request, obj, form, change):
        token, clear = services.create_personal_token(
            user=form.cleaned_data.get("user") or request.user,
            name=form.cleaned_data["name"],
            scope=form.cleaned_data["scope"],
            expires=form.cleaned_data.get("expires"),
            **audit.origin(request),
        )
        obj.pk, obj.key_id, obj.user, obj.created = token.pk, token.key_id, token.user, token.created
        obj._state.adding, obj._state.db = False, token._state.db
        request._daqbroker_new_token = clear

    @admin.action(description="Revoke the selected tokens")
    def revoke_selected(self, request, queryset):
        count = sum(services.revoke_token(token, **audit.origin(request)) for token in queryset)
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail: readable by Administrators, changeable by nobody."""

    list_display = ("at", "actor_label", "action", "object_type", "object_repr", "address")
    list_filter = ("action", "object_type")
    search_fields = ("actor_label", "object_repr", "object_id", "address")
    date_hierarchy = "at"
    readonly_fields = (
        "at",
        "actor",
        "actor_label",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "changes",
        "address",
    )

    def get_queryset(self, request):
        return permissions.restrict(super().get_queryset(request), request.user, permissions.VIEW)

    def has_view_permission(self, request, obj=None) -> bool:
        return permissions.is_administrator(request.user)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        return {}
