"""The front ends: the ``claims`` CLI, the pytest plugin, the output writers and the baseline gate.

They sit on top of everything else: the engine measures, ``reports`` renders, these wire both to a
command line or a pytest run. Nothing below imports from here.
"""
