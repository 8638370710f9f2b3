"""mem_cache."""
