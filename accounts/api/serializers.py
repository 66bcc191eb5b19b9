from __future__ import annotations

from rest_framework import serializers

from accounts import permissions
from accounts.api.base import PermittedSlugRelatedField
from accounts.choices import ShareLevel, TokenScope
from accounts.models import Agent, ApiToken
from instruments.models import Instrument


class _TokenStateMixin(serializers.Serializer):
    token_prefix = serializers.SerializerMethodField(help_text="dbk_ and the key id: recognises, never grants.")
    active = serializers.SerializerMethodField()

    def _token(self, obj) -> ApiToken | None:
        return obj if isinstance(obj, ApiToken) else getattr(obj, "token", None)

    def get_token_prefix(self, obj) -> str | None:
        token = self._token(obj)
        return token.prefix if token else None

    def get_active(self, obj) -> bool:
        token = self._token(obj)
        return bool(token and token.is_usable)


class AgentSerializer(_TokenStateMixin, serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.get_username", read_only=True)
    instruments = PermittedSlugRelatedField(
        many=True,
        required=False,
        level=permissions.COLLECT,
        queryset=Instrument.objects.all(),
        help_text="Slugs of the instruments the agent may push to (each one you may collect to).",
    )
    expires = serializers.DateTimeField(required=False, allow_null=True, help_text="Empty: never expires.")
    revoked_at = serializers.DateTimeField(read_only=True, allow_null=True)
    last_used = serializers.DateTimeField(read_only=True, allow_null=True)
    last_address = serializers.IPAddressField(read_only=True, allow_null=True)

    class Meta:
        model = Agent
        fields = [
            "id",
            "name",
            "description",
            "owner",
            "instruments",
            "token_prefix",
            "active",
            "created",
            "expires",
            "revoked_at",
            "last_used",
            "last_address",
        ]
        read_only_fields = ["id", "created"]
        # Uniqueness per owner is checked by the service (the owner is not a field of the request).
        validators: list[object] = []


class ApiTokenSerializer(_TokenStateMixin, serializers.ModelSerializer):
    user = serializers.CharField(source="user.get_username", read_only=True)
    scope = serializers.ChoiceField(
        choices=[(TokenScope.READ, TokenScope.READ.label), (TokenScope.READ_WRITE, TokenScope.READ_WRITE.label)],
        default=TokenScope.READ,
    )

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "user",
            "scope",
            "token_prefix",
            "active",
            "created",
            "expires",
            "revoked_at",
            "last_used",
            "last_address",
        ]
        read_only_fields = ["id", "created", "revoked_at", "last_used", "last_address"]


class CreatedTokenMixin(serializers.Serializer):
    token = serializers.CharField(read_only=True, help_text="The token, shown this once. Store it now.")


class CreatedAgentSerializer(CreatedTokenMixin, AgentSerializer):
    class Meta(AgentSerializer.Meta):
        fields = [*AgentSerializer.Meta.fields, "token"]


class NewAgentTokenSerializer(serializers.Serializer):
    expires = serializers.DateTimeField(
        required=False,
        allow_null=True,
        help_text="The new token's expiry (null: never). Left out: the current expiry, if still in the future.",
    )


class CreatedApiTokenSerializer(CreatedTokenMixin, ApiTokenSerializer):
    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class ShareSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=[("user", "user"), ("group", "group")])
    name = serializers.CharField(max_length=150, help_text="The user's username or the group's name.")
    level = serializers.ChoiceField(choices=ShareLevel.choices)


class WhoAmISerializer(serializers.Serializer):
    username = serializers.CharField()
    kind = serializers.ChoiceField(choices=[("user", "user"), ("agent", "agent")])
    authentication = serializers.ChoiceField(choices=[("session", "session"), ("token", "token")])
    scope = serializers.CharField(allow_null=True)
    token_prefix = serializers.CharField(allow_null=True)
    expires = serializers.DateTimeField(allow_null=True)
    administrator = serializers.BooleanField()
    agent = serializers.CharField(required=False)
    instruments = serializers.ListField(child=serializers.CharField(), required=False)
