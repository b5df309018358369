"""A bootstrap token made outside the control plane (the Helm chart's Secret), stored by migrate."""

from __future__ import annotations

import logging

import pytest
from django.core.management import call_command
from django.test import override_settings

from controlplane import auth
from controlplane.models import ApiToken

pytestmark = pytest.mark.django_db

TOKEN = "flt_0123456789ab_" + "x" * 43
OTHER = "flt_ba9876543210_" + "y" * 43


def test_the_token_is_stored_as_a_digest_once_and_authenticates():
    assert auth.ensure_token("agent-bootstrap", "agent", TOKEN) is True
    assert auth.ensure_token("agent-bootstrap", "agent", TOKEN) is False  # idempotent
    row = ApiToken.objects.get(name="agent-bootstrap")
    assert row.prefix == "0123456789ab" and TOKEN not in (row.digest, row.prefix)
    assert auth.authenticate(f"Bearer {TOKEN}").role == "agent"


def test_a_rotated_secret_revokes_the_old_token():
    auth.ensure_token("agent-bootstrap", "agent", TOKEN)
    auth.ensure_token("agent-bootstrap", "agent", OTHER)
    assert ApiToken.objects.get(prefix="0123456789ab").revoked
    assert not ApiToken.objects.get(prefix="ba9876543210").revoked


def test_a_token_revoked_through_the_api_is_not_brought_back(caplog):
    auth.ensure_token("agent-bootstrap", "agent", TOKEN)
    auth.revoke("0123456789ab")
    with caplog.at_level(logging.WARNING):
        assert auth.ensure_token("agent-bootstrap", "agent", TOKEN) is False
    assert ApiToken.objects.get(prefix="0123456789ab").revoked
    assert "rotate its Secret" in caplog.text and TOKEN not in caplog.text


@pytest.mark.parametrize(
    "bad", ["", "flt_short_x", "flt_0123456789ab_" + "!" * 30, "tok_0123456789ab_" + "x" * 43]
)
def test_a_malformed_token_is_refused_with_the_expected_shape(bad):
    with pytest.raises(ValueError, match="flt_<12 hex>"):
        auth.ensure_token("agent-bootstrap", "agent", bad)


def test_a_prefix_taken_by_another_token_is_refused():
    auth.ensure_token("agent-bootstrap", "agent", TOKEN)
    with pytest.raises(ValueError, match="prefix"):
        auth.ensure_token("agent-bootstrap", "agent", "flt_0123456789ab_" + "z" * 43)


def test_migrate_registers_the_configured_bootstrap_token():
    with override_settings(FLOTILLA_AGENT_BOOTSTRAP_TOKEN=TOKEN):
        call_command("migrate", verbosity=0)
    assert ApiToken.objects.get(prefix="0123456789ab").role == "agent"


def test_migrate_without_a_configured_token_stores_none():
    with override_settings(FLOTILLA_AGENT_BOOTSTRAP_TOKEN=None):
        call_command("migrate", verbosity=0)
    assert not ApiToken.objects.filter(name="agent-bootstrap").exists()
