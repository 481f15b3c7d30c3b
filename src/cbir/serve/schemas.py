"""The API's response models: the search's answer as the server sends it, the model panel and the errors.

The answer's fields are defined once, in :mod:`cbir.search.answer`; the server's responses add
what only it knows (the query as received, thumbnails, right/wrong marks, timings) and leave out
the files' paths (images are served by id) and the search space (``GET /api/model`` names it).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from cbir.search.answer import Answer, ClusterMatch, CollectionAnswer, LabelledAnswer, Match

TIMINGS = (
    "decode, preprocess, forward (not for a gallery image), project_predict, refine (with marks or a gallery image), "
    "search_<mode>, total (milliseconds)"
)
NOT_SENT = "not sent: the server names images by id (GET /api/images/{id}) and its space on GET /api/model"


class QueryInfo(BaseModel):
    source: Literal["upload", "test", "gallery"] = Field(
        description="the field the query came in: image (upload), test_id (test) or gallery_id (gallery)"
    )
    name: str
    id: str | None = Field(default=None, description="the test or gallery image's id; null for an upload")
    true_class: str | None = Field(
        default=None, description="the class of a test or gallery image; null for an upload or without labels"
    )
    width: int | None = Field(
        default=None, description="pixels as displayed; null for a gallery image (searched by its stored features)"
    )
    height: int | None = Field(default=None, description="pixels as displayed; null for a gallery image")
    preview: str | None = Field(
        default=None,
        description="the uploaded image as the server read it, a small JPEG as a data: URL (a HEIC or RAW query "
        "shows in any browser); null for a test image (GET /api/images/{id})",
    )


class ResultTile(Match):
    path: str = Field(exclude=True, description=NOT_SENT)
    thumbnail: str = Field(description="URL of the image's thumbnail (GET /api/images/{id})")
    correct: bool | None = Field(description="the result's class is the query's known class; null when unknown")


class QueryResponse(LabelledAnswer[ResultTile]):
    space: str = Field(exclude=True, description=NOT_SENT)
    query: QueryInfo
    prediction_correct: bool | None
    top_k: int
    timings_ms: dict[str, float] = Field(description=TIMINGS)


class CollectionTile(ClusterMatch):
    path: str = Field(exclude=True, description=NOT_SENT)
    thumbnail: str = Field(description="URL of the image's thumbnail (GET /api/images/{id})")


class CollectionQueryResponse(CollectionAnswer[CollectionTile]):
    """The answer for a collection without labels: no predicted class, no right/wrong marks."""

    space: str = Field(exclude=True, description=NOT_SENT)
    query: QueryInfo
    top_k: int
    timings_ms: dict[str, float] = Field(description=TIMINGS)


def _answer_kind(answer: Any) -> str:
    has_clusters = "nearest_clusters" in answer if isinstance(answer, dict) else hasattr(answer, "nearest_clusters")
    return "collection" if has_clusters else "labelled"


# a labelled cell's answer, or a collection's (told apart by its nearest clusters)
AnyQueryResponse = Annotated[
    Annotated[QueryResponse, Tag("labelled")] | Annotated[CollectionQueryResponse, Tag("collection")],
    Discriminator(_answer_kind),
]


def thumbnail_url(image_id: str) -> str:
    return f"/api/images/{quote(image_id, safe='/')}"


def query_response(
    answer: Answer, query: QueryInfo, top_k: int, timings: dict[str, float]
) -> QueryResponse | CollectionQueryResponse:
    """The search's answer as the server sends it: with the query, each result's thumbnail and, when the
    query's class is known, whether the prediction and each result are right."""
    served = {"query": query, "top_k": top_k, "timings_ms": timings}
    if isinstance(answer, CollectionAnswer):
        tiles = {
            mode: [CollectionTile(**dict(match), thumbnail=thumbnail_url(match.id)) for match in matches]
            for mode, matches in answer.results.items()
        }
        return CollectionQueryResponse(**{**dict(answer), "results": tiles, **served})
    known = query.true_class
    results = {mode: [_result_tile(match, known) for match in matches] for mode, matches in answer.results.items()}
    prediction_correct = None if known is None else answer.predicted_class == known
    return QueryResponse(**{**dict(answer), "results": results, "prediction_correct": prediction_correct, **served})


def _result_tile(match: Match, true_class: str | None) -> ResultTile:
    correct = None if true_class is None else match.class_name == true_class
    return ResultTile(**dict(match), thumbnail=thumbnail_url(match.id), correct=correct)


class ModelInfo(BaseModel):
    dataset: str
    backbone: str
    split: str
    pca: str
    arch: str
    weights: str
    pooling: str
    image_size: int
    seed: int
    precision: str = Field(description="the precision queries run in: the gallery's, where this machine has it")
    precision_notice: str | None = Field(description="why queries cannot run in the gallery's precision, if so")
    k: int
    available_k: list[int]
    gallery_size: int
    test_images: int
    classes: list[str]
    labelled: bool = Field(
        description="false: a collection without labels: no class is predicted, no result is marked right or "
        "wrong, and the clustered search probes the nearest of all clusters"
    )
    feature_dim: int
    reduced_dim: int = Field(description="dimensions of the PCA-reduced features the classifier takes")
    space: str = Field(description="the embedding space every search ranks in (docs, 'Embedding spaces')")
    rerank: str = Field(description="the re-ranking of the search over all images: none, QE, DBA or DBA + QE (k, α)")
    setting: str = Field(
        description="the space's settings and re-ranking, and how they were chosen (validation inside the "
        "training split: docs, 'Settings chosen by validation')"
    )
    embedding_dim: int = Field(description="dimensions of that space")
    metric: str
    top_k: int
    max_top_k: int
    max_upload_bytes: int
    max_pixels: int
    max_marks: int = Field(description="relevant and not relevant ids one query may send, together")
    feedback_method: Literal["rocchio", "learned"] = Field(
        description="how marks change the ranking: Rocchio's refined query, or a classifier learned from the marks"
    )
    modes: dict[str, str]
    metrics: dict[str, float] = Field(
        description="accuracy, mAP and precision from the cell's metrics file; without labels, each search's recall "
        "against the exact one"
    )
    loaded_at: str = Field(description="when this model was loaded (UTC, ISO 8601)")
    reloads: int = Field(description="how often this server process has loaded the cell again since it started")


class SampleImage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: str
    class_name: str | None = Field(alias="class", description="null for a collection without labels")
    thumbnail: str


class ErrorMessage(BaseModel):
    detail: str


STATUS_TEXT = {
    400: "empty upload, or not exactly one of image, test_id and gallery_id",
    401: "no token, or a wrong one: send 'Authorization: Bearer <token>' or log in at /login",
    404: "no image with that id (the test_id or gallery_id of a query, an image requested by id)",
    408: "the request body did not arrive within the upload timeout",
    413: "upload over the byte limit, or image over the pixel limit",
    415: "not a form, or the file's content type is not an image",
    422: "not an image Pillow can decode, an invalid field, marks naming ids not in the gallery, or too many marks",
    503: "busy: the server's limit of concurrent requests is reached; retry after Retry-After seconds",
}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def error_responses(*statuses: int, token: bool) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the errors an endpoint answers (401 only with a token, 503 always)."""
    codes = sorted({*statuses, 503, *((401,) if token else ())})
    return {
        code: {
            "model": ErrorMessage,
            "description": STATUS_TEXT[code],
            **({"headers": RETRY_AFTER_HEADER} if code == 503 else {}),
        }
        for code in codes
    }
