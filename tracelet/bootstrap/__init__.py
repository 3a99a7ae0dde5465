"""The directory ``tracelet run`` puts first on ``PYTHONPATH``; its ``sitecustomize`` starts tracking."""
