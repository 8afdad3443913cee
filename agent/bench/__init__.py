"""Every benchmark: model (`charles model bench`), drive (`charles bench drive`), and swap,
record, learn and pairing (`python -m agent.bench.NAME`, which scripts/bench-NAME runs)."""
