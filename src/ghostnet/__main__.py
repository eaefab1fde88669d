"""``python -m ghostnet`` runs the CLI (also what ``torchrun -m ghostnet train`` uses)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
