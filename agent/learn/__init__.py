"""Learning: balanced sample sets, shard files, training buffers, the trainer."""
