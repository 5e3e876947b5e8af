"""What teacher/ and student/ share: the tower registry base and plugins, the table
sharder and fused optimizers, the safe checkpoint reader."""

# In a checkout this package is also importable by its bare name ``common``; that name
# must give the very module ``recdistill.common`` (recdistill/_checkout.py), not a copy.
if __name__ == "common":
    from recdistill._checkout import become

    become(__name__)
