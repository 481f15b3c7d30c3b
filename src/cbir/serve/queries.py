"""``POST /api/query``'s form, checked and answered: the query (an uploaded image, a test image or a gallery image)
and the marks of a round of relevance feedback (:mod:`cbir.search.feedback`).

The server keeps no state between rounds: the page sends the same query again with every mark so far
(relevant and not relevant gallery ids), and the answer is ranked after that round. The route itself is in
:mod:`cbir.serve.app`; :func:`check_query` runs before the request waits for the query thread (a wrong form
is refused at once), :func:`answer_query` in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from fastapi import UploadFile

from cbir.search.feedback import MAX_MARKS
from cbir.search.query import Feedback, elapsed_ms
from cbir.serve.model import ImageEntry, ServedModel
from cbir.serve.schemas import CollectionQueryResponse, QueryInfo, QueryResponse, query_response
from cbir.serve.settings import ServeSettings
from cbir.serve.uploads import UploadError, decode_image, preview_data_url, read_upload

QUERY_DESCRIPTION = f"""\
The query is exactly one of: a file in the field `image`, a `test_id` (GET /api/test-images) or a `gallery_id`
("more like this": a gallery image as the query, by the features the gallery holds; no upload, and the image
itself is left out of its results).

**Relevance feedback.** With any of the three, `relevant_ids` and `irrelevant_ids` name gallery images the user
marked relevant and not relevant (the result tiles' `id`): the ranking then learns from them (the cell's
method, `feedback_method` on GET /api/model) and the answer's `feedback` says how many marks it used. Send each
id as its own form field, repeated (`-F relevant_ids=red/001.png -F relevant_ids=red/005.png`): ids are file
names, which may hold commas. At most {MAX_MARKS} marks in all (`max_marks`); an id marked both counts as
relevant. The server keeps nothing between rounds: send the same query again with every mark so far.

Errors: 400 when not exactly one query is given; 404 for a `test_id` or `gallery_id` that names no such image;
422 for marks naming ids that are not in the gallery (the message lists them) or more than {MAX_MARKS} marks.
"""
TEST_ID_HELP = "id of a test image (GET /api/test-images)"
GALLERY_ID_HELP = "id of a gallery image (a result's `id`): 'more like this', the image itself left out of its results"
RELEVANT_HELP = "a gallery image marked relevant; repeat the field for each (see the description)"
IRRELEVANT_HELP = "a gallery image marked not relevant; repeat the field for each (see the description)"


@dataclass(frozen=True)
class QueryForm:
    """``POST /api/query``'s fields as received (``top_k`` with the server's default filled in)."""

    top_k: int
    image: UploadFile | None = None
    test_id: str | None = None
    gallery_id: str | None = None
    relevant_ids: list[str] = field(default_factory=list)
    irrelevant_ids: list[str] = field(default_factory=list)


def check_query(served: ServedModel, form: QueryForm) -> Feedback | None:
    """The round of feedback the form asks for (None without marks); :class:`UploadError` when the form does
    not give exactly one query (400) or its marks name unknown ids or are too many (422)."""
    given = [form.image is not None, form.test_id is not None, form.gallery_id is not None]
    if sum(given) != 1:
        raise UploadError(400, "send exactly one of: a file in the field 'image', a 'test_id' or a 'gallery_id'")
    try:
        return served.feedback(form.relevant_ids, form.irrelevant_ids)
    except ValueError as error:  # UnknownIdsError (naming the ids) is one, as is "too many marks"
        raise UploadError(422, str(error)) from error


def answer_query(
    served: ServedModel, settings: ServeSettings, form: QueryForm, feedback: Feedback | None, started: float
) -> QueryResponse | CollectionQueryResponse:
    """The response to a checked form (:func:`check_query`): read, decode, embed and search, in the query thread."""
    timings: dict[str, float] = {}
    if form.gallery_id is not None:
        entry = _known_image(served, form.gallery_id, "train", "gallery")
        answer = served.answer_gallery(entry.id, form.top_k, timings, feedback)
        asked = QueryInfo(source="gallery", name=entry.id, id=entry.id, true_class=_true_class(served, entry))
    else:
        if form.image is not None:
            data = read_upload(form.image, settings.max_upload_bytes)
            name, true_class, image_id = form.image.filename or "upload", None, None
        else:
            entry = _known_image(served, form.test_id or "", "test", "test")
            try:
                data = entry.path.read_bytes()
            except OSError as error:
                raise UploadError(404, f"test image '{entry.id}' cannot be read on the server: {error}") from error
            name, true_class, image_id = entry.id, _true_class(served, entry), entry.id
        start = time.perf_counter()
        decoded = decode_image(data, settings.max_pixels, served.embedder.prepared.draft_to)
        timings["decode"] = elapsed_ms(start)
        answer = served.answer(decoded.image, form.top_k, timings, feedback)
        preview = preview_data_url(decoded.image) if form.image is not None else None
        asked = QueryInfo(source="upload" if form.image is not None else "test", name=name, id=image_id,
                          true_class=true_class, width=decoded.width, height=decoded.height,
                          preview=preview)  # fmt: skip
    timings["total"] = elapsed_ms(started)
    return query_response(answer, asked, form.top_k, timings)


def _known_image(served: ServedModel, image_id: str, subset: str, kind: str) -> ImageEntry:
    entry = served.images.get(image_id)
    if entry is None or entry.subset != subset:
        raise UploadError(404, f"no {kind} image with id '{image_id}'")
    return entry


def _true_class(served: ServedModel, entry: ImageEntry) -> str | None:
    """The class of a test or gallery image the query is; None in a collection (its images have no class)."""
    return entry.class_name if served.model.labelled else None
