"""Reports rendered from the JSON record (the single source of truth)."""
