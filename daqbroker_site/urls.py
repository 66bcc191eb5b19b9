from django.contrib import admin
from django.urls import include, path

from accounts.passwords import admin_password_change
from daqbroker_site.favicon import favicon

admin.site.site_header = "DAQBroker administration"
admin.site.site_title = "DAQBroker"
admin.site.index_title = "Instruments, data and people"

urlpatterns = [
    # Before the admin's own: wrong old passwords count towards the login lockout (accounts.passwords).
    path("favicon.ico", favicon, name="favicon"),
    path("admin/password_change/", admin.site.admin_view(admin_password_change), name="admin-password-change"),
    path("admin/", admin.site.urls),
    path("api/v1/", include(("daqbroker_site.api_urls", "api"), namespace="api")),
    # The collaborators' pages (the root is their instrument list).
    path("", include("daqbroker_site.auth_pages")),
    path("", include("pages.urls")),
    path("", include("pages.reading_urls")),
]
