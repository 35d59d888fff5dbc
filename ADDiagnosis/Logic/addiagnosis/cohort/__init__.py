"""Cohorts: many scans through the engine, with a journal, resume, shards and a results table.

Modules, in the order a batch uses them: ``inputs`` (which scans: folders, BIDS, tables, lists), ``regions``
(label maps and their names), ``shards`` (``--shard K/N``, ``run.json``, merging the parts), ``journal`` (one
record per finished scan; what is done), ``pool`` (worker processes: the prepare and write steps), ``progress``,
``run`` (the batch loop: :func:`addiagnosis.cohort.run.run`) and ``table`` (``results.tsv``).
"""
