"""``/api/v1/``: one router; every view derives from ``accounts.api.base`` (see its docstring)."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny
from rest_framework.routers import DefaultRouter

from accounts.api.agent_views import AgentConfigView, AgentSampleView
from accounts.api.views import AgentViewSet, ApiTokenViewSet, InstrumentSharesViewSet, WhoAmIView
from collection.api.corrections import ChannelReadingsDeletionViewSet, SourceRereadViewSet
from collection.api.node_health import AgentHeartbeatHealthView
from collection.api.preview import SerialPortsView, SourcePreviewView
from collection.api.raw_files import (
    AgentRawChunkView,
    AgentRawFileView,
    InstrumentRawFilesView,
    InstrumentRawFilesZipView,
    InstrumentServerCopiesView,
    RawFileDownloadView,
    ServerCopyDownloadView,
)
from collection.api.readings import (
    AnnotationsViewSet,
    ExportViewSet,
    ExpressionViewSet,
    HistogramViewSet,
    LatestViewSet,
    SamplesViewSet,
    StatisticsViewSet,
)
from collection.api.run_statistics import RunStatisticsViewSet
from collection.api.views import AgentUnparsedView, IngestView
from instruments.api.runs import RunListViewSet, RunViewSet
from instruments.api.views import ChannelViewSet, DataSourceViewSet, InstrumentViewSet, LogbookEntryViewSet

router = DefaultRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("tokens", ApiTokenViewSet, basename="token")
router.register("instruments", InstrumentViewSet, basename="instrument")
router.register("sources", DataSourceViewSet, basename="source")
router.register("channels", ChannelViewSet, basename="channel")
router.register("logbook", LogbookEntryViewSet, basename="logbook")
router.register("runlists", RunListViewSet, basename="runlist")
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    # The schema and its browser are public: they describe the API, they hold no data.
    path("schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="schema"),
    path(
        "docs/", SpectacularSwaggerSplitView.as_view(url_name="api:schema", permission_classes=[AllowAny]), name="docs"
    ),
    path("ingest/", IngestView.as_view(), name="ingest"),
    path("sources/<int:pk>/reread/", SourceRereadViewSet.as_view({"post": "reread"}), name="source-reread"),
    path(
        "channels/<int:pk>/delete-readings/",
        ChannelReadingsDeletionViewSet.as_view({"post": "delete_readings"}),
        name="channel-delete-readings",
    ),
    path("samples/", SamplesViewSet.as_view({"get": "read"}), name="samples"),
    path("annotations/", AnnotationsViewSet.as_view({"get": "read"}), name="annotations"),
    path("expression/", ExpressionViewSet.as_view({"get": "read"}), name="expression"),
    path("histogram/", HistogramViewSet.as_view({"get": "read"}), name="histogram"),
    path("statistics/", StatisticsViewSet.as_view({"get": "read"}), name="statistics"),
    path("export/", ExportViewSet.as_view({"get": "read"}), name="export"),
    path("instruments/<slug:slug>/latest/", LatestViewSet.as_view({"get": "read"}), name="instrument-latest"),
    path(
        "runlists/<slug:slug>/statistics/",
        RunStatisticsViewSet.as_view({"get": "read"}),
        name="runlist-statistics",
    ),
    path("whoami/", WhoAmIView.as_view(), name="whoami"),
    # Before the router's sources/<pk>/: "preview" is not a source's id.
    path("sources/preview/", SourcePreviewView.as_view(), name="source-preview"),
    path("sources/serial-ports/", SerialPortsView.as_view(), name="serial-ports"),
    path("agent/config/", AgentConfigView.as_view(), name="agent-config"),
    path("agent/heartbeat/", AgentHeartbeatHealthView.as_view(), name="agent-heartbeat"),
    path("agent/samples/<int:pk>/", AgentSampleView.as_view(), name="agent-sample"),
    path("agent/unparsed/", AgentUnparsedView.as_view(), name="agent-unparsed"),
    path("agent/raw-files/", AgentRawFileView.as_view(), name="agent-raw-files"),
    path("agent/raw-files/<str:sha256>/", AgentRawChunkView.as_view(), name="agent-raw-file-chunk"),
    path("instruments/<slug:slug>/raw-files/", InstrumentRawFilesView.as_view(), name="instrument-raw-files"),
    path(
        "instruments/<slug:slug>/raw-files/zip/", InstrumentRawFilesZipView.as_view(), name="instrument-raw-files-zip"
    ),
    path("raw-files/<int:pk>/", RawFileDownloadView.as_view(), name="raw-file-download"),
    path(
        "instruments/<slug:slug>/raw-files/server/",
        InstrumentServerCopiesView.as_view(),
        name="instrument-server-raw-copies",
    ),
    path(
        "instruments/<slug:slug>/raw-files/server/<int:source_id>/<str:name>/",
        ServerCopyDownloadView.as_view(),
        name="server-raw-copy-download",
    ),
    path(
        "instruments/<slug:slug>/shares/",
        InstrumentSharesViewSet.as_view({"get": "list", "post": "create"}),
        name="instrument-shares",
    ),
    path(
        "instruments/<slug:slug>/shares/<str:kind>/<path:name>/",
        InstrumentSharesViewSet.as_view({"delete": "destroy"}),
        name="instrument-share-detail",
    ),
    *router.urls,
]
