"""The default zero-shot prompt template, in one place (the API, the CLI, the web app and
ConSE's class prompts all start from it). No imports: the CLI reads it at start-up."""

DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_TEMPLATES = (DEFAULT_TEMPLATE,)
# the prompt ensemble that `eval classify` compares with the single template (a label's text
# vector is the mean over them): chosen by greedy forward selection from 21 CLIP-style templates
# on the Flickr8k keyword-labelled *train* photos of both tasks (data/labelled.py), so val
# stays unseen; on val it gains 5.3 points of top-1 on subjects and ties on scenes
ENSEMBLE_TEMPLATES = (
    DEFAULT_TEMPLATE,
    "an outdoor photo of a {}.",
    "a scene with {}.",
    "a photo of a large {}.",
)
