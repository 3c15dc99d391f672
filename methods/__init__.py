"""Continual-learning methods; each module registers its methods with ``benchmark.registry``."""
