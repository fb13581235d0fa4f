"""Social security, medical insurance and permit modules (not built yet)."""
