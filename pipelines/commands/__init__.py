"""The ``clstream`` command line: flags to ``Settings``, then one call into the packages beside this
one. Nothing outside this package imports it."""
