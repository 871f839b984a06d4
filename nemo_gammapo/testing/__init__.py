"""Test support shipped with the package: the multi-process harness and a tiny GPT builder."""
