"""Raw files: agents ship them (resumable, deduplicated), viewers list and download them (docs/raw-files.md).

Agent only:
    ``POST /api/v1/agent/raw-files/``               announce a file (sha256, size...); stored at once if known
    ``PUT  /api/v1/agent/raw-files/<sha256>/?offset=N``   the next chunk, raw bytes (at most 1 MiB)
Whoever may view the instrument (hidden: 404):
    ``GET /api/v1/instruments/<slug>/raw-files/``     the list, newest first (paginated)
    ``GET /api/v1/raw-files/<id>/``                   one file's bytes
    ``GET /api/v1/instruments/<slug>/raw-files/zip/?id=..&id=..``   a zip of a selection, streamed
    ``GET /api/v1/instruments/<slug>/raw-files/server/``   the server's own raw copies (its file sources')
    ``GET /api/v1/instruments/<slug>/raw-files/server/<source id>/<name>/``   one of them
"""

from __future__ import annotations

from urllib.parse import quote

from django.http import FileResponse, Http404, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import permissions
from accounts.api.access import Pagination
from accounts.api.base import ScopedViewMixin, instrument_or_404
from accounts.authentication import BearerTokenAuthentication, RawBodySessionAuthentication
from accounts.principals import AgentPrincipal
from collection.api.schema import ErrorDetail
from collection.models import RawFile
from collection.services import raw_files


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorDetail, description=description)


def _agent(request):
    if not permissions.is_agent(request):
        raise exceptions.PermissionDenied("Only an agent token ships raw files.")
    principal = permissions.resolve(request)[0]
    assert isinstance(principal, AgentPrincipal)  # checked above (is_agent)
    return principal.agent


def _refused(exc: raw_files.RawFileRefused) -> Response:
    return Response({"detail": str(exc), **exc.extra}, status=exc.status)


class RawFileAnnounceSerializer(serializers.Serializer):
    source = serializers.IntegerField(  # type: ignore[assignment]  # DRF moves declared fields out of the class
        min_value=1, max_value=2**62, help_text="The agent's data source (its id)."
    )
    sha256 = serializers.RegexField(r"^[0-9a-fA-F]{64}$", help_text="Of the whole file.")
    size = serializers.IntegerField(min_value=0, max_value=2**62)
    name = serializers.CharField(max_length=255)
    path = serializers.CharField(max_length=1000, help_text="Where the file is on the agent's machine.")
    modified = serializers.DateTimeField(help_text="The file's modification time.")

    def validate_name(self, value: str) -> str:
        if "/" in value or "\\" in value or value in (".", "..") or "\x00" in value:
            raise serializers.ValidationError("a file name, without folders")
        return value

    def validate_path(self, value: str) -> str:
        if "\x00" in value:
            raise serializers.ValidationError("no NUL characters")
        return value


class RawUploadStateSerializer(serializers.Serializer):
    status = serializers.ChoiceField(["stored", "partial"])
    offset = serializers.IntegerField(help_text="Bytes the server has: send the next chunk from here.")
    size = serializers.IntegerField()
    chunk_bytes = serializers.IntegerField(help_text="The largest chunk the server accepts.")
    id = serializers.IntegerField(required=False, help_text="The raw file's id, once stored.")


class AgentRawFileView(ScopedViewMixin, APIView):
    agent_access = True

    @extend_schema(
        operation_id="agent_raw_file_announce",
        summary="Announce a raw file to ship",
        request=RawFileAnnounceSerializer,
        responses={
            200: RawUploadStateSerializer,
            400: _error("a field is wrong"),
            401: _error("no, wrong, expired or revoked token"),
            403: _error("not an agent token"),
            404: _error("no such source for this agent"),
            409: _error("the same content is being announced by another request: ask again"),
            413: _error("larger than DAQBROKER_RAW_FILE_MAX_BYTES"),
        },
    )
    def post(self, request):
        agent = _agent(request)
        body = RawFileAnnounceSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        collectable = permissions.instruments_for(request, permissions.COLLECT)
        source = raw_files.agent_source(agent, data["source"], collectable)
        if source is None:
            raise exceptions.NotFound("No source of this id is assigned to this agent.")
        try:
            state = raw_files.begin(
                agent,
                source=source,
                sha256=data["sha256"],
                size=data["size"],
                name=data["name"],
                path=data["path"],
                modified=data["modified"],
                collectable=collectable,
            )
        except raw_files.RawFileRefused as exc:
            return _refused(exc)
        return Response(state.payload())


