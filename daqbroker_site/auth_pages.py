"""Log in, log out and change password for collaborators: Django's auth views with the site's templates.

Logging in goes through Django's authentication form, which hands the request to the backends, so the
django-axes lockout (accounts) applies here exactly as in the admin; the locked-out page is
``templates/registration/locked_out.html`` (``AXES_LOCKOUT_TEMPLATE``). Wrong old passwords on the
password page count the same way (``accounts.passwords``).
"""

from django.contrib.auth import views as auth_views
from django.contrib.auth.mixins import LoginRequiredMixin
from django.urls import path, reverse_lazy

from accounts.passwords import PasswordChangeView


class PasswordChangeDoneView(LoginRequiredMixin, auth_views.PasswordChangeDoneView):
    login_url = reverse_lazy("login")


urlpatterns = [
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("password/", PasswordChangeView.as_view(), name="password_change"),
    path("password/done/", PasswordChangeDoneView.as_view(), name="password_change_done"),
]
