"""Model lines: the networks Charles can drive with (see `registry`)."""
