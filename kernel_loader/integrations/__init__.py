"""Integrations with other libraries: :mod:`.transformers` (the only writer into transformers' interfaces)."""
