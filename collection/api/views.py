"""The ingest endpoints. DRF routes, authenticates, checks token scope and throttles.

Readings (``/api/v1/ingest/``): the body is decoded with orjson/pandas and numpy
(``collection.ingest_formats``), not DRF serializers, and stored by ``ingest_samples``. Lines an agent
could not parse (``/api/v1/agent/unparsed/``, at most a thousand per request, rare): checked by a DRF
serializer and kept in quarantine through the same ``ingest_samples``."""

from __future__ import annotations

import logging
import threading
import time

import redis
from django.conf import settings
from django.core.cache.backends.locmem import LocMemCache
from django.core.validators import ProhibitNullCharactersValidator
from django.http import HttpRequest
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from accounts import audit, permissions
from accounts.api.base import ScopedViewMixin
from accounts.authentication import BearerTokenAuthentication, RawBodySessionAuthentication
from accounts.models import ApiToken
from accounts.principals import AgentPrincipal
from collection.api.schema import ErrorDetail, IngestBody, IngestResult
from collection.choices import Origin
from collection.ingest_formats import PayloadError
from collection.services.ingest import KEEP, ON_CONFLICT, REPLACE, Writable
from collection.services.uploads import UnparsedLine, ingest_upload, quarantine_lines
from instruments.models import DataSource

logger = logging.getLogger(__name__)

MAX_UNPARSED_LINES = 1000


def sender_key(request) -> str:
    """Who is uploading, for batch ids and throttling: the token when there is one, else the user."""
    if isinstance(request.auth, ApiToken):
        return f"token:{request.auth.pk}"
    return f"user:{request.user.pk}"


# When the shared cache (Redis) cannot be reached, the throttle counts in this process instead: each web
# worker then allows the rate on its own (a looser limit, never a refused upload). Redis is tried again
# CACHE_RETRY_SECONDS after a failure; the switch is logged once each way.
CACHE_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, OSError)
CACHE_RETRY_SECONDS = 5.0
_local_counts = LocMemCache("daqbroker-ingest-throttle", {"MAX_ENTRIES": 10_000})
_shared_cache_down_until = 0.0
_fallback_lock = threading.Lock()


class IngestRateThrottle(SimpleRateThrottle):
    """Requests per token (or user) to the ingest endpoint; rate from DAQBROKER_INGEST_THROTTLE. Counted
    in the shared cache, or in this process while that cannot be reached (see CACHE_RETRY_SECONDS)."""

    scope = "ingest"

    def get_rate(self):
        # Read at request time (not import time) so a changed setting takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": sender_key(request)}

    def allow_request(self, request, view) -> bool:
        global _shared_cache_down_until
        if time.monotonic() >= _shared_cache_down_until:
            try:
                allowed = super().allow_request(request, view)
            except CACHE_ERRORS as exc:
                with _fallback_lock:
                    first = _shared_cache_down_until == 0.0
                    _shared_cache_down_until = time.monotonic() + CACHE_RETRY_SECONDS
                if first:
                    logger.warning(
                        "the shared cache is unreachable (%s: %s); the ingest throttle counts per process until it "
                        "answers again",
                        type(exc).__name__,
                        exc,
                    )
            else:
                if _shared_cache_down_until:
                    with _fallback_lock:
                        _shared_cache_down_until = 0.0
                    logger.warning("the shared cache answers again; the ingest throttle counts there again")
                return allowed
        self.cache = _local_counts
        return super().allow_request(request, view)


READ_PIECE_BYTES = 64 * 1024


def read_body_within(request: HttpRequest, limit: int) -> bytes:
    """The request body, read from the socket in pieces and refused (413) past ``limit`` bytes.

    Django's ``request.body`` would refuse anything above DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB, kept for
    every other route); this endpoint has its own limit, DAQBROKER_INGEST_MAX_BYTES. A declared length
    above it is refused before a byte is read; a body longer than it declared is never read past it.
    """
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise PayloadError("the Content-Length header is not a number") from None
    if declared > limit:
        raise PayloadError(f"the body is {declared:,} bytes; the limit is {limit:,} (DAQBROKER_INGEST_MAX_BYTES)", 413)
    body = bytearray()
    while True:
        piece = request.read(min(READ_PIECE_BYTES, limit + 1 - len(body)))
        if not piece:
            return bytes(body)
        body += piece
        if len(body) > limit:
            raise PayloadError(f"the body is over the limit of {limit:,} bytes (DAQBROKER_INGEST_MAX_BYTES)", 413)