class AgentRawChunkView(ScopedViewMixin, APIView):
    agent_access = True
    parser_classes: list = []  # the body is the chunk's bytes
    authentication_classes = [BearerTokenAuthentication, RawBodySessionAuthentication]  # users: 403, not 401

    @extend_schema(
        operation_id="agent_raw_file_chunk",
        summary="Send the next chunk of a raw file",
        request={"application/octet-stream": OpenApiTypes.BINARY},
        parameters=[
            OpenApiParameter("sha256", str, OpenApiParameter.PATH),
            OpenApiParameter("offset", int, required=True, description="where this chunk starts in the file"),
        ],
        responses={
            200: RawUploadStateSerializer,
            400: _error("no offset, or an empty chunk"),
            401: _error("no, wrong, expired or revoked token"),
            403: _error("not an agent token"),
            404: _error("no upload of this content in progress for this agent"),
            409: _error("not the offset the server expects (the answer names it)"),
            413: _error("more than a chunk, or beyond the size announced"),
            422: _error("the bytes do not match the sha256 announced: discarded"),
        },
    )
    def put(self, request, sha256: str):
        agent = _agent(request)
        try:
            offset = int(request.query_params.get("offset", ""))
        except ValueError:
            return Response({"detail": "offset: a whole number of bytes is required."}, status=400)
        length = int(request.headers.get("Content-Length") or 0)
        if length > raw_files.CHUNK_BYTES:
            return Response({"detail": f"A chunk holds at most {raw_files.CHUNK_BYTES} bytes."}, status=413)
        data = request._request.read(raw_files.CHUNK_BYTES + 1)
        try:
            state = raw_files.append(agent, sha256, offset, data)
        except raw_files.RawFileRefused as exc:
            return _refused(exc)
        return Response(state.payload())


class RawFileSerializer(serializers.ModelSerializer):
    instrument = serializers.CharField(source="instrument.slug", read_only=True)
    source = serializers.CharField(  # type: ignore[assignment]  # DRF moves declared fields out of the class
        source="source.name", read_only=True, default=None
    )
    download = serializers.SerializerMethodField()

    class Meta:
        model = RawFile
        fields = ["id", "instrument", "source", "name", "path", "sha256", "size", "modified", "received", "download"]

    def get_download(self, raw_file: RawFile) -> str:
        return f"/api/v1/raw-files/{raw_file.pk}/"


# An instrument's list, a page at a time (``Pagination``: ?limit=&offset=).
INSTRUMENT_PAGE = [
    OpenApiParameter("slug", str, OpenApiParameter.PATH),
    OpenApiParameter("limit", int),
    OpenApiParameter("offset", int),
]


class InstrumentRawFilesView(ScopedViewMixin, APIView):
    @extend_schema(
        operation_id="instrument_raw_files",
        summary="The raw files kept for an instrument, newest first",
        parameters=INSTRUMENT_PAGE,
        responses={200: RawFileSerializer(many=True), 404: _error("no such instrument, or hidden")},
    )
    def get(self, request, slug: str):
        instrument = instrument_or_404(request, slug)
        queryset = RawFile.objects.filter(instrument=instrument).select_related("instrument", "source")
        paginator = Pagination()
        page = paginator.paginate_queryset(queryset, request, view=self)
        return paginator.get_paginated_response(RawFileSerializer(page, many=True).data)


def visible_raw_file(request, pk: int) -> RawFile:
    """The raw file ``pk`` if the requester may view its instrument; 404 otherwise (and if its bytes are gone)."""
    raw_file = (
        permissions.restrict(RawFile.objects.select_related("instrument"), request, permissions.VIEW)
        .filter(pk=pk)
        .first()
    )
    if raw_file is None:
        raise Http404("No such raw file.")
    return raw_file


def file_response(raw_file: RawFile) -> FileResponse:
    try:
        handle = raw_files.open_content(raw_file)
    except FileNotFoundError:
        raise Http404("The archive no longer holds this file's bytes.") from None
    return FileResponse(handle, as_attachment=True, filename=raw_file.name, content_type="application/octet-stream")


