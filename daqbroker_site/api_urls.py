"""``/api/v1/``: one router; every view derives from ``accounts.api.base`` (see its docstring)."""

from django.urls import path
from rest_framework.routers import DefaultRouter

from accounts.api.views import AgentViewSet, ApiTokenViewSet, InstrumentSharesViewSet, WhoAmIView

router = DefaultRouter()
router.register("agents", AgentViewSet, basename="agent")
router.register("tokens", ApiTokenViewSet, basename="token")

urlpatterns = [
    path("whoami/", WhoAmIView.as_view(), name="whoami"),
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
