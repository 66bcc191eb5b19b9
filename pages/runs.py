"""The run-list pages (docs/runs.md): the run lists, one run list's runs (with per-run statistics of chosen
channels), starting, stopping, comments, CSV, sharing.

Access goes through ``accounts.permissions`` (the run list's own owner and grants); every change through
the services of ``instruments.runs`` and ``accounts.services``, which check the level again and audit.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Model, Prefetch
from django.http import Http404, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect
from django.views.generic import FormView, TemplateView, View

from accounts import audit, permissions, services
from collection.services import run_statistics
from instruments import runs
from instruments.choices import ColumnKind
from instruments.forms import ShareForm
from instruments.models import Channel, Run, RunList
from pages.views import PageMixin

RUNS_PER_PAGE = 50
SORTS = {"number": ("number", "stage"), "-number": ("-number", "-stage"), "start": ("start",), "-start": ("-start",)}


class RunListAccessMixin(PageMixin):
    """The run list named by the URL's ``slug``: 404 if hidden, 403 without ``required_level``."""

    def get_run_list(self) -> RunList:
        if not hasattr(self, "_run_list"):
            run_list = permissions.run_lists_for(self.request.user).filter(slug=self.kwargs["slug"]).first()
            if run_list is None:
                raise Http404("No such run list.")
            if self.required_level != permissions.VIEW and not permissions.has_perm(
                self.request.user, self.required_level, run_list
            ):
                raise PermissionDenied
            self._run_list = run_list
        return self._run_list


class RunListIndexView(PageMixin, TemplateView):
    template_name = "instruments/runlists.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        run_lists = (
            permissions.run_lists_for(self.request.user)
            .select_related("owner")
            .prefetch_related("instruments", Prefetch("runs", Run.objects.filter(end__isnull=True), to_attr="active"))
        )
        visible = set(permissions.instruments_visible_to(self.request.user).values_list("pk", flat=True))
        context["run_lists"] = [
            (run_list, [i for i in run_list.instruments.all() if i.pk in visible]) for run_list in run_lists
        ]
        return context


def _filters(request, columns) -> list[tuple[Any, str]]:
    """``?p.energy=3.5&p.target=gold`` -> [(column, "3.5"), ...] for the columns the list has."""
    chosen = []
    for column in columns:
        value = request.GET.get(f"p.{column.name}", "").strip()
        if value:
            chosen.append((column, value))
    return chosen


class RunListDetailView(RunListAccessMixin, TemplateView):
    """The runs (sortable, filterable by parameter values, paginated), start/stop, comments, plot links."""

    template_name = "instruments/runlist.html"

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        run_list = self.get_run_list()
        user = self.request.user
        columns = list(run_list.columns.all())
        runs_qs = Run.objects.filter(run_list=run_list).prefetch_related("comments")
        errors = []
        filters = _filters(self.request, columns)
        for column, text in filters:
            try:
                value = column.parse(text)
            except ValueError as exc:
                errors.append(f"{column.name}: {exc}")
                continue
            if column.kind == ColumnKind.NUMBER and value is not None:
                # JSON numbers compare as numbers on every engine through a range of one value.
                runs_qs = runs_qs.filter(**{f"parameters__{column.name}__gte": value}).filter(
                    **{f"parameters__{column.name}__lte": value}
                )
            else:
                runs_qs = runs_qs.filter(**{f"parameters__{column.name}": value})
        sort = self.request.GET.get("sort", "-number")
        if sort not in SORTS:
            sort = "-number"
        page = Paginator(runs_qs.order_by(*SORTS[sort]), RUNS_PER_PAGE).get_page(self.request.GET.get("page"))
        level = permissions.level_on(user, run_list)
        may_collect = level in (permissions.COLLECT, permissions.CHANGE, permissions.SHARE)
        numeric = list(
            permissions.restrict(Channel.objects.filter(instrument__in=run_list.instruments.all()), user)
            .exclude(kind="text")
            .select_related("instrument")
            .order_by("instrument__name", "name")[:50]
        )
        plottable = [c.pk for c in numeric[:6]]
        wanted = {ref for part in self.request.GET.getlist("stats") for ref in part.split(",")}
        stats_channels = [c for c in numeric if str(c.pk) in wanted][: run_statistics.MAX_CHANNELS]
        stats_rows = run_statistics.per_run_statistics(list(page.object_list), stats_channels) if stats_channels else []
        rows = [
            {"run": run, "values": [run.parameters.get(c.name) for c in columns], "comments": list(run.comments.all())}
            for run in page.object_list
        ]
        context.update(
            run_list=run_list,
            columns=columns,
            rows=rows,
            page=page,
            sort=sort,
            filters={column.name: text for column, text in filters},
            filter_errors=errors,
            query_without_page=self._query(exclude=("page",)),
            query_without_sort=self._query(exclude=("page", "sort")),
            active=runs.active_run(run_list),
            may_collect=may_collect,
            may_share=level == permissions.SHARE,
            plot_channels=",".join(str(pk) for pk in plottable),
            numeric_channels=numeric,
            stats_channels=stats_channels,
            stats_rows=stats_rows,
            stats_refs=",".join(f"{c.instrument.slug}/{c.slug}" for c in stats_channels),
            instruments=permissions.restrict(run_list.instruments.all(), user),
        )
        return context

    def _query(self, exclude: tuple[str, ...]) -> str:
        query = self.request.GET.copy()
        for key in exclude:
            query.pop(key, None)
        return query.urlencode()


