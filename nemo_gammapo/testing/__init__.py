"""Test helpers shipped with the package: the invariance-test workers (:mod:`.layouts`)."""
