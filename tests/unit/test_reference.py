"""docs/reference.md is what ``python -m conveyor.cli.reference`` writes from the code now."""

from __future__ import annotations

from pathlib import Path

import click

from conveyor.cli import main
from conveyor.cli.reference import render
from conveyor.settings import Settings

PAGE = Path(__file__).parents[2] / "docs" / "reference.md"


def test_reference_md_is_up_to_date() -> None:
    assert PAGE.read_text(encoding="utf-8") == render(), (
        "docs/reference.md is stale: python -m conveyor.cli.reference --output docs/reference.md"
    )


def test_the_reference_names_every_command_option_and_setting() -> None:
    page = render()
    for name, command in main.commands.items():
        assert f"### `conveyor {name}`" in page
        for param in command.params:
            if isinstance(param, click.Option):
                for flag in param.opts:
                    assert flag in page, (name, flag)
    for field in Settings.model_fields:
        assert f"`CONVEYOR_{field.upper()}`" in page
