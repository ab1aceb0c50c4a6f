"""The floor of the house: utilities every package may import (errors, atomic writes, paths,
progress, devices, registries). Nothing here imports any other part of the project, which the
import-linter contracts in pyproject.toml enforce."""
