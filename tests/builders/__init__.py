"""Test-data builders: tiny, learnable exports of every Export Training Data For Deep Learning format.

Import as `from tests.builders.exports import write_classified_tiles, ...` (run pytest as
`python -m pytest` from the repository root, as `make test` does).
"""
