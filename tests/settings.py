"""Test settings: the production settings with a throwaway FLOTILLA_HOME and key.

Like datasette's tests, no third-party plugin entry points load here.
"""

import os
import tempfile

os.environ.setdefault("FLOTILLA_HOME", tempfile.mkdtemp(prefix="flotilla-tests-"))
os.environ.setdefault("SECRET_KEY", "test-secret-key-" + "x" * 40)
os.environ["FLOTILLA_LOAD_ENTRYPOINTS"] = "false"

from controlplane.settings import *  # noqa: E402,F403

# Unit and API tests run reconcilers by calling them; the end-to-end tests run a
# real worker in other processes. So nothing here enqueues Celery tasks.
FLOTILLA_DISPATCH_DISABLED = True
# The hub reads the change log from its own thread and connection, which cannot see
# a test's uncommitted transaction; tests/test_watch_hub.py covers it with real commits.
FLOTILLA_WATCH_HUB = False
SECURE_COOKIES = False
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
