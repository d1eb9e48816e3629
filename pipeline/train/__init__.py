"""GAN training: `loop.py` (one worker, plain torch) and `launcher.py` (Ray Train).

Import the launcher explicitly (`from pipeline.train.launcher import train`): it pulls in Ray.
"""
