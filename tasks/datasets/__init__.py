"""Real datasets, one module per family, each reading the family's official on-disk layout
(docs/data.md) and registering the family's tasks; ``base`` holds what the loaders share and
``check`` the ``harness data`` commands."""
