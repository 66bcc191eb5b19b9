"""The bench servers' URL conf: the product's routes, plus ``/bench/floor/``, a trivial endpoint behind
the same token authentication, scope checks and throttle as the ingest endpoint that answers ``{}``: the
floor a request costs in this stack before any ingest work. Also ``StatementCountMiddleware``, which
answers each request's database statements in ``X-Bench-Statements`` (BEGIN/COMMIT not included)."""

from __future__ import annotations

from django.db import connections
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api.base import ScopedViewMixin
from accounts.authentication import BearerTokenAuthentication, RawBodySessionAuthentication
from collection.api.views import IngestRateThrottle
from daqbroker_site.urls import urlpatterns as product_urlpatterns


class FloorView(ScopedViewMixin, APIView):
    agent_access = True
    throttle_classes = [IngestRateThrottle]
    parser_classes = []
    authentication_classes = [BearerTokenAuthentication, RawBodySessionAuthentication]

    def post(self, request):
        return Response({})


class StatementCountMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        count = 0

        def counting(execute, sql, params, many, context):
            nonlocal count
            count += 1
            return execute(sql, params, many, context)

        with connections["default"].execute_wrapper(counting):
            response = self.get_response(request)
        response["X-Bench-Statements"] = str(count)
        return response


urlpatterns = [path("bench/floor/", FloorView.as_view()), *product_urlpatterns]