def _error(status: int, description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorDetail, description=description)


class IngestView(ScopedViewMixin, APIView):
    agent_access = True  # agent tokens may call this endpoint (and only this one)
    throttle_classes = [IngestRateThrottle]
    parser_classes = []  # the body is read raw and decoded by collection.ingest_formats
    # A logged-in browser may ingest too, with the CSRF token in the X-CSRFToken header.
    authentication_classes = [BearerTokenAuthentication, RawBodySessionAuthentication]

    @extend_schema(
        operation_id="ingest_readings",
        summary="Push a batch of readings",
        description=(
            "Stores readings for channels of instruments you may collect to. Valid readings are stored even "
            "when others in the batch are refused; every refused reading is listed with its index and reason "
            "and kept server-side. Re-sending readings stores nothing twice. Bodies: JSON rows "
            "(`[{channel, t, v}]` or `{batch_id, readings: [...]}`), JSON columns "
            "(`{batch_id, channels: {ref: {t: [...], v: [...]}}}`) or CSV with a header `channel,t,v`."
        ),
        request={"application/json": IngestBody, "text/csv": OpenApiTypes.STR},
        parameters=[
            OpenApiParameter("batch_id", str, description="for CSV bodies: your id for this upload"),
            OpenApiParameter("time_unit", str, enum=["s", "ms", "us"], description="unit of numeric times"),
            OpenApiParameter(
                "on_conflict",
                str,
                enum=list(ON_CONFLICT),
                description="keep (default): a value differing from the one stored at its time is quarantined as a "
                "conflict; replace: it replaces the stored one, audited with the old value. Replacing needs the "
                "change level on the instruments (readings for others are refused as not writable); agent tokens "
                "may not replace",
            ),
        ],
        responses={
            200: IngestResult,
            400: _error(400, "the body cannot be read (not JSON/CSV, no readings, wrong shape)"),
            401: _error(401, "no, wrong, expired or revoked token"),
            403: _error(403, "a read-only token"),
            413: _error(413, "the body or the batch is too large"),
            415: _error(415, "unsupported content type"),
            429: _error(429, "too many requests: retry after the Retry-After header"),
        },
    )
    def post(self, request):
        on_conflict = request.query_params.get("on_conflict", KEEP)
        if on_conflict not in ON_CONFLICT:
            return Response({"detail": f"on_conflict must be one of: {', '.join(ON_CONFLICT)}"}, status=400)
        # The instruments the sender may push to, as a subquery of the one channel look-up (no query of its own).
        writable: Writable = permissions.collectable_instruments(request)
        if on_conflict == REPLACE:
            # Replacing stored readings is a correction: the change level, never an agent's push.
            if permissions.is_agent(request):
                return Response({"detail": "an agent may add readings, not replace stored ones"}, status=403)
            if writable is not None:
                writable = set(permissions.instruments_for(request, permissions.CHANGE).values_list("pk", flat=True))
        try:
            body = read_body_within(request._request, settings.DAQBROKER_INGEST_MAX_BYTES)
            result = ingest_upload(
                body,
                request.content_type,
                sender=sender_key(request),
                writable_instruments=writable,
                on_conflict=on_conflict,
                address=audit.client_address(request),
                max_readings=settings.DAQBROKER_INGEST_MAX_READINGS,
                origin=Origin.AGENT if permissions.is_agent(request) else Origin.API,
                batch_id=request.query_params.get("batch_id", ""),
                time_unit=request.query_params.get("time_unit", ""),
                sender_principal=permissions.resolve(request)[0],
            )
        except PayloadError as exc:
            return Response({"detail": exc.message}, status=exc.status)
        return Response({**result.body, "replayed": result.replayed})


class RawTextField(serializers.CharField):
    """Text kept as received, NUL characters included (line noise; quarantine shows them as \\x00)."""

    def __init__(self, **kwargs):
        super().__init__(trim_whitespace=False, **kwargs)
        self.validators = [v for v in self.validators if not isinstance(v, ProhibitNullCharactersValidator)]


