"""The `imagetext` command line: one command per job, thin over imagetext.api.

Heavy modules (torch, transformers, faiss) are imported inside the commands so that
`imagetext --help` starts fast.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Caption images and search photo collections by text and by image, offline on a CPU.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
train_app = typer.Typer(help="Train or fine-tune models.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate models on a dataset split.", no_args_is_help=True)
export_app = typer.Typer(help="Export models to other formats.", no_args_is_help=True)
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(export_app, name="export")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
