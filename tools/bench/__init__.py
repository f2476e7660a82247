"""`make bench`: the saga under load, end to end, beside the raw speed of the servers it runs on.

In its own world (a fresh vhost, fresh databases, the four services on free ports; see
`tools.bench.world`) it runs, in order:

1. warmup: a few seconds of orders, not counted;
2. low rate: an open loop at `--low-rate` orders/s (latency of a quiet system);
3. throughput: an open loop at `--rate` orders/s for `--duration` seconds (completed sagas/s);
4. closed loop: `--concurrency` customers, each placing an order and waiting for its end;
5. raw baselines: confirmed publishes and consume-and-ack on RabbitMQ, insert-and-commit on
   PostgreSQL, and the outbox relay draining a staged backlog (`tools.bench.baselines`);
6. the invariant check of every saga placed.

A saga's latency runs from sending `POST /orders` to the arrival of its terminal event
(OrderCompleted or OrderCancelled) at the benchmark's own queue, bound to both. Outbox dwell is
an outbox row's insert to its mark after the broker's confirm, read from the services' outbox
tables. CPU is read from each process (and from the PostgreSQL and RabbitMQ servers as a whole).
The result is written as JSON; its path is printed at the end.

The modules, in the order a run uses them: `world` (the isolated system, seeding, CPU, the
machine), `load` (placing one saga and following it to its end), `phases` (the shapes of load:
open and closed loops), `figures` (percentiles, dwell, hops, sessions of a phase), `hops` (a
saga's latency hop by hop), `profile` (py-spy), `baselines`, `run` (the sequence, and the result),
`report` (the bound, the targets and the tables), `__main__` (the command line).
"""
