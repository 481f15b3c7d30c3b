"""`cbir serve` under generated requests: schemathesis against /openapi.json, with and without a token.

Every operation of the schema gets schema-valid (positive) and schema-invalid (negative)
requests; each response must be no 5xx, a status the schema declares, and a body and headers
that match the schema; schema-invalid requests must get a 4xx. The number of examples per
operation and mode is small here (CBIR_FUZZ_EXAMPLES, default 15); `benchmarks/fuzz.py` runs the
same test with more (1,000+ requests in all) and reports the counts (CBIR_FUZZ_REPORT).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.workflow
CELL = "results/tiny/lite/80-20/8"
TOKEN = "fuzz-token-0123456789abcdef"
EXAMPLES = int(os.environ.get("CBIR_FUZZ_EXAMPLES", "15"))


def fuzz_app(app, token: str | None, send_token: bool, examples: int) -> tuple[Counter, list[str]]:
    """Run every operation in both generation modes; returns requests per operation and the failures."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.generation.modes import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    auth = {"Authorization": f"Bearer {token}"} if token else {}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=auth)
    headers = auth if send_token else None
    counts: Counter = Counter()
    failures: list[str] = []

    def runner(operation, mode):
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            counts[f"{operation.label} ({mode.value})"] += 1
            try:
                # positive data is not always acceptable here: a schema-valid binary is rarely an image
                case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])
            except BaseExceptionGroup as group:  # schemathesis's FailureGroup
                failures.append(f"{operation.label} ({mode.value}): {group}"[:3000])

        return run

    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                runner(operation, mode)()
            except Unsatisfiable:  # e.g. no schema-invalid request exists for an operation without parameters
                counts.setdefault(f"{operation.label} ({mode.value})", 0)
    return counts, failures


def report(name: str, counts: Counter, failures: list[str]) -> None:
    path = os.environ.get("CBIR_FUZZ_REPORT")
    if path:
        with Path(path).open("a") as f:
            f.write(json.dumps({"test": name, "requests": dict(counts), "failures": failures}) + "\n")


@pytest.fixture(scope="module")
def served(finished_run):
    from cbir.serve.model import ServedModel
    from cbir.serve.settings import ServeSettings

    root, _ = finished_run
    return ServedModel.load(ServeSettings(model=root / CELL, reload_interval=0))


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_generated_requests_get_no_5xx_and_match_the_schema(served, token):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0, token=token), served=served)
    with TestClient(app):  # runs the app's lifespan around the generated requests
        counts, failures = fuzz_app(app, token, True, EXAMPLES)
    report(f"schemathesis ({'token' if token else 'open'})", counts, failures)
    assert not failures, "\n\n".join(failures[:5])
    assert sum(counts.values()) >= 3 * EXAMPLES  # the query (both modes) and image operations got theirs


def test_without_the_token_every_operation_answers_401_as_documented(served):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0, token=TOKEN), served=served)
    with TestClient(app) as client:
        counts, failures = fuzz_app(app, TOKEN, False, max(EXAMPLES // 3, 3))
        statuses = {client.get(path).status_code for path in ("/api/model", "/api/test-images", "/api/images/x")}
    report("schemathesis (no token sent)", counts, failures)
    assert not failures, "\n\n".join(failures[:5])
    assert statuses == {401}


def test_feedback_forms_naming_real_images_match_the_schema(served):
    """Generated ids rarely name a gallery image: these forms do (a test or gallery image as the query, marks drawn
    from the gallery, now and then a test image's id or an unknown one), and every answer must match the schema."""
    import schemathesis
    from fastapi.testclient import TestClient
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0), served=served)
    gallery = [str(image_id) for image_id in served.model.gallery_ids]
    marks = st.lists(st.sampled_from([*gallery * 4, "no/such.png", *served.test_ids]), max_size=4)  # mostly known
    queries = st.one_of(st.fixed_dictionaries({"gallery_id": st.sampled_from(gallery)}),
                        st.fixed_dictionaries({"test_id": st.sampled_from(served.test_ids)}))  # fmt: skip
    statuses: Counter = Counter()

    @given(query=queries, relevant=marks, irrelevant=marks, top_k=st.integers(1, 8))
    @settings(max_examples=2 * EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def run(query, relevant, irrelevant, top_k) -> None:
        body = {**query, "relevant_ids": relevant, "irrelevant_ids": irrelevant, "top_k": top_k}
        response = operation.Case(body=body, media_type="multipart/form-data").call_and_validate(
            excluded_checks=[positive_data_acceptance]
        )
        statuses[response.status_code] += 1
        unknown = [i for i in [*relevant, *irrelevant] if i not in gallery]
        if unknown:
            assert response.status_code == 422 and any(f"'{i}'" in response.json()["detail"] for i in unknown)
            return
        assert response.status_code == 200, response.text
        answer = response.json()
        if relevant or irrelevant:
            counts = (answer["feedback"]["relevant"], answer["feedback"]["irrelevant"])
            assert counts == (len(set(relevant)), len(set(irrelevant) - set(relevant)))
        else:
            assert answer["feedback"] is None
        found = {tile["id"] for tiles in answer["results"].values() for tile in tiles}
        assert query.get("gallery_id") not in found  # "more like this" leaves the image out

    with TestClient(app):
        operation = schemathesis.openapi.from_asgi("/openapi.json", app)["/api/query"]["POST"]
        run()
    report("feedback forms", statuses, [])
    assert statuses[200] and statuses[422], statuses


# --- what the fuzzing found, kept as regression tests ---------------------------------------


@pytest.mark.parametrize(
    "form",
    [
        {"image": "not a file"},
        {"image": "null", "top_k": "3"},
        {"test_id": "x", "top_k": "abc"},
        {"test_id": "x", "top_k": "1e3"},
    ],
    ids=["image-as-text", "image-as-text-with-top-k", "top-k-not-a-number", "top-k-float"],
)
def test_fastapis_own_validation_errors_answer_the_documented_string_detail(served, form):
    """Found by schemathesis: FastAPI's 422 had a list of objects as `detail`, the schema a string."""
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0), served=served)
    with TestClient(app) as client:
        response = client.post("/api/query", data=form, files={"dummy": ("d", b"", "text/plain")})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail.startswith("invalid request: ")
    assert ("image" in detail) == ("image" in form)
