"""``claims sweep``: claims files over models on a Ray cluster (:mod:`.command`), planned into one
task per (model, claims file) (:mod:`.plan`), each measured by the engine in a worker (:mod:`.task`),
run on Ray (:mod:`.ray_runner`: Ray schedules; nothing here does)."""
