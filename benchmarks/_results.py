"""Where every benchmark writes its figures: ``<out>/<name>[-quick].{json,md}``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_results(out: Path, name: str, *, quick: bool, report: dict[str, Any], text: str) -> None:
    """Print the markdown and save both forms; a quick run never overwrites a full one."""
    print(text)
    stem = f"{name}-quick" if quick else name
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(text)
