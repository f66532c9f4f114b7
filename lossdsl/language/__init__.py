"""The function tables (built-in functions, schedules, balancer methods) and the term
registry. Imports no torch: the tables reach it through :data:`~lossdsl.language.lazy.T`."""
