"""Create the first admin token and dashboard admin, once.

Prints JSON: the token and the admin's password, each null when one exists already.
"""

import json

from django.contrib.auth.models import User
from django.core.management.base import BaseCommand

from controlplane.auth import create_token
from controlplane.models import ApiToken
from controlplane.users import create_or_reset


class Command(BaseCommand):
    help = "Create the first admin token if there is none; print it as JSON once."

    def add_arguments(self, parser):
        parser.add_argument("--name", default="admin")
        parser.add_argument(
            "--force",
            action="store_true",
            help="create a new admin token even if one exists (after SECRET_KEY was rotated, "
            "every stored token stops matching)",
        )

    def handle(self, *args, **options):
        password = None
        if not User.objects.exists():
            _, password, _ = create_or_reset("admin", "admin")
        if not options["force"] and ApiToken.objects.filter(role="admin", revoked=False).exists():
            self.stdout.write(json.dumps({"token": None, "password": password}))
            return
        token, _ = create_token(options["name"], "admin")
        self.stdout.write(json.dumps({"token": token, "password": password}))