def _errors(exc: ValidationError) -> str:
    if hasattr(exc, "error_dict"):
        return "; ".join(f"{name}: {' '.join(texts)}" for name, texts in exc.message_dict.items())
    return " ".join(exc.messages)


class RunStartView(RunListAccessMixin, View):
    required_level = permissions.COLLECT

    def post(self, request, slug):
        run_list = self.get_run_list()
        parameters = {
            column.name: request.POST.get(f"param.{column.name}", "")
            for column in run_list.columns.all()
            if column.kind != ColumnKind.BOOLEAN or f"param.{column.name}" in request.POST
        }
        for column in run_list.columns.filter(kind=ColumnKind.BOOLEAN):
            parameters.setdefault(column.name, "no")
        number_text = request.POST.get("number", "").strip()
        try:
            number = int(number_text) if number_text else None
            stage = int(request.POST.get("stage") or 0)
        except ValueError:
            messages.error(request, "The run number and stage are whole numbers.")
            return redirect(run_list.get_absolute_url())
        try:
            run, ended = runs.start_run(
                run_list,
                number=number,
                stage=stage,
                parameters=parameters,
                summary=request.POST.get("summary", ""),
                **audit.origin(request),
            )
        except ValidationError as exc:
            messages.error(request, f"The run was not started: {_errors(exc)}")
        else:
            ended_text = f" (run {ended.label} ended)" if ended else ""
            messages.success(request, f"Run {run.label} started{ended_text}.")
        return redirect(run_list.get_absolute_url())


class RunStopView(RunListAccessMixin, View):
    required_level = permissions.COLLECT

    def post(self, request, slug):
        run_list = self.get_run_list()
        try:
            run = runs.stop_run(run_list, **audit.origin(request))
        except ValidationError as exc:
            messages.error(request, _errors(exc))
        else:
            if run is None:
                messages.info(request, "No run was active.")
            else:
                messages.success(request, f"Run {run.label} stopped.")
        return redirect(run_list.get_absolute_url())


class RunCommentView(RunListAccessMixin, View):
    required_level = permissions.COLLECT

    def post(self, request, slug, label):
        run_list = self.get_run_list()
        try:
            run = runs.find_run(run_list, label)
        except ValueError:
            run = None
        if run is None:
            raise Http404("No such run.")
        try:
            runs.add_comment(run, request.POST.get("text", ""), **audit.origin(request))
        except ValidationError as exc:
            messages.error(request, f"The comment was not saved: {_errors(exc)}")
        else:
            messages.success(request, f"Comment added to run {run.label}.")
        return redirect(run_list.get_absolute_url())


class RunListDownloadView(RunListAccessMixin, View):
    """The whole run list as CSV (streamed) or Parquet (``?as=parquet``), a typed column per parameter."""

    def get(self, request, slug):
        run_list = self.get_run_list()
        kind = request.GET.get("as", "csv")
        if kind not in ("csv", "parquet"):
            kind = "csv"
        rows = Run.objects.filter(run_list=run_list).order_by("number", "stage").iterator(chunk_size=500)
        if kind == "parquet":
            try:
                body = runs.run_list_parquet(run_list, rows)
            except ValidationError as exc:
                messages.error(request, _errors(exc))
                return redirect(run_list.get_absolute_url())
            response: HttpResponseBase = HttpResponse(body, content_type="application/vnd.apache.parquet")
            response["Content-Disposition"] = f'attachment; filename="{run_list.slug}-runs.parquet"'
            return response
        response = StreamingHttpResponse(runs.run_list_csv_rows(run_list, rows), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{run_list.slug}-runs.csv"'
        return response


class RunListSharingView(RunListAccessMixin, FormView):
    """Who may see the run list at which level; share with a user or group (the one sharing service)."""

    required_level = permissions.SHARE
    template_name = "instruments/runlist_sharing.html"
    form_class = ShareForm

    def get(self, request, *args, **kwargs):
        self.get_run_list()
        return super().get(request, *args, **kwargs)

    def post(self, request, *args, **kwargs):
        self.get_run_list()
        return super().post(request, *args, **kwargs)

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        run_list = self.get_run_list()
        context.update(run_list=run_list, shares=services.shares_of(run_list))
        return context

    def form_valid(self, form):
        run_list = self.get_run_list()
        principal, level = form.cleaned_data["principal"], form.cleaned_data["level"]
        try:
            changed = services.share(run_list, principal, level, **audit.origin(self.request))
        except ValidationError as exc:
            form.add_error("name", exc.messages)
            return self.form_invalid(form)
        name = services.Share(form.cleaned_data["kind"], principal, level).name
        if changed:
            messages.success(self.request, f"{name} now has {level} access to {run_list.name}.")
        else:
            messages.info(self.request, f"{name} already had {level} access.")
        return HttpResponseRedirect(self.request.path)


class RunListSharingRemoveView(RunListAccessMixin, View):
    required_level = permissions.SHARE

    def post(self, request, slug):
        run_list = self.get_run_list()
        kind, name = request.POST.get("kind"), request.POST.get("name", "")
        principal: Model | None
        if kind == "user":
            model = get_user_model()
            principal = model.objects.filter(**{model.USERNAME_FIELD: name}).first()
        elif kind == "group":
            principal = Group.objects.filter(name=name).first()
        else:
            principal = None
        if principal is not None and services.unshare(run_list, principal, **audit.origin(request)):
            messages.success(request, f"{name} no longer has access to {run_list.name}.")
        else:
            messages.info(request, f"{name or 'That'} had no access to remove.")
        return redirect("instruments:runlist-sharing", slug=run_list.slug)
