#!/usr/bin/env python3
"""Write the top-level weights_manifest.json from the packaged one, its only source.

The package reads restorecli/weights_manifest.json (it ships in wheels and works in editable
installs); the top-level copy is what users and other tools find in the repository. Edit the
packaged file, then run this; tests/test_hub.py fails while the two differ.

Usage: python scripts/sync_manifest.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "restorecli" / "weights_manifest.json"
COPY = ROOT / "weights_manifest.json"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))
    from restorecli.hub.manifest import load_manifest

    load_manifest()  # refuse to publish a manifest the package cannot read
    data = SOURCE.read_bytes()
    if "--check" in argv:
        if COPY.read_bytes() != data:
            print(f"Error: {COPY.name} differs from {SOURCE.relative_to(ROOT)}; run scripts/sync_manifest.py", file=sys.stderr)
            return 1
        return 0
    COPY.write_bytes(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
