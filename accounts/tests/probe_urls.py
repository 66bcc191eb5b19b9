"""Test-only API viewsets and pages built on the accounts base classes, exactly as real ones would be.

They let the accounts tests check what the base viewset and the page mixin guarantee (visibility, 404
for hidden objects, levels, audit of edits, query counts) without depending on other apps' views.
"""

from django import forms
from django.http import HttpResponse
from django.urls import include, path
from django.views.generic import DetailView, ListView, UpdateView, View
from rest_framework import serializers
from rest_framework.routers import SimpleRouter

from accounts import permissions
from accounts.api.base import PermittedSlugRelatedField, ScopedModelViewSet, ScopedReadOnlyModelViewSet
from accounts.mixins import AuditedFormMixin, InstrumentAccessMixin
from daqbroker_site.urls import urlpatterns as site_urlpatterns
from instruments.models import Channel, Instrument

# --- API -------------------------------------------------------------------------------------------


class InstrumentRow(serializers.ModelSerializer):
    owner = serializers.CharField(source="owner.username")

    class Meta:
        model = Instrument
        fields = ["id", "slug", "name", "owner"]


class InstrumentRows(ScopedReadOnlyModelViewSet):
    queryset = Instrument.objects.select_related("owner").order_by("slug")
    serializer_class = InstrumentRow
    lookup_field = "slug"


class ChannelRow(serializers.ModelSerializer):
    instrument = PermittedSlugRelatedField(queryset=Instrument.objects.all())  # change level by default

    class Meta:
        model = Channel
        fields = ["id", "instrument", "name", "slug", "units", "description"]


class ChannelRows(ScopedModelViewSet):
    queryset = Channel.objects.select_related("instrument").order_by("id")
    serializer_class = ChannelRow
    # A viewset that sets its own permission classes still gets the base ones.
    permission_classes = []


router = SimpleRouter()
router.register("rows", InstrumentRows, basename="rows")
router.register("channels", ChannelRows, basename="channels")

# --- pages -----------------------------------------------------------------------------------------


class InstrumentPage(InstrumentAccessMixin, DetailView):
    model = Instrument

    def render_to_response(self, context, **kwargs):
        return HttpResponse(f"instrument {self.object.slug}")


class InstrumentDescriptionForm(forms.ModelForm):
    class Meta:
        model = Instrument
        fields = ["description", "location"]


class InstrumentEditPage(InstrumentAccessMixin, AuditedFormMixin, UpdateView):
    model = Instrument
    form_class = InstrumentDescriptionForm
    required_level = permissions.CHANGE
    success_url = "/done/"

    def render_to_response(self, context, **kwargs):
        return HttpResponse(f"edit {self.object.slug}")


class ChannelListPage(InstrumentAccessMixin, ListView):
    model = Channel

    def render_to_response(self, context, **kwargs):
        return HttpResponse(" ".join(sorted(c.slug for c in context["object_list"])))


class InstrumentSharingPage(InstrumentAccessMixin, View):
    required_level = permissions.SHARE

    def get(self, request, instrument):
        return HttpResponse(f"sharing {self.get_instrument().slug}")


urlpatterns = [
    path("api/", include(router.urls)),
    path("pages/instruments/<slug:slug>/", InstrumentPage.as_view()),
    path("pages/instruments/<slug:slug>/edit/", InstrumentEditPage.as_view()),
    path("pages/channels/", ChannelListPage.as_view()),
    path("pages/instruments/<slug:instrument>/sharing/", InstrumentSharingPage.as_view()),
    # and the whole site, whose templates (403 and 404 pages, the login) name its routes
    *site_urlpatterns,
]
