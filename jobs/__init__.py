"""Entry points: ``python -m jobs.<name>`` from a checkout, ``recdistill <name>`` installed."""

# In a checkout this package is also importable by its bare name ``jobs``; that name
# must give the very module ``recdistill.jobs`` (recdistill/_checkout.py), not a copy.
if __name__ == "jobs":
    from recdistill._checkout import become

    become(__name__)
