from django.urls import path

from pages import quarantine_views
from pages import reading_views as views

app_name = "collection"

urlpatterns = [
    path("plot/", views.PlotView.as_view(), name="plot"),
    path("plot/channels/", views.ChannelSearchView.as_view(), name="plot-channels"),
    path("alarms/", views.AlarmListView.as_view(), name="alarms"),
    path("alarms/<int:pk>/acknowledge/", views.AlarmAcknowledgeView.as_view(), name="alarm-acknowledge"),
    path("quarantine/", quarantine_views.QuarantineView.as_view(), name="quarantine"),
    path("quarantine/<int:pk>/", quarantine_views.QuarantineDetailView.as_view(), name="quarantine-detail"),
    path("quarantine/replay/", quarantine_views.QuarantineReplayView.as_view(), name="quarantine-replay"),
    path("quarantine/accept/", quarantine_views.QuarantineAcceptView.as_view(), name="quarantine-accept"),
    path("quarantine/export.csv", quarantine_views.QuarantineExportView.as_view(), name="quarantine-export"),
]
