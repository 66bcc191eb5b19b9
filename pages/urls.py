from django.urls import path

from pages import raw_files, runs, source_setup, views

app_name = "instruments"

urlpatterns = [
    path("", views.HomeView.as_view(), name="home"),
    path("instruments/<slug:slug>/", views.InstrumentDetailView.as_view(), name="detail"),
    path("instruments/<slug:slug>/logbook/", views.LogbookAddView.as_view(), name="logbook-add"),
    path("instruments/<slug:slug>/sources/<int:pk>/reread/", views.SourceRereadView.as_view(), name="source-reread"),
    path("instruments/<slug:slug>/sharing/", views.SharingView.as_view(), name="sharing"),
    path("instruments/<slug:slug>/raw-files/", raw_files.RawFilesView.as_view(), name="raw-files"),
    path("instruments/<slug:slug>/raw-files/zip/", raw_files.RawFilesZipView.as_view(), name="raw-files-zip"),
    path("instruments/<slug:slug>/raw-files/<int:pk>/", raw_files.RawFileView.as_view(), name="raw-file"),
    path(
        "instruments/<slug:slug>/raw-files/server/<int:source_id>/<str:name>/",
        raw_files.ServerCopyView.as_view(),
        name="server-raw-copy",
    ),
    path("instruments/<slug:slug>/sharing/remove/", views.SharingRemoveView.as_view(), name="sharing-remove"),
    path("instruments/<slug:slug>/sources/new/", source_setup.SourceSetupView.as_view(), name="source-new"),
    path("instruments/<slug:slug>/sources/<int:pk>/edit/", source_setup.SourceSetupView.as_view(), name="source-edit"),
    path("runs/", runs.RunListIndexView.as_view(), name="runlists"),
    path("runs/<slug:slug>/", runs.RunListDetailView.as_view(), name="runlist"),
    path("runs/<slug:slug>/start/", runs.RunStartView.as_view(), name="runlist-start"),
    path("runs/<slug:slug>/stop/", runs.RunStopView.as_view(), name="runlist-stop"),
    path("runs/<slug:slug>/download/", runs.RunListDownloadView.as_view(), name="runlist-download"),
    path("runs/<slug:slug>/runs/<str:label>/comment/", runs.RunCommentView.as_view(), name="runlist-comment"),
    path("runs/<slug:slug>/sharing/", runs.RunListSharingView.as_view(), name="runlist-sharing"),
    path("runs/<slug:slug>/sharing/remove/", runs.RunListSharingRemoveView.as_view(), name="runlist-sharing-remove"),
    path("dashboards/", views.DashboardListView.as_view(), name="dashboards"),
    path("dashboards/new/", views.DashboardCreateView.as_view(), name="dashboard-create"),
    path("dashboards/<int:pk>/", views.DashboardDetailView.as_view(), name="dashboard"),
    path("dashboards/<int:pk>/edit/", views.DashboardEditView.as_view(), name="dashboard-edit"),
    path("dashboards/<int:pk>/delete/", views.DashboardDeleteView.as_view(), name="dashboard-delete"),
    path("dashboards/<int:pk>/panels/", views.DashboardPanelAddView.as_view(), name="dashboard-panel-add"),
    path("dashboards/<int:pk>/panels/<int:panel>/", views.DashboardPanelView.as_view(), name="dashboard-panel"),
    path(
        "dashboards/<int:pk>/panels/<int:panel>/options/",
        views.DashboardPanelOptionsView.as_view(),
        name="dashboard-panel-options",
    ),
]
