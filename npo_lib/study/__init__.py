"""The method study: Pareto frontiers at matched utility, the adaptive frontier search, the
study plan and its tables and figures."""
