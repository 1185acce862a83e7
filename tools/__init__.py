"""Developer tools that live beside the package and never ship in the wheel (pyproject includes largebatch* only)."""
