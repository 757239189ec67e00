"""The MLflow model registry: promotion of a candidate against the champion (``promotion``), the
evidence a promotion needs (``evidence``: intervals, the chance floor, the noise of a comparison),
and the one-time migration of an old pickled model into the safe format (``migration``)."""
