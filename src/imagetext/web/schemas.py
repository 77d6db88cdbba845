"""The JSON the web API answers with, as pydantic models: each /api route names its model as
`response_model`, so `/openapi.json` (and /docs) documents every response, errors included.

The fields are those `imagetext.web.service` returns (from `imagetext.api`'s results); the
models document and check them, they do not compute anything.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageResult(BaseModel):
    """An image of the collection: a search or similar result, or an image's record."""

    id: int = Field(description="The image's id in the index.")
    path: str = Field(description="The file's absolute path (bytes that are not UTF-8 as \\xNN).")
    relative_path: str = Field(description="The file's path relative to the collection folder.")
    score: float = Field(description="Similarity to the query (higher is closer; similar: "
                                     "the cosine of the semantic vectors); 1.0 for a record.")
    width: int
    height: int
    caption: str | None = Field(description="The caption indexed with the image, if any.")
    relevance: float | None = Field(
        description="Text search with a calibrated model: how likely this is a real match, 0..1.")
    match: Literal["strong", "weak", "copy"] | None = Field(
        description="Text search with a calibrated model: relevance at least 0.5 or not; "
                    "similar: \"copy\" for a copy or edit of the query (listed first).")
    image_url: str = Field(description="The original file.")
    thumbnail_url: str = Field(description="A 256-pixel JPEG thumbnail.")
    preview_url: str = Field(description="A 1024-pixel JPEG thumbnail.")
    view_url: str = Field(description="The image's page.")
    similar_url: str = Field(description="The page of images similar to this one.")


class SearchResponse(BaseModel):
    query: str = Field(description="The query, trimmed.")
    k: int
    results: list[ImageResult] = Field(description="Best first.")


class SimilarResponse(BaseModel):
    """Images similar to an indexed image (`id`), a collection file (`path`) or an upload."""

    id: int | None = Field(None, description="The query image's id, when asked by id.")
    path: str | None = Field(None, description="The query file, when asked by path.")
    k: int
    results: list[ImageResult] = Field(description="Best first, the query image left out.")


class CaptionText(BaseModel):
    text: str
    score: float = Field(description="The decoder's length-normalised log-probability.")


class CaptionResponse(BaseModel):
    captioner: str = Field(description="The captioner's name.")
    caption: str = Field(description="The best caption.")
    captions: list[CaptionText] = Field(description="Best first; the first is `caption`.")


class RankedLabel(BaseModel):
    label: str
    score: float
    flagged: bool = Field(description="At or above the threshold (and flaggable).")
    flaggable: bool = Field(description="Whether this label can be flagged at all (moderation: "
                                        "the unsafe categories).")


class ClassifyResponse(BaseModel):
    """Zero-shot classification over the given labels, or content moderation (`preset`)."""

    labels: list[str] = Field(description="The labels, in the order given.")
    scores: list[float] = Field(description="One per label: softmax probabilities, or each "
                                            "moderation category's calibrated score.")
    similarities: list[float] = Field(description="One per label: the raw similarity.")
    flagged: list[str] = Field(description="The labels at or above the threshold.")
    calibrated: bool = Field(description="Whether the scores are on a calibrated scale.")
    top: str = Field(description="The best-scoring label.")
    ranked: list[RankedLabel] = Field(description="The labels, best first.")
    threshold: float | None = Field(description="The threshold used, if any.")
    template: str | None = Field(description="The prompt template (None: calibrated moderation, "
                                             "whose categories have prompts of their own).")
    preset: Literal["moderation", "classifier"] | None = None
    classifier: str | None = Field(None, description="The trained classifier's name (preset "
                                   "'classifier'), whose labels and probabilities these are.")


class RankedUpload(BaseModel):
    index: int = Field(description="Position of the file in the request.")
    name: str = Field(description="The file's name as uploaded.")
    score: float


class RankResponse(BaseModel):
    prompt: str
    results: list[RankedUpload] = Field(description="Best first.")


class CaptionerStatus(BaseModel):
    installed: bool | None = Field(description="None until the captioner was first looked for.")
    name: str | None = None
    reason: str | None = Field(None, description="Why there is none.")


class StatusResponse(BaseModel):
    """The collection and its model (further keys: the index's state, such as a rebuild)."""

    model_config = ConfigDict(extra="allow")

    root: str = Field(description="The collection folder.")
    index_dir: str | None = None
    model: str = Field(description="The model that built the index.")
    n_images: int
    n_failed: int = Field(description="Files the indexer could not read.")
    n_captioned: int
    index_type: str
    index_bytes: int
    read_only: bool
    runtime: dict[str, str] | None = Field(None, description="What runs each tower.")
    captioner: CaptionerStatus


