"""drdemo web app: wires predictors into the Gradio page. Run: python app.py"""

import logging
import os

from drdemo.predictor import Predictor
from drdemo.ui import build_demo

MODELS = ("medmamba_t", "inception_v3")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = build_demo([Predictor.untrained(name) for name in MODELS])
    demo.queue(default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )


if __name__ == "__main__":
    main()
