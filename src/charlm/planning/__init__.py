"""Planning a run for a time budget: the rules (planner), the device measurements, the search around a plan."""
