"""Run Workloads of `executor: kubernetes` Clusters as Pods: one sync, or sync and watch."""

import signal
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from common.envhelpers import ConfigError
from controlplane.kube import pods
from controlplane.kube.client import core_api, server_of


class Command(BaseCommand):
    help = "The Kubernetes executor (FLOTILLA_KUBERNETES_EXECUTOR=true): sync once, or sync and watch Pods."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="sync Pods and Workloads once, then exit")

    def handle(self, *args, **options):
        if not settings.FLOTILLA_KUBERNETES_EXECUTOR:
            raise CommandError("the Kubernetes executor is off; set FLOTILLA_KUBERNETES_EXECUTOR=true")
        try:
            api = core_api()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        where = f"{server_of(api.api_client)} namespace {pods.namespace()}"
        if options["once"]:
            try:
                version, counts = pods.sync(api)
            except ConfigError as exc:
                raise CommandError(str(exc)) from None
            self.stdout.write(f"{where} at version {version}: {dict(counts)}")
            return
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        self.stdout.write(f"running Workloads as Pods at {where}")
        pods.run(api, stop)
