"""Apache Beam jobs of mcof_tf: per-image work that runs on DirectRunner here and on Dataflow at scale."""
