"""``backend/text_processing/classic_engine.py`` (subset): processing.get_conds_with_caching reads and
clears ``last_extra_generation_params`` after computing conds."""

last_extra_generation_params = {}
