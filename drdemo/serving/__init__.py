"""What the app serves and where from: the model slots, the checkpoint store's CLI (python -m drdemo.serving.hub)
and the Space deployment."""
