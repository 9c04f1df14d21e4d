"""Signed releases and what Molt checks at each start.

``manifests`` says what a release is, ``keys`` signs it, ``trees`` hashes its files,
``ledger`` keeps releases in order, ``signing`` numbers, signs and audits them,
``verification`` checks the checkout against its release, ``boots`` keeps the boot records
the boot guard (pipeline/update/bootguard.py) reads.

Imports the leaves and requests/.
"""