class UnparsedLineSerializer(serializers.Serializer):
    text = RawTextField(max_length=100_000, help_text="the line as read")
    reason = RawTextField(max_length=300, help_text="why it did not parse, as the agent's parser said")
    # The serializer's metaclass moves declared fields out of the class: Field.source is not shadowed.
    source = serializers.IntegerField(  # type: ignore[assignment]
        required=False, allow_null=True, default=None, help_text="the server's data source id (central sources)"
    )
    source_name = serializers.CharField(max_length=200, required=False, default="", allow_blank=True)
    file = RawTextField(max_length=1000, required=False, allow_blank=True, help_text="for file sources")
    line = serializers.IntegerField(required=False, min_value=1, help_text="its line number in that file")
    topic = RawTextField(max_length=1000, required=False, allow_blank=True, help_text="for MQTT sources")
    node = RawTextField(max_length=1200, required=False, allow_blank=True, help_text="for OPC UA sources")
    received = serializers.DateTimeField(required=False, help_text="when the agent read it")


class UnparsedBodySerializer(serializers.Serializer):
    batch_id = serializers.RegexField(
        r"^[\x21-\x7e]{1,100}$", help_text="the agent's id for this upload: a retry with the same id is recognised"
    )
    # The ignore: DRF passes min_length and max_length to the ListSerializer (many=True); the stub does not list them.
    lines = UnparsedLineSerializer(many=True, min_length=1, max_length=MAX_UNPARSED_LINES)  # type: ignore[call-arg]


class UnparsedResultSerializer(serializers.Serializer):
    batch_id = serializers.CharField()
    stored = serializers.IntegerField(help_text="lines kept in quarantine")
    aggregated = serializers.IntegerField(
        help_text="of which counted in one aggregate record, past the quarantine limits, not kept one by one"
    )
    without_source = serializers.IntegerField(help_text="of which naming no data source of this agent")
    replayed = serializers.BooleanField()


class AgentUnparsedView(ScopedViewMixin, APIView):
    """Lines an agent read but could not parse: kept in quarantine (Rejected samples) with their reason."""

    agent_access = True
    throttle_classes = [IngestRateThrottle]

    @extend_schema(
        operation_id="agent_unparsed_lines",
        summary="Report lines the agent could not parse",
        description=(
            "An agent never drops a line it cannot parse: it sends it here, and the server keeps it in "
            "quarantine with its reason, source, file and line number, like the server's own collectors do. "
            f"At most {MAX_UNPARSED_LINES} lines per request; a retried batch_id is answered with "
            '`"replayed": true` and stores nothing twice.'
        ),
        request=UnparsedBodySerializer,
        responses={
            200: UnparsedResultSerializer,
            400: _error(400, "the body is not a list of lines with their reasons"),
            401: _error(401, "no, wrong, expired or revoked token"),
            403: _error(403, "not an agent token"),
            429: _error(429, "too many requests: retry after the Retry-After header"),
        },
    )
    def post(self, request):
        if not permissions.is_agent(request):
            raise exceptions.PermissionDenied("Only an agent token reports unparsed lines.")
        body = UnparsedBodySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        principal = permissions.resolve(request)[0]
        assert isinstance(principal, AgentPrincipal)  # checked above (is_agent)
        agent = principal.agent
        collectable = permissions.collectable_instrument_ids(request)
        assert collectable is not None  # None means "all", for administrators; an agent never is one
        sources = set(
            DataSource.objects.filter(agent=agent, instrument_id__in=collectable).values_list("pk", flat=True)
        )
        lines = [_unparsed(item) for item in body.validated_data["lines"]]
        result = quarantine_lines(
            lines,
            sender=sender_key(request),
            batch_id=body.validated_data["batch_id"],
            sources=sources,
            sender_principal=permissions.resolve(request)[0],
        )
        return Response({**result.body, "replayed": result.replayed})


def _unparsed(item: dict) -> UnparsedLine:
    context = {key: item[key] for key in ("file", "line", "topic", "node") if item.get(key) not in (None, "")}
    if item.get("received"):
        context["received"] = item["received"].isoformat()
    return UnparsedLine(
        text=item["text"],
        reason=item["reason"],
        source_id=item["source"],
        source_name=item["source_name"],
        context=context,
    )
