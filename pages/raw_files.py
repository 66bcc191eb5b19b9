"""An instrument's raw files, as agents shipped them (browse, download one, or a zip of a selection), and the
raw copies the server keeps of the files its own file sources read (browse, download one).

Whoever may view the instrument (``PageMixin``: hidden answers 404). The bytes come from the archive through
the same helpers as the API (``collection.api.raw_files``); docs/raw-files.md.
"""

from __future__ import annotations

from django.http import Http404, HttpResponseBadRequest
from django.views.generic import ListView, View

from collection.api.raw_files import file_response, server_copy_response, zip_response
from collection.models import RawFile
from collection.services import raw_files
from pages.views import PageMixin


class RawFilesView(PageMixin, ListView):
    template_name = "collection/raw_files.html"
    paginate_by = 100

    def get_queryset(self):
        self.instrument = self.get_instrument()
        queryset = RawFile.objects.filter(instrument=self.instrument).select_related("source")
        query = self.request.GET.get("q", "").strip()
        if query:
            queryset = queryset.filter(name__icontains=query)
        return queryset

    def get_context_data(self, **kwargs):
        return super().get_context_data(
            instrument=self.instrument,
            query=self.request.GET.get("q", ""),
            max_zip=raw_files.MAX_ZIP_FILES,
            server_copies=raw_files.server_copies(self.instrument, self.request.GET.get("q", "").strip()),
            **kwargs,
        )


class RawFileView(PageMixin, View):
    def get(self, request, slug: str, pk: int):
        instrument = self.get_instrument()
        raw_file = RawFile.objects.filter(instrument=instrument, pk=pk).first()
        if raw_file is None:
            raise Http404("No such raw file.")
        return file_response(raw_file)


class RawFilesZipView(PageMixin, View):
    def get(self, request, slug: str):
        response = zip_response(self.get_instrument(), request.GET.getlist("id"))
        if response is None:
            return HttpResponseBadRequest(f"Tick 1 to {raw_files.MAX_ZIP_FILES} files.")
        return response


class ServerCopyView(PageMixin, View):
    def get(self, request, slug: str, source_id: int, name: str):
        return server_copy_response(self.get_instrument(), source_id, name)
