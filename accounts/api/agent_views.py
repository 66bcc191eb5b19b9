"""The two endpoints only agents call, besides ingest and whoami: their central configuration and heartbeat.

``GET /api/v1/agent/config/`` answers with an ``ETag``; a poll sending it back in ``If-None-Match`` gets
``304 Not Modified`` (and no body) until the configuration changes. ``POST /api/v1/agent/heartbeat/``
stores the agent's health (shown in the admin's agent list) and answers with the server's time, from
which the agent computes its clock offset. Users and personal tokens get 403: these describe an agent.
"""

from __future__ import annotations

from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import agent_samples, agents, permissions
from accounts.api.base import ScopedViewMixin
from accounts.audit import client_address
from accounts.models import AgentHealth


class AgentChannelSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    slug = serializers.CharField()
    source_field = serializers.CharField(allow_blank=True)
    kind = serializers.CharField()


class AgentSourceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    instrument = serializers.CharField()
    interval_seconds = serializers.IntegerField()
    collect = serializers.DictField(help_text="What to read and how to parse it: kind (file, serial, tcp, command)…")
    channels = AgentChannelSerializer(many=True)


class SkippedSourceSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    error = serializers.CharField()


class SampleRequestSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    path = serializers.CharField(help_text="the folder")
    pattern = serializers.CharField()
    file = serializers.CharField(allow_blank=True, help_text="or this file in the folder")
    encoding = serializers.CharField()
    max_lines = serializers.IntegerField()
    max_bytes = serializers.IntegerField()


class AgentConfigSerializer(serializers.Serializer):
    version = serializers.CharField(help_text="Changes whenever anything below changes; also the ETag.")
    agent = serializers.CharField()
    sources = AgentSourceSerializer(many=True)
    skipped = SkippedSourceSerializer(many=True, help_text="Sources whose saved settings no longer validate.")
    sample_requests = SampleRequestSerializer(
        many=True,
        help_text="Files whose first lines the server asks for (the source preview); read inside allowed_paths.",
    )


class RefusedSourceSerializer(serializers.Serializer):
    id = serializers.IntegerField(min_value=1, max_value=2**62)
    name = serializers.CharField(max_length=400, allow_blank=True, required=False, default="")
    reason = serializers.CharField(max_length=1000)


class SerialPortSerializer(serializers.Serializer):
    device = serializers.CharField(max_length=255)
    description = serializers.CharField(max_length=255, allow_blank=True, required=False, default="")


class NodeHealthSerializer(serializers.Serializer):
    """The agent machine's figures (``daqbroker_agent.health``); each may be null (not known there)."""

    cpu_load = serializers.FloatField(
        required=False, allow_null=True, min_value=0, max_value=1e6, help_text="1-minute load average per CPU."
    )
    memory_available_bytes = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**62)
    memory_used_percent = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=100)
    spool_disk_free_bytes = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**62)
    spool_disk_used_percent = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=100)
    spool_depth = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=2**62)
    spool_oldest_age_seconds = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1e11)


class HeartbeatSerializer(serializers.Serializer):
    version = serializers.CharField(max_length=40, allow_blank=True, required=False, default="")
    hostname = serializers.CharField(max_length=255, allow_blank=True, required=False, default="")
    spool_depth = serializers.IntegerField(min_value=0, max_value=2**62, required=False, default=0)
    spool_capacity = serializers.IntegerField(min_value=0, max_value=2**62, required=False, allow_null=True)
    last_upload = serializers.DateTimeField(required=False, allow_null=True)
    last_error = serializers.CharField(
        max_length=2000, allow_blank=True, required=False, default="", trim_whitespace=False
    )
    agent_time = serializers.FloatField(
        required=False, allow_null=True, min_value=0, max_value=1e11, help_text="The agent's clock, s since 1970."
    )
    clock_offset = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=-1e9,
        max_value=1e9,
        help_text="The agent's round-trip estimate of its clock minus the server's, in seconds.",
    )
    heartbeat_seconds = serializers.IntegerField(min_value=1, max_value=86_400, required=False, default=30)
    # The ignore: DRF passes max_length to the ListSerializer (many=True); the stub does not list it.
    refused_sources = RefusedSourceSerializer(  # type: ignore[call-arg]
        many=True,
        required=False,
        default=list,
        max_length=1000,
        help_text="Sources of the agent's configuration it will not run on its machine, and why.",
    )
    serial_ports = SerialPortSerializer(  # type: ignore[call-arg]
        many=True,
        required=False,
        default=None,
        max_length=64,
        help_text="The agent machine's serial ports (pyserial's list_ports), for setting up its sources.",
    )
    health = NodeHealthSerializer(
        required=False,
        default=None,
        help_text="The machine's load, memory, spool disk and spool age: kept as readings of the agent's "
        "health instrument (docs/agent.md).",
    )


