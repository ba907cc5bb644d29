from __future__ import annotations

from restorecli.cli import main

if __name__ == "__main__":
    main()
