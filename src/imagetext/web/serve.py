"""`imagetext serve`: index a collection (incrementally), then serve the web app with uvicorn."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def index_collection(root: Path, model: Any = None, index_dir: Path | None = None,
                     rebuild_if_stale: bool = False) -> None:
    """Bring the index of `root` up to date, printing what changed. `rebuild_if_stale`
    (for the demo gallery, which imagetext manages itself) rebuilds an index that another
    model or version built instead of refusing it."""
    from imagetext.api import Collection

    with Collection.open(root, index_dir=index_dir, model=model, reindex=rebuild_if_stale) as collection:
        if collection.cleared_because:
            print(f"{collection.cleared_because}\nRebuilding the demo gallery's index.", file=sys.stderr)
        from imagetext.progress import IndexProgressBars

        with IndexProgressBars() as bars:
            report = collection.index(on_progress=bars if sys.stderr.isatty() else None)
        print(
            f"{len(collection)} images indexed in {root}: {report.added} added, "
            f"{report.updated} updated, {report.removed} removed, {report.unchanged} unchanged.",
            file=sys.stderr,
        )
        for path, reason in report.failed[:10]:
            print(f"  skipped {path}: {reason}", file=sys.stderr)
        if len(report.failed) > 10:
            print(f"  ... and {len(report.failed) - 10} more unreadable files", file=sys.stderr)


def serve(
    collection: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    demo: bool = False,
    model: str | None = None,
    index: bool = True,
    index_dir: str | os.PathLike | None = None,
    captioner: str | None = "auto",
    max_upload_mb: float = 20.0,
    classifier: str | os.PathLike | None = None,
) -> None:
    import uvicorn

    from imagetext.web.app import create_app

    if demo and collection:
        raise ValueError("give either --collection or --demo, not both")
    examples: tuple[str, ...] = ()
    if not collection:
        from imagetext.demo import EXAMPLE_QUERIES, prepare_demo_gallery

        root = prepare_demo_gallery()
        examples = tuple(query for query, _ in EXAMPLE_QUERIES)
        print(f"Serving the demo gallery of real photos in {root} (credits: CREDITS.md)",
              file=sys.stderr)
    else:
        root = Path(collection).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"collection folder not found: {root}")
    index_path = Path(index_dir).expanduser() if index_dir else None
    if index:
        index_collection(root, model=model, index_dir=index_path, rebuild_if_stale=not collection)
    app = create_app(root, model=model, index_dir=index_path, captioner=captioner,
                     max_upload_mb=max_upload_mb, example_queries=examples,
                     classifier=classifier)
    print(f"imagetext is running at http://{host}:{port}/  (API docs: /docs; Ctrl+C stops)",
          file=sys.stderr)
    uvicorn.run(app, host=host, port=port, log_level="warning")
