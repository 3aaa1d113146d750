"""``clstream bench``: the bare model, the pipeline and a naive consumer loop, side by side."""
