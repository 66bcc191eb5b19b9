from django.urls import path

from pages import reading_views as views

app_name = "collection"

urlpatterns = [
    path("plot/", views.PlotView.as_view(), name="plot"),
    path("plot/channels/", views.ChannelSearchView.as_view(), name="plot-channels"),
    path("alarms/", views.AlarmListView.as_view(), name="alarms"),
    path("alarms/<int:pk>/acknowledge/", views.AlarmAcknowledgeView.as_view(), name="alarm-acknowledge"),
]