class HeartbeatResultSerializer(serializers.Serializer):
    server_time = serializers.FloatField(help_text="The server's clock when it stored the heartbeat, s since 1970.")
    clock_offset = serializers.FloatField(allow_null=True, help_text="What the server recorded.")


def _agent_only(request, what: str) -> None:
    if not permissions.is_agent(request):
        raise exceptions.PermissionDenied(f"Only an agent token {what}.")


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(description=description)


class AgentConfigView(ScopedViewMixin, APIView):
    """The sources this agent collects, as configured in the admin (data sources of kind "Remote agent")."""

    agent_access = True

    @extend_schema(
        operation_id="agent_config",
        summary="The agent's central configuration",
        parameters=[OpenApiParameter("If-None-Match", str, OpenApiParameter.HEADER, description="a previous ETag")],
        responses={
            200: AgentConfigSerializer,
            304: _error("unchanged since the ETag sent in If-None-Match"),
            401: _error("no, wrong, expired or revoked token"),
            403: _error("not an agent token"),
        },
    )
    def get(self, request):
        _agent_only(request, "has a configuration")
        config = agents.agent_configuration(request)
        headers = {"ETag": config.etag, "Cache-Control": "no-cache"}
        if agents.etag_matches(request.headers.get("If-None-Match", ""), config.etag):
            return Response(status=304, headers=headers)
        return Response(AgentConfigSerializer(config.body).data, headers=headers)


class AgentHeartbeatView(ScopedViewMixin, APIView):
    """The agent says it is alive, how full its spool is and what went wrong last; the server says the time."""

    agent_access = True

    def recorded(self, health: AgentHealth, data: dict) -> None:
        """After the heartbeat is stored: the layer above (``collection.api.node_health``) keeps its figures
        as readings; accounts know nothing of readings."""

    @extend_schema(
        operation_id="agent_heartbeat",
        summary="Report the agent's health",
        request=HeartbeatSerializer,
        responses={
            200: HeartbeatResultSerializer,
            400: _error("a field is out of range"),
            401: _error("no, wrong, expired or revoked token"),
            403: _error("not an agent token"),
        },
    )
    def post(self, request):
        _agent_only(request, "sends heartbeats")
        serializer = HeartbeatSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        health = agents.record_heartbeat(request, serializer.validated_data, address=client_address(request))
        self.recorded(health, serializer.validated_data)
        return Response(
            {"server_time": timezone.now().timestamp(), "clock_offset": health.clock_offset_seconds},
            headers={"Cache-Control": "no-store"},
        )


class SampleDeliverySerializer(serializers.Serializer):
    lines = serializers.ListField(
        child=serializers.CharField(max_length=agent_samples.MAX_BYTES, allow_blank=True, trim_whitespace=False),
        required=False,
        default=list,
        max_length=agent_samples.MAX_LINES,
    )
    file = serializers.CharField(max_length=300, allow_blank=True, required=False, default="")
    truncated = serializers.BooleanField(required=False, default=False)
    error = serializers.CharField(max_length=1000, allow_blank=True, required=False, default="")

    def validate_lines(self, value):
        if sum(len(line.encode("utf-8", errors="replace")) + 1 for line in value) > agent_samples.MAX_BYTES:
            raise serializers.ValidationError(f"at most {agent_samples.MAX_BYTES} bytes of lines")
        return value


class AgentSampleView(ScopedViewMixin, APIView):
    """The agent posts the first lines of a file the server asked for (or why it will not read it)."""

    agent_access = True

    @extend_schema(
        operation_id="agent_deliver_sample",
        summary="Deliver the lines of a sample request",
        request=SampleDeliverySerializer,
        responses={
            204: _error("kept"),
            400: _error("too many lines or bytes"),
            401: _error("no, wrong, expired or revoked token"),
            403: _error("not an agent token"),
            404: _error("no waiting request of this id for this agent (answered, timed out, or another agent's)"),
        },
    )
    def post(self, request, pk: int):
        _agent_only(request, "delivers samples")
        serializer = SampleDeliverySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            agent_samples.deliver_sample(request, pk, serializer.validated_data)
        except agent_samples.NotYours:
            raise exceptions.NotFound("No waiting sample request of this id for this agent.") from None
        return Response(status=204)
