"""Apache Beam jobs of mcof_tf: per-image work that runs on DirectRunner here and on Dataflow at scale."""

# mcof_tf first: a `python -m beam_jobs.<job>` start-up is then quiet (see mcof_tf/__init__.py)
__import__("mcof_tf")