def zip_response(instrument, ids: list[str]):
    try:
        wanted = sorted({int(i) for i in ids})
    except ValueError:
        return None
    if not wanted or len(wanted) > raw_files.MAX_ZIP_FILES:
        return None
    chosen = list(RawFile.objects.filter(instrument=instrument, pk__in=wanted).select_related("instrument"))
    if len(chosen) != len(wanted):
        raise Http404("No such raw file on this instrument.")
    if any(not raw_files.blob_path(f.sha256).exists() for f in chosen):
        raise Http404("The archive no longer holds the bytes of a file chosen.")
    response = StreamingHttpResponse(raw_files.zip_stream(chosen), content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{instrument.slug}-raw-files.zip"'
    return response


class RawFileDownloadView(ScopedViewMixin, APIView):
    @extend_schema(
        operation_id="raw_file_download",
        summary="One raw file's bytes",
        parameters=[OpenApiParameter("id", int, OpenApiParameter.PATH)],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            404: _error("no such file, or hidden"),
        },
    )
    def get(self, request, pk: int):
        return file_response(visible_raw_file(request, pk))


class InstrumentRawFilesZipView(ScopedViewMixin, APIView):
    @extend_schema(
        operation_id="instrument_raw_files_zip",
        summary="A zip of chosen raw files of an instrument (streamed)",
        parameters=[
            OpenApiParameter("slug", str, OpenApiParameter.PATH),
            OpenApiParameter("id", int, many=True, required=True, description=f"at most {raw_files.MAX_ZIP_FILES}"),
        ],
        responses={
            (200, "application/zip"): OpenApiTypes.BINARY,
            400: _error("no ids, or too many"),
            404: _error("no such instrument or file, or hidden"),
        },
    )
    def get(self, request, slug: str):
        instrument = instrument_or_404(request, slug)
        response = zip_response(instrument, request.query_params.getlist("id"))
        if response is None:
            return Response({"detail": f"id: 1 to {raw_files.MAX_ZIP_FILES} raw file ids."}, status=400)
        return response


class ServerCopySerializer(serializers.Serializer):
    source = serializers.CharField(  # type: ignore[assignment]  # DRF moves declared fields out of the class
        source="source.name", help_text="The file source that read it."
    )
    source_id = serializers.IntegerField(source="source.pk")
    name = serializers.CharField()
    size = serializers.IntegerField(help_text="Bytes copied so far (the copy grows as the file is read).")
    modified = serializers.DateTimeField()
    download = serializers.SerializerMethodField()

    def get_download(self, copy: raw_files.ServerCopy) -> str:
        slug = copy.source.instrument.slug
        return f"/api/v1/instruments/{slug}/raw-files/server/{copy.source.pk}/{quote(copy.name, safe='')}/"


def server_copy_response(instrument, source_id: int, name: str) -> FileResponse:
    copy = raw_files.server_copy(instrument, source_id, name)
    if copy is None:
        raise Http404("No such raw copy on this instrument.")
    try:
        handle = copy.path.open("rb")
    except OSError:
        raise Http404("The archive no longer holds this copy.") from None
    return FileResponse(handle, as_attachment=True, filename=copy.name, content_type="application/octet-stream")


class InstrumentServerCopiesView(ScopedViewMixin, APIView):
    @extend_schema(
        operation_id="instrument_server_raw_copies",
        summary="The raw copies this server keeps of the files its own file sources read, newest first",
        parameters=INSTRUMENT_PAGE,
        responses={200: ServerCopySerializer(many=True), 404: _error("no such instrument, or hidden")},
    )
    def get(self, request, slug: str):
        instrument = instrument_or_404(request, slug)
        paginator = Pagination()
        page = paginator.paginate_queryset(raw_files.server_copies(instrument), request, view=self)
        return paginator.get_paginated_response(ServerCopySerializer(page, many=True).data)


class ServerCopyDownloadView(ScopedViewMixin, APIView):
    @extend_schema(
        operation_id="server_raw_copy_download",
        summary="One raw copy's bytes",
        parameters=[
            OpenApiParameter("slug", str, OpenApiParameter.PATH),
            OpenApiParameter("source_id", int, OpenApiParameter.PATH),
            OpenApiParameter("name", str, OpenApiParameter.PATH),
        ],
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            404: _error("no such instrument, source or copy, or hidden"),
        },
    )
    def get(self, request, slug: str, source_id: int, name: str):
        return server_copy_response(instrument_or_404(request, slug), source_id, name)
