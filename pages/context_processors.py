"""What every page's navigation bar shows: the number of active alarms the user may see.

Lazy: the count is queried only when a template uses it (the collaborators' base layout does; the
admin does not). It stops at ``BADGE_LIMIT`` ("99+", ``accounts.paging``): every page pays for it.
"""

from __future__ import annotations

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from accounts import permissions
from accounts.paging import BoundedCount, bounded_count
from collection.alarms.models import AlarmEvent

BADGE_LIMIT = 99


def navigation(request) -> dict:
    def active_alarms() -> BoundedCount:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return BoundedCount(0, exact=True, limit=BADGE_LIMIT)
        active = permissions.restrict(AlarmEvent.objects.filter(cleared_at__isnull=True), user)
        return bounded_count(active, BADGE_LIMIT)

    return {"nav_active_alarms": SimpleLazyObject(active_alarms), "site_time_zone": settings.TIME_ZONE}
