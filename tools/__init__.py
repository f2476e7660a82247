"""Operator tools: start the servers, provision databases, run the services, demo, trace, check."""
