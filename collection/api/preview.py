"""``POST /api/v1/sources/preview/`` and ``GET /api/v1/sources/serial-ports/``: the source preview service
(``collection.services.preview``) over the API, for the "New data source" page and for scripts.

The preview needs the change level on the instrument the source is for (like creating the source); an
instrument one may not change reads "does not exist" (400). The upload is bounded while it arrives: a body
larger than the limit is refused by its size (413) before it is read, and an upload handler keeps no more
than the limit in memory whatever the headers say.
"""

from __future__ import annotations

import json
from io import BytesIO

from django.core.files.uploadedfile import InMemoryUploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import permissions
from accounts.api.base import PermittedSlugRelatedField, ScopedViewMixin
from accounts.audit import client_address
from accounts.models import Agent, AgentHealth
from collection.services.preview import (
    MAX_UPLOAD_BYTES,
    PREVIEW_KINDS,
    PreviewRefused,
    SampleWaiting,
    ask_agent,
    preview_source,
    serial_ports,
    too_large_message,
)
from instruments.choices import SourceKind
from instruments.models import Instrument

# Room for the other form fields (the configuration, the channels) beside the sample.
BODY_ALLOWANCE = 256 * 1024


class BoundedUploadHandler(FileUploadHandler):
    """Keeps at most MAX_UPLOAD_BYTES + 1 bytes of an uploaded file in memory; the rest is counted, not kept."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.kept = bytearray()
        self.size = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.size += len(raw_data)
        room = MAX_UPLOAD_BYTES + 1 - len(self.kept)
        if room > 0:
            self.kept += raw_data[:room]
        return None

    def file_complete(self, file_size: int) -> InMemoryUploadedFile:
        return InMemoryUploadedFile(
            BytesIO(bytes(self.kept)), self.field_name, self.file_name, self.content_type, self.size, self.charset
        )


class JsonOrText(serializers.JSONField):
    """A JSON value, or (in a multipart form) its JSON text."""

    def to_internal_value(self, data):
        if isinstance(data, str):
            try:
                data = json.loads(data) if data.strip() else None
            except ValueError:
                raise serializers.ValidationError("is not valid JSON") from None
        return super().to_internal_value(data)


class PreviewRequest(serializers.Serializer):
    instrument = PermittedSlugRelatedField(
        queryset=Instrument.objects.all(), level=permissions.CHANGE, help_text="the instrument the source is for"
    )
    kind = serializers.ChoiceField(choices=list(PREVIEW_KINDS))
    config = JsonOrText(required=False, default=dict, help_text="the configuration so far (may be partial)")
    channels = JsonOrText(
        required=False,
        default=None,
        help_text="channels to judge each row with (slug, source_field, kind, valid_min, valid_max, "
        "missing_values); default: the proposed ones",
    )
    sample = serializers.FileField(
        required=False, allow_empty_file=True, help_text="a sample file (its first lines are enough)"
    )
    sample_text = serializers.CharField(
        required=False, trim_whitespace=False, max_length=MAX_UPLOAD_BYTES, help_text="or the sample as text"
    )
    file = serializers.CharField(required=False, default="", help_text="file sources: a file in the folder")
    connect = serializers.BooleanField(
        required=False, default=False, help_text="serial and TCP: read a few lines now (Test connection)"
    )
    agent = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**62,
        help_text="file sources: ask this agent (yours, or any for administrators) for the first lines of a file "
        "in config.path on its machine; answered 202 with agent_sample, to send back until the lines arrive",
    )
    agent_sample = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=2**62,
        help_text="preview the lines the agent sent for this request (202 while it has not yet)",
    )

    def validate_config(self, value):
        if not isinstance(value, dict):
            raise serializers.ValidationError("must be an object of option names and values")
        return value

    def validate_channels(self, value):
        if value is not None and (not isinstance(value, list) or not all(isinstance(c, dict) for c in value)):
            raise serializers.ValidationError("must be a list of channel objects")
        if value is not None and len(value) > 500:
            raise serializers.ValidationError("at most 500 channels")
        return value


class SourcePreviewView(ScopedViewMixin, APIView):
    parser_classes = [JSONParser, MultiPartParser, FormParser]

    def initialize_request(self, request, *args, **kwargs):
        # Before anything reads the body (the CSRF check may): uploads are kept bounded in memory.
        request.upload_handlers = [BoundedUploadHandler(request)]
        return super().initialize_request(request, *args, **kwargs)

    def initial(self, request, *args, **kwargs):
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isdigit() and int(length) > MAX_UPLOAD_BYTES + BODY_ALLOWANCE:
            raise PayloadTooLarge(too_large_message(int(length)))
        super().initial(request, *args, **kwargs)

    @extend_schema(
        operation_id="preview_source",
        summary="Preview a data source from a sample",
        description=(
            "Given a kind, a configuration (possibly partial) and a sample (an uploaded file, text, the first "
            "lines of a file in a file source's folder, or lines read now from a serial port or TCP "
            "instrument), returns proposals (delimiter, header lines, columns, units, timestamp, sentinels, "
            "channels), the effective configuration with its errors, and the first rows parsed: times in UTC "
            "and in the source's zone, each value and what its channel would store or reject, and why. "
            "Nothing is saved. Paths, addresses and devices are checked as for saving the source."
        ),
        request={"multipart/form-data": PreviewRequest, "application/json": PreviewRequest},
        responses={
            200: OpenApiResponse(description="the preview"),
            202: OpenApiResponse(
                description='waiting for the agent: {"waiting": true, "agent_sample": id, "detail": ...}; ask again '
                "with agent_sample"
            ),
            400: None,
            413: None,
        },
    )
    def post(self, request):
        form = PreviewRequest(data=request.data, context={"request": request})
        form.is_valid(raise_exception=True)
        data = form.validated_data
        upload = None
        if data.get("sample") is not None:
            file = data["sample"]
            if file.size > MAX_UPLOAD_BYTES:
                raise PayloadTooLarge(too_large_message(file.size))
            upload = file.read(MAX_UPLOAD_BYTES + 1)
        elif data.get("sample_text"):
            upload = data["sample_text"].encode()
        try:
            if upload is None and data.get("agent_sample") is None and data.get("agent") is not None:
                if data["kind"] != SourceKind.FILE:
                    raise PreviewRefused("agent", "An agent sends samples of file sources only.")
                waiting = ask_agent(
                    request.user, data["agent"], data["config"], data["file"], address=client_address(request)
                )
                return self.waiting(waiting)
            result = preview_source(
                request.user,
                data["kind"],
                data["config"],
                upload=upload,
                file_name=data["file"],
                connect=data["connect"],
                channels=data["channels"],
                agent_sample=data.get("agent_sample"),
            )
        except PreviewRefused as exc:
            return Response({"detail": exc.message, "field": exc.field}, status=status.HTTP_400_BAD_REQUEST)
        except SampleWaiting as waiting:
            return self.waiting(waiting)
        return Response(result)

    @staticmethod
    def waiting(waiting: SampleWaiting) -> Response:
        """The agent has not sent its lines yet: ask again with ``agent_sample``."""
        return Response(
            {"waiting": True, "agent_sample": waiting.request_id, "detail": waiting.message},
            status=status.HTTP_202_ACCEPTED,
        )


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request is too large."


class SerialPortsView(ScopedViewMixin, APIView):
    @extend_schema(
        operation_id="list_serial_ports",
        summary="The serial ports you may point a source at: this server's, or an agent's",
        description=(
            "Without `agent`: this server's serial ports that the rules let you use. With `agent` (an id): "
            "the ports that agent's machine reported in its last heartbeat, for its owner and administrators "
            "(who may set what it collects)."
        ),
        parameters=[OpenApiParameter("agent", int, description="an agent's id")],
        responses={200: OpenApiResponse(description='{"ports": [{"device", "description", ...}]}'), 404: None},
    )
    def get(self, request):
        agent_id = request.query_params.get("agent")
        if agent_id is None:
            return Response({"ports": serial_ports(request.user)})
        agents = Agent.objects.all()
        if not permissions.is_administrator(request.user):
            agents = agents.filter(owner=request.user)
        agent = agents.filter(pk=agent_id).first() if agent_id.isdigit() else None
        if agent is None:
            raise exceptions.NotFound("No such agent among those whose sources you may set.")
        health = AgentHealth.objects.filter(agent=agent).first()
        return Response(
            {
                "agent": agent.name,
                "reported_at": health.last_heartbeat if health else None,
                "ports": health.serial_ports if health else [],
            }
        )
