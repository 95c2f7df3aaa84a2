"""Settings: the admin token's checks and the masking of secrets in what is logged."""

from __future__ import annotations

import pytest

from exchange import settings


@pytest.mark.parametrize("token", [
    "change-me-to-at-least-24-characters",  # deploy/env.example
    "CHANGE-ME-at-least-24-characters",  # deploy/k8s and deploy/systemd examples
    "please_CHANGE_ME_0123456789abcdef",
    "short-but-random-Xy7",
])
def test_a_placeholder_or_short_admin_token_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="EXCHANGE_ADMIN_TOKEN"):
        settings.load({"EXCHANGE_ADMIN_TOKEN": token})


def test_a_random_admin_token_is_taken_and_never_described() -> None:
    token = "q3VbT0rY9c1sWm8kZ2pL5nHx7dFa4eJg"
    s = settings.load({"EXCHANGE_ADMIN_TOKEN": token})
    assert s.admin_token == token
    assert token not in repr(settings.describe(s))


@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://app:s3cret@db:5432/exchange", "postgresql://app:***@db:5432/exchange"),
    ("postgresql://app:p@ss@db/exchange", "postgresql://app:***@db/exchange"),  # a raw '@' in the password
    ("postgresql://app:s3/cr?e#t@db/exchange", "postgresql://app:***@db/exchange"),  # and '/', '?', '#'
    ("postgresql://app@db/exchange?sslmode=require&password=s3cret",
     "postgresql://app@db/exchange?sslmode=require&password=***"),
    ("postgresql:///exchange?host=/run/pg&PASSWORD=s3cret", "postgresql:///exchange?host=/run/pg&PASSWORD=***"),
    ("postgresql://db/exchange", "postgresql://db/exchange"),
])
def test_database_passwords_are_masked_in_the_description(url: str, masked: str) -> None:
    described = settings.describe(settings.load({"EXCHANGE_DATABASE_URL": url}))
    assert described["database_url"] == masked
    assert "s3cret" not in repr(described) and "p@ss" not in repr(described) and "cr?e" not in repr(described)


def test_trusted_proxies_are_addresses_or_networks() -> None:
    s = settings.load({"EXCHANGE_TRUSTED_PROXIES": "127.0.0.1, ::1,172.28.0.0/24"})
    assert [str(n) for n in s.trusted_proxies] == ["127.0.0.1/32", "::1/128", "172.28.0.0/24"]
    assert settings.describe(s)["trusted_proxies"] == ["127.0.0.1/32", "::1/128", "172.28.0.0/24"]
    with pytest.raises(ValueError, match="EXCHANGE_TRUSTED_PROXIES"):
        settings.load({"EXCHANGE_TRUSTED_PROXIES": "nginx"})
