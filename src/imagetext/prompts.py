"""The default zero-shot prompt template, in one place (the API, the CLI, the web app and
ConSE's class prompts all start from it). No imports: the CLI reads it at start-up."""

DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_TEMPLATES = (DEFAULT_TEMPLATE,)
