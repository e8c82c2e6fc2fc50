"""The notebook workflow: parameterised notebooks as steps, pipelines of steps, sweeps over a
grid of config keys, where their points run (threads, submitit, SLURM), and multi-rank launches.
"""
