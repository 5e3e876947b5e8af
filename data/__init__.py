"""Datasets: the feature schema, batches, and the MovieLens, tabular and synthetic sources."""

# In a checkout this package is also importable by its bare name ``data``; that name
# must give the very module ``recdistill.data`` (recdistill/_checkout.py), not a copy.
if __name__ == "data":
    from recdistill._checkout import become

    become(__name__)
