"""Benchmark datasets of this project (not Hugging Face's ``datasets``; see ``benchmark/__init__.py``)."""
