"""Test support: servers, per-test broker vhosts and databases, services run in-process, waiting."""
