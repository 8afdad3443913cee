"""Every benchmark, each `charles bench NAME` (NAME: model, drive, swap, record, learn,
pairing): a module with `add_arguments(parser)` and `run(args, config)`; rounds.py holds the
rounds and medians they share, workfolder.py the folder their child commands run in."""
