"""Pieces of bench/quality.py: real data sets (data), the peer loops (peers), shared metrics (scoring).

A package (not bench/*.py modules) so that `make bench`, which runs every bench/*.py, does not run them.
"""
