"""What every page's navigation bar shows: the number of active alarms the user may see.

Lazy: the count is queried only when a template uses it (the collaborators' base layout does; the
admin does not).
"""

from __future__ import annotations

from django.conf import settings
from django.utils.functional import SimpleLazyObject

from accounts import permissions
from collection.alarms.models import AlarmEvent


def navigation(request) -> dict:
    def active_alarms() -> int:
        user = getattr(request, "user", None)
        if user is None or not user.is_authenticated:
            return 0
        return permissions.restrict(AlarmEvent.objects.filter(cleared_at__isnull=True), user).count()

    return {"nav_active_alarms": SimpleLazyObject(active_alarms), "site_time_zone": settings.TIME_ZONE}
