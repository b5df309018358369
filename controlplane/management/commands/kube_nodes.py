"""Mirror Kubernetes Nodes into Flotilla Nodes: once, or list-and-watch until stopped."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.envhelpers import ConfigError
from controlplane.kube import nodes
from controlplane.kube.client import core_api, server_of


class Command(BaseCommand):
    help = "Discover Kubernetes Nodes (FLOTILLA_KUBERNETES=true): list once, or list and watch."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="list and mirror once, then exit")
        parser.add_argument("--cluster", default=None, help="Flotilla cluster of Nodes discovery creates")

    def handle(self, *args, **options):
        if not settings.FLOTILLA_KUBERNETES:
            raise CommandError("Kubernetes node discovery is off; set FLOTILLA_KUBERNETES=true")
        try:
            api = core_api()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        if options["once"]:
            version, counts = nodes.relist(api, options["cluster"])
            self.stdout.write(f"{server_of(api.api_client)} at version {version}: {dict(counts)}")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"watching Kubernetes nodes at {server_of(api.api_client)}")
        nodes.run(api, stop, options["cluster"])