class Album(BaseModel):
    """An album of `imagetext cluster`: a cluster of the collection, named from its photos."""

    id: int = Field(description="The album's number (1 is the largest).")
    name: str = Field(description="Its keywords, joined.")
    keywords: list[str] = Field(description="The caption words (or, without captions, the "
                                            "everyday labels) most particular to it.")
    captions: list[str] = Field(description="Its most typical captions (those of the photos "
                                            "nearest its centre); empty without captions.")
    size: int = Field(description="Its photos still indexed.")
    cover: list[ImageResult] = Field(description="Its most typical photos (score: cosine to "
                                                 "the album's mean direction).")
    url: str = Field(description="The album's page.")
    api_url: str = Field(description="The album's photos as JSON.")


class ClustersResponse(BaseModel):
    """The albums stored in the index; `clusters` is empty until `imagetext cluster` (or POST
    /api/clusters) makes them, and after the index is rebuilt for another model."""

    clusters: list[Album] = Field(description="Largest first.")
    k: int | None = Field(None, description="Clusters asked for.")
    vectors: Literal["semantic", "visual"] | None = Field(
        None, description="The vectors clustered: semantic (what photos show) or visual.")
    dims: int | None = Field(None, description="Dimensions after PCA.")
    n_images: int | None = Field(None, description="Images clustered.")
    named_by: Literal["captions", "vocabulary"] | None = None
    model: str | None = None
    seed: int | None = None
    seconds: float | None = Field(None, description="Time the clustering took.")
    created_at: float | None = Field(None, description="When it was made (Unix time).")
    unclustered: int = Field(description="Indexed images in no album (indexed since).")
    stale: bool = Field(description="Whether images were indexed since the albums were made.")


class DuplicatePhoto(ImageResult):
    """A photo of a group of near-duplicates (`score` is 1.0: see `similarity`)."""

    bytes: int = Field(description="The file's size.")
    sharpness: float = Field(description="Variance of the Laplacian of the grey image (at most "
                                         "1024 pixels on its long side); higher is sharper.")
    similarity: float = Field(description="Cosine to the photo suggested to keep.")
    keep: bool = Field(description="Whether this is the photo suggested to keep: the most "
                                   "pixels, then the largest file, then the sharpest.")


class DuplicateGroup(BaseModel):
    id: int = Field(description="The group's number (1 is the largest).")
    size: int
    photos: list[DuplicatePhoto] = Field(description="The one to keep first, then the others, "
                                                     "most similar first.")


class DuplicatesResponse(BaseModel):
    """Groups of near-duplicates (`imagetext duplicates`): photos linked by a chain of pairs
    at or above the threshold. Review only: the web app moves no file."""

    root: str
    vectors: str = Field(description="The stored vectors compared.")
    preset: Literal["exact", "edits", "scene"] | None
    threshold: float = Field(description="The cosine threshold of the preset.")
    pixel_threshold: float | None = Field(description="exact: the SSIM of the photos' small grey "
                                                      "images each pair also reached.")
    turned: bool = Field(description="Copies turned by 90 degrees were looked for (instance "
                                     "vectors, not exact).")
    turned_missing: int = Field(description="Photos with no turned vector to look with (the "
                                            "index was busy or read-only).")
    spatial_inliers: int | None = Field(description="edits with spatial: the keypoints in one "
                                                    "geometry each pair also shared.")
    n_images: int = Field(description="Images compared.")
    n_groups: int
    n_others: int = Field(description="Photos not suggested to keep.")
    seconds: float
    groups: list[DuplicateGroup] = Field(description="Largest first.")


class AlbumResponse(BaseModel):
    album: Album
    results: list[ImageResult] = Field(description="The album's photos, most typical first.")


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorResponse(BaseModel):
    """Every error: `detail` says in a sentence what went wrong and what to do."""

    detail: str
    errors: list[ValidationProblem] | None = Field(
        None, description="422 only: each invalid parameter.")


# the error answers every /api route may give, for its `responses=`
ERRORS: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "Bad input (an empty query, a file that is not an image, ...)."),
        (403, "A path outside the collection."),
        (404, "No such image or file."),
        (413, "The upload is over the size or pixel limit."),
        (422, "A parameter is missing or out of range."),
        (503, "The server is busy (Retry-After) or the index or a model is unavailable."),
    )
}
