"""Property-based fuzz of the serve API from its own OpenAPI schema (schemathesis, in-process over ASGI): a bounded
number of generated requests per endpoint; no 5xx, and every status code, content type and body matches the schema."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from leanvision.serve import create_app  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(serve_run):
    app = create_app(serve_run, warmup=0, max_body_kb=64)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


OPERATIONS = [("POST", "/predict"), ("GET", "/model"), ("GET", "/health"), ("GET", "/ready"), ("GET", "/metrics"),
              ("GET", "/"), ("GET", "/report")]


def test_every_operation_is_fuzzed(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize("method, path", OPERATIONS)
def test_api_conforms_to_its_schema(api_schema, method, path):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=25, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        case.call_and_validate(checks=CHECKS)

    fuzz()
