"""The sharded teacher: model, towers by name, sharding, quantization, checkpoints."""

# In a checkout this package is also importable by its bare name ``teacher``; that name
# must give the very module ``recdistill.teacher`` (recdistill/_checkout.py), not a copy.
if __name__ == "teacher":
    from recdistill._checkout import become

    become(__name__)
