"""Visualisation: token tables, HTML heatmaps, the ipywidgets explorer, run figures, the report
table and the run dashboard."""
