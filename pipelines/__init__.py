"""The control plane: the driver, its policies, the local broker and the ``clstream`` CLI."""
