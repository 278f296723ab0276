"""The explorer: explicit-state search over every interleaving of an exploration's actors.

Layers (no HTTP here; the API and CLI call in):
- `model_api`: the contract between a model (states, enabled actions, properties) and a checker.
- the checker (search, reductions, budgets, workers) is generic over `model_api.Model`;
- the irqlab model turns an exploration document into a `Model` over the engine's `Vm`.
"""
