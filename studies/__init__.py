"""Studies: measurements whose results are documents in docs/ (run as ``python -m studies.NAME``)."""
