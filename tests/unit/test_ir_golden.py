"""Golden IR: the hello example in, the document `forge show --json` prints out.

`tests/golden/ir/hello.json` was read by a person: every default filled in, references as
addresses, sizes in bytes and durations in seconds. Regenerate after a deliberate change with
FORGE_UPDATE_GOLDEN=1 and read the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from forgefile.lower import load

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "ir" / "hello.json"


def test_hello_lowers_to_the_reviewed_document() -> None:
    """The example's checked IR matches the golden file, path of the checkout aside."""
    document = load(REPO / "examples" / "hello", environ={}).to_document()
    text = json.dumps(document, indent=2, sort_keys=True).replace(str(REPO), "<repo>") + "\n"
    if os.environ.get("FORGE_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()
