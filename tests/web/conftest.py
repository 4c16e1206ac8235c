"""Console fixtures: operators of each role, a Flask test client logged in as one."""

from __future__ import annotations

import re

import pytest

from tests.harness import uid

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def app(engine):
    from infra.web.app import create_app
    from infra.web.settings import WebSettings

    return create_app(engine, WebSettings(secret_key="test-" + "k" * 32))


@pytest.fixture
def make_operator(engine):
    from infra.web import operators

    def make(role: str) -> str:
        name = f"{role}-{uid()}"
        with engine.begin() as conn:
            operators.add(conn, name, role, PASSWORD)
        return name

    return make


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, name: str, password: str = PASSWORD):
    # Over https Flask-WTF also wants a same-origin Referer, as a browser sends.
    client.environ_base["HTTP_REFERER"] = "https://localhost/"
    page = client.get("https://localhost/login")
    return client.post("https://localhost/login", data={"name": name, "password": password,
                                       "csrf_token": csrf_of(page.get_data(as_text=True))})
