"""`make bench`: the saga under load, end to end, beside the raw speed of the servers it runs on.

In its own world (a fresh vhost, fresh databases on a PostgreSQL server of its own, the four
services on free ports; see `tools.bench.world`) it runs, in order:

1. warmup: a few seconds of orders, not counted;
2. idle: nothing offered for 3 s (what the processes spend meanwhile);
3. sequential: one order at a time, the next placed when the last ended;
4. low rate: an open loop at `--low-rate` orders/s (latency of a quiet system);
5. closed loop: `--concurrency` customers, each placing an order and waiting for its end: its
   rate is the first estimate of the search;
6. the search for the sustainable rate: open loops of `--step-duration` s at rising rates (from
   0.6x the closed loop's), a step sustained when it completes >= 98% of what it offered with a
   p99 <= 250 ms; a step stops early once it cannot pass; then one step halving the bracket;
7. comparison phases (`--variant`): the services restarted with other settings, a step at the
   sustainable rate;
8. raw baselines: confirmed publishes and consume-and-ack on RabbitMQ, insert-and-commit on
   PostgreSQL, and the outbox relay draining a staged backlog (`tools.bench.baselines`);
9. the invariant check of every saga placed.

A saga's latency runs from sending `POST /orders` to the arrival of its terminal event
(OrderCompleted or OrderCancelled) at the benchmark's own queue, bound to both. Outbox dwell is
an outbox row's insert to its mark after the broker's confirm, read from the services' outbox
tables. CPU is read from each process (and from the PostgreSQL and RabbitMQ servers as a whole).
Around each phase PostgreSQL's own counters are read (sessions, deadlocks, transactions, and
statements from `pg_stat_statements`), and the services' deliveries per transaction from their
/metrics. The result is written as JSON; its path is printed at the end.

The modules, in the order a run uses them: `world` (the isolated system, seeding, CPU, the
machine), `postgres` (its own server), `load` (placing one saga and following it to its end),
`phases` (the shapes of load, and what a step must do), `figures` (percentiles, dwell, hops, the
counters around a phase), `hops` (a saga's latency hop by hop), `profile` (py-spy), `baselines`,
`run` (the sequence, and the result), `report` (the bound, the targets and the tables),
`__main__` (the command line).
"""
