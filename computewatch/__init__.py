"""computewatch: the command line that ties agent, collector and auditors together."""

__version__ = "0.1.0"
