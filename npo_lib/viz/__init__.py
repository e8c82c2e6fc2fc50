"""Visualisation: token tables, HTML heatmaps, the ipywidgets explorer, run figures."""
