"""The team's tracking server: ``mae-tracker server`` starts MLflow's server on SQLite or
PostgreSQL (``launch``), closes the runs a dead process left RUNNING (``stale_runs``) and refuses
a port already in use (``ports``)."""
