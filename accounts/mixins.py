"""The one mixin for pages (class-based views) over instruments and what belongs to them.

    class ChannelPlotView(InstrumentAccessMixin, DetailView):
        model = Channel                      # get_queryset() is narrowed to what the user may see

    class InstrumentEditView(InstrumentAccessMixin, AuditedFormMixin, UpdateView):
        model = Instrument
        required_level = "change"            # visible but not changeable: 403

    class InstrumentPlotsView(InstrumentAccessMixin, TemplateView):
        def get_context_data(self, **kwargs):
            instrument = self.get_instrument()   # from the URL's ``instrument`` (or ``slug``) keyword

Anonymous visitors are sent to the login page. An object the user may not see answers 404 (its
existence is not revealed), one they see without the required level 403.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404
from django.utils.http import url_has_allowed_host_and_scheme

from accounts import audit, permissions
from accounts.choices import AuditAction
from instruments.models import Instrument

if TYPE_CHECKING:
    # What the mixins extend, for the type checker only: at run time they are plain mixins.
    # They go with detail, list, template and edit views, so they name only what they use.
    from typing import Any

    from django.db.models import QuerySet
    from django.forms import BaseForm
    from django.http import HttpResponse
    from django.views.generic import View

    class _AccessBase(View):
        def get_queryset(self) -> QuerySet[Any]: ...
        def get_object(self, queryset: QuerySet[Any] | None = None) -> Any: ...

    class _FormBase(View):
        object: Any

        def form_valid(self, form: BaseForm) -> HttpResponse: ...
else:
    _AccessBase = _FormBase = object


class InstrumentAccessMixin(LoginRequiredMixin, _AccessBase):
    required_level: str = permissions.VIEW
    instrument_url_kwarg: str = "instrument"

    def get_queryset(self):
        return permissions.restrict(super().get_queryset(), self.request.user, permissions.VIEW)

    def get_object(self, queryset=None):
        obj = super().get_object(queryset)  # 404 unless visible: get_queryset is narrowed
        self.check_level(obj)
        return obj

    def check_level(self, obj) -> None:
        if self.required_level != permissions.VIEW and not permissions.has_perm(
            self.request.user, self.required_level, obj
        ):
            raise PermissionDenied

    def get_instrument(self) -> Instrument:
        """The instrument named by the URL (slug), 404 if hidden, 403 without ``required_level``."""
        if not hasattr(self, "_instrument"):
            slug = self.kwargs.get(self.instrument_url_kwarg) or self.kwargs.get("slug")
            instrument = permissions.instruments_visible_to(self.request.user).filter(slug=slug).first()
            if instrument is None:
                raise Http404("No such instrument.")
            self.check_level(instrument)
            self._instrument = instrument
        return self._instrument


class AuditedFormMixin(_FormBase):
    """For edit pages (ModelForm views): records what changed in the audit trail, like the API does."""

    @transaction.atomic  # the change and its audit event stand or fall together
    def form_valid(self, form):
        creating = form.instance.pk is None
        before = {name: form.initial.get(name) for name in form.changed_data}
        response = super().form_valid(form)
        obj = self.object
        if creating:
            changes = {name: form.cleaned_data.get(name) for name in form.fields}
            audit.record(AuditAction.CONFIG_CREATED, obj=obj, changes=changes, **audit.origin(self.request))
        elif form.changed_data:
            after = {name: form.cleaned_data.get(name) for name in form.changed_data}
            changes = audit.diff(before, after)
            audit.record(AuditAction.CONFIG_CHANGED, obj=obj, changes=changes, **audit.origin(self.request))
        return response


def local_next(request, default: str) -> str:
    """The ``next`` address posted with a form when it stays on this site (never an open redirect), else ``default``."""
    back = request.POST.get("next", "")
    if back and url_has_allowed_host_and_scheme(
        back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return back
    return default
