"""Every benchmark, each `charles bench NAME` (NAME: model, drive, swap, record, learn,
pairing, intake, live, soak): a module with `add_arguments(parser)` and `run(args, config)`;
rounds.py holds the rounds and medians they share, workfolder.py the folder their child
commands run in, viewers.py the live view's viewers as the live and soak benchmarks play them."""
