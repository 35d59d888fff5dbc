"""Cohorts: many scans through the engine, with a journal, resume, shards and a results table."""
