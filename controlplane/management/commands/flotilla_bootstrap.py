"""Create the first admin token, once. Prints JSON: the token, or null when one exists."""

import json

from django.core.management.base import BaseCommand

from controlplane.auth import create_token
from controlplane.models import ApiToken


class Command(BaseCommand):
    help = "Create the first admin token if there is none; print it as JSON once."

    def add_arguments(self, parser):
        parser.add_argument("--name", default="admin")

    def handle(self, *args, **options):
        if ApiToken.objects.filter(role="admin", revoked=False).exists():
            self.stdout.write(json.dumps({"token": None}))
            return
        token, _ = create_token(options["name"], "admin")
        self.stdout.write(json.dumps({"token": token}))
