"""pacsflow-api fuzzed from its own OpenAPI schema with schemathesis: generated requests (valid and invalid) to every
operation, as an admin, on a pipeline-seeded store; no 5xx, every response as the schema declares it (status,
content type, body)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from pacsflow_api.app import create_app
from pacsflow_router.results.store import ResultsStore
from tests.peers.reviewstore import seed_store


@pytest.fixture(scope="module")
def admin_store(tmp_path_factory) -> Iterator[tuple[ResultsStore, str]]:
    url, _ = seed_store(tmp_path_factory.mktemp("fuzz"), {85: (True, "S")})
    store = ResultsStore(url)
    yield store, store.create_api_key("admin")[1]
    store.close()


def test_no_operation_answers_5xx_or_outside_its_schema(admin_store):
    store, token = admin_store
    # The schema is loaded here, not at import: the store it serves is made by the fixture (schemathesis' own
    # pytest fixture loader does not work with this pytest).
    schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", create_app(store))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case) -> None:
            case.call_and_validate(headers={"X-API-Key": token})

        fuzz()
