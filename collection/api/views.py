"""The ingest endpoint. DRF routes, authenticates, checks token scope and throttles; the body is decoded
with orjson/pandas and numpy (``collection.ingest_formats``) and stored by ``ingest_samples``."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from accounts import permissions
from accounts.api.base import ScopedViewMixin
from accounts.models import ApiToken
from collection.api.schema import ErrorDetail, IngestBody, IngestResult
from collection.choices import Origin
from collection.ingest_formats import PayloadError
from collection.services.uploads import ingest_upload


def sender_key(request) -> str:
    """Who is uploading, for batch ids and throttling: the token when there is one, else the user."""
    if isinstance(request.auth, ApiToken):
        return f"token:{request.auth.pk}"
    return f"user:{request.user.pk}"


class IngestRateThrottle(SimpleRateThrottle):
    """Requests per token (or user) to the ingest endpoint; rate from DAQBROKER_INGEST_THROTTLE."""

    scope = "ingest"

    def get_rate(self):
        # Read at request time (not import time) so a changed setting takes effect.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": sender_key(request)}


def _error(status: int, description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorDetail, description=description)


class IngestView(ScopedViewMixin, APIView):
    agent_access = True  # agent tokens may call this endpoint (and only this one)
    throttle_classes = [IngestRateThrottle]
    parser_classes = []  # the body is read raw and decoded by collection.ingest_formats

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
        limit = settings.DAQBROKER_INGEST_MAX_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            return Response({"detail": f"the body is {length:,} bytes; the limit is {limit:,}"}, status=413)
        try:
            result = ingest_upload(
                request.body,
                request.content_type,
                sender=sender_key(request),
                writable_instruments=permissions.collectable_instrument_ids(request),
                max_readings=settings.DAQBROKER_INGEST_MAX_READINGS,
                origin=Origin.AGENT if permissions.is_agent(request) else Origin.API,
                batch_id=request.query_params.get("batch_id", ""),
                time_unit=request.query_params.get("time_unit", ""),
            )
        except PayloadError as exc:
            return Response({"detail": exc.message}, status=exc.status)
        return Response({**result.body, "replayed": result.replayed})
