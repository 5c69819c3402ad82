"""interp-claims: claims of interpretability course material, measured against model weights.

The pipeline runs one way::

    claims/*.yaml --load+validate--> ClaimFile --resolve--> model + inputs
        --metric registry--> Measurement --comparator--> Verdict --> pytest outcome + JSON record
"""

__version__ = "0.1.0"
