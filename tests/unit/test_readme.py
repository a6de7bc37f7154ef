import dataclasses
from pathlib import Path

from schemas.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    for f in dataclasses.fields(Settings):
        assert f"| `{f.metadata['env']}` | `{f.default}` |" in README, f.metadata["env"]


def test_the_two_commands_are_there() -> None:
    assert "make demo" in README and "make test" in README
