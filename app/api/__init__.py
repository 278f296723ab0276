"""HTTP layer around the engine: request/response models, problem details, the VM registry."""
