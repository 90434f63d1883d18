"""Files that are not run but type-checked (``mypy --strict`` in scripts/check): what a user's
handlers look like must pass mypy --strict as written in the guide."""
