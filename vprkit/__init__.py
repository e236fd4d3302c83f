"""vprkit: visual place recognition in one installable toolkit."""

__version__ = "0.1.0"
