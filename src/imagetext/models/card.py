"""Model cards: every model folder's README.md is a huggingface_hub `ModelCard`, its YAML
metadata a `ModelCardData` (with a model-index of the scores where there are scores), so that
`ModelCard.load(folder / "README.md")` reads it back and the hub shows it. Offline: nothing
here talks to the network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData


def model_card(body: str, name: str, *, scores: Mapping[str, float] | None = None,
               score_names: Mapping[str, str] | None = None, task: str = "", dataset: str = "",
               dataset_split: str | None = None, license: str | None = None,
               datasets: Sequence[str] | None = None, base_model: str | None = None,
               pipeline_tag: str | None = None, tags: Sequence[str] = ()) -> ModelCard:
    """A card whose text is `body` (Markdown) and whose metadata names the model and, with
    `scores`, reports them on `dataset` for `task` (the model-index, one entry per score;
    `score_names` gives a score its readable name)."""
    results = [EvalResult(task_type=task, dataset_type=dataset, dataset_name=dataset, dataset_split=dataset_split,
                          metric_type=key, metric_name=(score_names or {}).get(key, key), metric_value=float(value))
               for key, value in (scores or {}).items()]
    data = ModelCardData(model_name=name, library_name="imagetext", license=license,
                         datasets=list(datasets) if datasets else None, base_model=base_model,
                         pipeline_tag=pipeline_tag, tags=["imagetext", *tags], eval_results=results or None)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.lstrip()}")


def write_model_card(folder: str | Path, body: str, name: str, **metadata) -> ModelCard:
    """`model_card(...)` saved as `folder`/README.md."""
    card = model_card(body, name, **metadata)
    card.save(Path(folder) / "README.md")
    return card
