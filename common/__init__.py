"""fedmm common layer (see docs/architecture.md)."""
