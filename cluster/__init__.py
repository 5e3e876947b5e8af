"""Everything Ray: the distillation pipeline's actors, groups and run state."""

# In a checkout this package is also importable by its bare name ``cluster``; that name
# must give the very module ``recdistill.cluster`` (recdistill/_checkout.py), not a copy.
if __name__ == "cluster":
    from recdistill._checkout import become

    become(__name__)
