"""The service against its own OpenAPI schema (issue 12): schemathesis generates requests for every
operation, valid and invalid, and no answer may be a 5xx or disagree with the schema (status
codes documented, bodies of the documented shape, errors included).

The default suite runs a few examples per operation; ``.ci/run`` runs more
(``MICRO_RM_SCHEMATHESIS_EXAMPLES``). The run is bounded by that count, not by a clock.
"""

from __future__ import annotations

import os

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install schemathesis (dev extras)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_bad_input import ADMIN, word_model  # noqa: E402
from test_train_cli import WordBackbone  # noqa: E402

EXAMPLES = int(os.environ.get("MICRO_RM_SCHEMATHESIS_EXAMPLES", 20))


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from micro_rm.serve.app import create_app
    from micro_rm.scoring.engine import RewardScorer
    from micro_rm.serve.settings import ServeSettings

    root = tmp_path_factory.mktemp("schemathesis")
    settings_ = ServeSettings(model="unused", state=f"sqlite:///{root / 'state.db'}", admin_token=ADMIN,
                              cache_dir=str(root / "features"), max_texts=16, max_text_chars=2000)
    app = create_app(settings_, scorer=RewardScorer(word_model(), WordBackbone()))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


def _operations():
    from micro_rm.serve.app import create_app
    from micro_rm.serve.settings import ServeSettings

    spec = create_app(ServeSettings(model="unused")).openapi()
    return [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]


@pytest.mark.parametrize("method, path", _operations())
def test_no_server_error_and_every_answer_matches_the_schema(api_schema, method, path):
    """Positive and negative requests for one operation, ``EXAMPLES`` of them."""
    from hypothesis import given, strategies
    from schemathesis.generation import GenerationMode

    operation = api_schema[path][method]
    cases = strategies.one_of(operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
                              operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    def check(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {ADMIN}"},
                               checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                       response_schema_conformance])

    check()


def test_every_operation_documents_its_errors_with_one_shape():
    from micro_rm.serve.app import create_app
    from micro_rm.serve.settings import ServeSettings

    spec = create_app(ServeSettings(model="unused")).openapi()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"401", "403", "404", "409", "413", "422"} <= codes, (method, path, codes)
            for code in ("401", "403", "404", "409", "413", "422"):
                content = operation["responses"][code]["content"]
                assert [c["schema"] for c in content.values()] == [{"$ref": "#/components/schemas/ErrorResponse"}]
    feedback = spec["paths"]["/feedback"]["post"]
    assert any(p["name"] == "idempotency-key" and p["in"] == "header" for p in feedback["parameters"])
