"""Does mining make better trunks? Mining quality against 3D truth, the linear probe, and the comparison of
pre-training methods (``jobs/compare.py``). Sits above mining/, graph/, train/, evaluate/ and synthetic/.
"""
