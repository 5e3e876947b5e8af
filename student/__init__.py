"""The student models: towers, distillation losses, training, sharding, artifacts."""

# In a checkout this package is also importable by its bare name ``student``; that name
# must give the very module ``recdistill.student`` (recdistill/_checkout.py), not a copy.
if __name__ == "student":
    from recdistill._checkout import become

    become(__name__)
