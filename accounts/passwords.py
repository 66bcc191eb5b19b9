"""Changing one's own password, with wrong old passwords limited like logins (django-axes).

The old password is checked through ``authenticate`` with the request, so django-axes counts a wrong one
exactly as a failed login for that user name from that address: after ``AXES_FAILURE_LIMIT``
(``DAQBROKER_LOGIN_FAILURE_LIMIT``) wrong ones, further attempts (and logins as that user from that
address) are refused for ``AXES_COOLOFF_TIME`` (``DAQBROKER_LOGIN_COOLOFF_MINUTES``) with the
locked-out page, and the lockout is written to the audit trail. Used by the collaborators' ``/password/``
page and the admin's own "Change password" (see ``daqbroker_site/urls.py``).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.forms import AdminPasswordChangeForm
from django.contrib.auth import authenticate
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import PasswordChangeForm
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse, reverse_lazy
from django.views.decorators.debug import sensitive_variables

from accounts import audit
from accounts.choices import AuditAction


class GuardedPasswordChangeMixin:
    """Checks the old password through the login lockout; needs ``request`` as a keyword argument."""

    user: Any
    cleaned_data: dict
    error_messages: dict

    def __init__(self, user, *args: Any, request: HttpRequest, **kwargs: Any) -> None:
        self.request = request
        super().__init__(user, *args, **kwargs)  # type: ignore[call-arg]

    @sensitive_variables("old_password")
    def clean_old_password(self) -> str:
        old_password = self.cleaned_data["old_password"]
        checked = authenticate(self.request, username=self.user.get_username(), password=old_password)
        if getattr(self.request, "axes_locked_out", False):
            audit.record(AuditAction.PASSWORD_LOCKED_OUT, obj=self.user, **audit.origin(self.request))
            raise ValidationError("Too many wrong passwords: changing it is paused.", code="locked_out")
        if checked is None or checked.pk != self.user.pk:
            raise ValidationError(self.error_messages["password_incorrect"], code="password_incorrect")
        return old_password

    def save(self, commit: bool = True):
        user = super().save(commit)  # type: ignore[misc]
        audit.record(AuditAction.PASSWORD_CHANGED, obj=user, **audit.origin(self.request))
        return user


class GuardedPasswordChangeForm(GuardedPasswordChangeMixin, PasswordChangeForm):
    pass


class GuardedAdminPasswordChangeForm(GuardedPasswordChangeMixin, AdminPasswordChangeForm):
    pass


class GuardedPasswordChangeView(auth_views.PasswordChangeView):
    form_class = GuardedPasswordChangeForm

    def get_form_kwargs(self) -> dict:
        return {**super().get_form_kwargs(), "request": self.request}


class PasswordChangeView(LoginRequiredMixin, GuardedPasswordChangeView):
    """The collaborators' ``/password/``."""

    login_url = reverse_lazy("login")


def admin_password_change(request: HttpRequest) -> HttpResponseBase:
    """The admin's own "Change password" (``AdminSite.password_change``) with the guarded form."""
    request.current_app = admin.site.name
    options: dict[str, Any] = {
        "form_class": GuardedAdminPasswordChangeForm,
        "success_url": reverse("admin:password_change_done", current_app=admin.site.name),
        "extra_context": admin.site.each_context(request),
    }
    if admin.site.password_change_template is not None:
        options["template_name"] = admin.site.password_change_template
    return GuardedPasswordChangeView.as_view(**options)(request)
