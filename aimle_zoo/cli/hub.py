"""``aimle-zoo push``: upload a checkpoint folder to the Hugging Face Hub, or list it (dry run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..hub import default_repo_id, format_size, push_to_hub

FolderArg = Annotated[
    Path,
    typer.Argument(
        help="Checkpoint folder written by save_pretrained, e.g. checkpoints/dvae-mnist.",
        exists=True,
        file_okay=False,
        dir_okay=True,
    ),
]
RepoIdArg = Annotated[
    str | None,
    typer.Argument(help="Hub repository id owner/name (default: aimle-zoo/<folder name>)."),
]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="List the files and sizes to upload; contact no server."),
]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", help="Branch to commit to (created if missing; default main)."),
]
PrivateOpt = Annotated[bool, typer.Option("--private", help="Create the repository as private.")]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Hub token (default: HF_TOKEN or `hf auth login`)."),
]
MessageOpt = Annotated[str | None, typer.Option("--message", "-m", help="Commit message.")]


def push_command(
    folder: FolderArg,
    repo_id: RepoIdArg = None,
    dry_run: DryRunOpt = False,
    revision: RevisionOpt = None,
    private: PrivateOpt = False,
    token: TokenOpt = None,
    message: MessageOpt = None,
) -> None:
    """Upload a checkpoint (config.json, model.safetensors, README.md, recipe.json) to the Hub."""
    target = repo_id or default_repo_id(folder)
    result = push_to_hub(
        folder,
        target,
        revision=revision,
        private=private,
        token=token,
        commit_message=message,
        dry_run=dry_run,
    )
    if not isinstance(result, list):
        typer.echo(f"pushed {folder} to {result.commit_url}")
        return
    visibility = "private" if private else "public"
    typer.echo(f"dry run: would upload to {target} ({revision or 'main'}, {visibility}):")
    width = max(len(file.path) for file in result)
    for file in result:
        typer.echo(f"  {file.path.ljust(width)}  {format_size(file.size):>9}")
    total = sum(file.size for file in result)
    typer.echo(f"{len(result)} files, {format_size(total)} in total")
