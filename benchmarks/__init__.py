"""drdemo's benchmarks, outside the package: they time and measure drdemo from the outside (ratios
measured in one run, so a noisy shared machine cancels out) and are not part of what the app serves.

    python -m benchmarks [models|inference|app|gate|gpu] ...   (see benchmarks/suites.py)

suites.py is the command line and the model/scan/GPU suites; inference.py, app.py and gate.py are
the other suites.
"""
