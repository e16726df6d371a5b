"""A numeric self-test that travels with every variant: ``reference.safetensors``.

- :mod:`.cases`: what a case is, and the file format (shared);
- :mod:`.write`: the build side, which writes the file into a variant folder (authoring; the builder uses it);
- :mod:`.check`: the load side, which runs an imported variant on it (``load(selftest=True)``,
  ``kernel-loader selftest``).
"""
