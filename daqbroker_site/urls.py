from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "DAQBroker administration"
admin.site.site_title = "DAQBroker"
admin.site.index_title = "Instruments, data and people"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include(("daqbroker_site.api_urls", "api"), namespace="api")),
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
