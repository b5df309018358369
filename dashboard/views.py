from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    """A landing page that shows no fleet data: the dashboard with login comes later."""
    return render(request, "dashboard/index.html")
