"""The harness: an isolated copy of the system, for the tests and the tools alike.

Finding the servers (`servers`), making a vhost (`rabbitmq`) and databases (`databases`) on them,
starting the four services as processes on free ports and waiting until they are ready
(`system`, `process`), and waiting for anything without sleeping (`wait`). It ships with the
project, so that the benchmark and the operator tools run from an installed package; it imports
`contracts`, `outbox` and three leaf modules of `tools` (`client`, `tokens`, `postgres`), never
`tests`.
"""
